"""The cost exploration notebook runs headless, top to bottom, on a costed simulated lake, with
its date range and namespace filter set, and every table it computes equals the same figure
computed independently (pandas over the lake's files, tests/costs_expected.py)."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

import costs_expected as X

NB = Path(__file__).resolve().parents[1] / "notebooks" / "cost_exploration.ipynb"
TABLES = ("overview", "daily", "classes", "top_namespaces", "top_workloads", "destinations", "domains",
          "cross_zone_pairs", "savings", "tiers")
NAMESPACES = ["shop", "data", "(node)"]


@pytest.fixture(scope="module")
def executed(costed_lake, tmp_path_factory):
    out = tmp_path_factory.mktemp("nbtables")
    mp = pytest.MonkeyPatch()
    mp.setenv("NETMON_LAKE", str(costed_lake))
    mp.delenv("NETMON_S3_ENDPOINT", raising=False)
    mp.setenv("NETMON_START", "2026-01-05")
    mp.setenv("NETMON_END", "2026-01-05")
    mp.setenv("NETMON_NAMESPACES", ",".join(NAMESPACES))
    mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NB, as_version=4)
    # after the notebook's own cells: save the tables it computed for the assertions below
    nb.cells.append(nbformat.v4.new_code_cell(
        "for _n in %r:\n    globals()[_n].reset_index().to_parquet(%r + '/' + _n + '.parquet')" % (TABLES, str(out))))
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(NB.parent)}}).execute()
    finally:
        mp.undo()
    tables = {n: pd.read_parquet(out / f"{n}.parquet") for n in TABLES}
    return nb, tables, X.cost_flows(costed_lake, NAMESPACES)


def test_parameters_come_first_and_are_tagged():
    nb = nbformat.read(NB, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", [])
    for name in ("LAKE", "S3_ENDPOINT", "START", "END", "NAMESPACES"):
        assert f"{name} = " in first_code.source
    # no cell reads a whole table into memory
    assert not any("to_table()" in c.source for c in nb.cells)


@pytest.mark.slow
def test_notebook_runs_and_draws_every_plot(executed):
    nb, _, _ = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell did not run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue") if errors else ""
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    # class per day, namespaces/workloads, destinations/domains, matrix, savings, egress tier
    assert len(images) == 6


@pytest.mark.slow
def test_overview_and_classes_equal_the_files(executed):
    _, t, df = executed
    ov = t["overview"].iloc[0]
    assert ov["rows"] == len(df)
    assert ov["cost_usd"] == pytest.approx(df.cost_usd.sum(), rel=1e-9)
    assert ov["gb"] == pytest.approx(df.bytes.sum() / X.GB, rel=1e-12)
    want = X.by_class(df)
    got = {r.traffic_class: (r.gb, r.cost_usd) for r in t["classes"].itertuples()}
    assert set(got) == set(want)
    for cls, (gb, usd) in got.items():
        assert gb == pytest.approx(want[cls][0] / X.GB, rel=1e-12)
        assert usd == pytest.approx(want[cls][1], rel=1e-9, abs=1e-12)
    daily = {(str(r.date)[:10], r.traffic_class): r.cost_usd for r in t["daily"].itertuples()}
    assert daily == pytest.approx(X.by_day_class(df), rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_namespace_filter_applies(executed):
    _, t, df = executed
    assert set(t["top_namespaces"].name) == set(df.namespace) <= set(NAMESPACES)
    assert "monitoring" not in set(t["top_namespaces"].name)


@pytest.mark.slow
def test_top_namespaces_and_workloads_equal_the_files(executed):
    _, t, df = executed
    for got, key in ((t["top_namespaces"], df.namespace), (t["top_workloads"], X.workload_key(df))):
        want = X.top(df, key, 10)
        assert list(got.name) == list(want.index)
        assert list(got.total_usd) == pytest.approx(list(want.total), rel=1e-9, abs=1e-12)
        assert list(got.cross_zone_usd) == pytest.approx(list(want.cross_zone), rel=1e-9, abs=1e-12)
        assert list(got.egress_usd) == pytest.approx(list(want.egress), rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_destinations_and_domains_equal_the_files(executed):
    _, t, df = executed
    want = X.egress_destinations(df, 10)
    got = list(zip(t["destinations"].destination, t["destinations"].gb_out))
    assert [d for d, _ in got] == [d for d, _ in want]
    assert [g for _, g in got] == pytest.approx([g for _, g in want], rel=1e-12)
    doms = X.egress_domains(df)
    assert dict(zip(t["domains"].domain, t["domains"].gb_out)) == pytest.approx(
        dict(sorted(doms.items(), key=lambda kv: -kv[1])[:10]), rel=1e-12)


@pytest.mark.slow
def test_cross_zone_matrix_and_savings_equal_the_files(executed):
    _, t, df = executed
    got = {(r.source, r.destination): r.cost_usd for r in t["cross_zone_pairs"].itertuples()}
    want = X.cross_zone_pairs(df)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert len(got) > 3
    sav = {r.service: r.saving_usd for r in t["savings"].itertuples()}
    want_sav = dict(sorted(X.service_savings(df).items(), key=lambda kv: -kv[1])[:10])
    assert sav == pytest.approx(want_sav, rel=1e-9)
    every = X.backends_everywhere(df)
    assert {r.service: r.backends_everywhere for r in t["savings"].itertuples()} == {k: every[k] for k in sav}


@pytest.mark.slow
def test_egress_tier_position_counts_the_whole_month(executed, costed_lake):
    _, t, _ = executed
    tiers = t["tiers"]
    assert len(tiers) == 1
    row = tiers.iloc[0]
    tx, cost = X.month_egress(costed_lake, "2026-01")     # every namespace, not only the filter's
    assert row.egress_bytes == tx
    assert row.egress_gb == pytest.approx(tx / X.GB)
    assert row.month_cost_usd == pytest.approx(cost, abs=1e-9)      # the job's own tiered charge
    # two simulated hours of 3 nodes stay in AWS's free first 100 GB of the month, at the
    # bottom of the first tier ($0.09/GB up to 10 TB), so the marginal rate is still $0
    assert (row.rate_card, row.tier_from_gb, row.tier_to_gb, row.per_gb_usd) == ("aws/us-east-1", 0.0, 10240.0, 0.0)
    assert (row.free_gb, row.free_used_gb) == (100.0, pytest.approx(tx / X.GB))
    assert row.gb_to_next_tier == pytest.approx(10240.0 - tx / X.GB)
