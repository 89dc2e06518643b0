"""Work cells, the carried DNS state, tiers from summaries, rollups from partials.

The cost job cut into many small cells must give the same tables (rows and dollars) as one
cell per hour; the DNS state carried from hour to hour must name every destination as the
lookup over all the raw answers does; rollups summed from partials equal rollups of the rows.
Runs the task functions in this process (executor="inline") on real lakes.
"""
from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from jobs import cells as C
from jobs import context as cx
from jobs import partials as pt
from jobs import run as R
from jobs import state as st
from jobs import tiers
from jobs.dns import DnsIndex
from jobs.resolve import encode, shared_ip_dictionary, window_codes
from lake import schema as S
from lake.storage import open_lake
from lake.writer import write_raw
from test_jobs_load_state import GB, H0, H1, H2, S3_IP, all_costs, class_cost, egress_cost, flows
from test_jobs_load_state import lake  # noqa: F401 - fixture

UTC = dt.timezone.utc


def assert_close(a: pa.Table, b: pa.Table, what: str = "") -> None:
    """Equal tables, floating columns to 1e-12 (sums of costs in another order)."""
    assert a.schema.equals(b.schema, check_metadata=False), what
    assert a.num_rows == b.num_rows, what
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            assert np.allclose(x.to_numpy(), y.to_numpy(), rtol=1e-12, atol=1e-12, equal_nan=True), (what, name)
        else:
            assert x.equals(y), (what, name)


def run(lake, **kw):
    return R.run_cost_job(R.JobOptions(lake_url=lake.url, executor="inline", progress=None, **kw))


# ------------------------------------------------------------------------------- cells

def test_make_cells_bounds_rows_and_keeps_window_node_order():
    h = H0
    files = []
    for m in range(3):
        for node in ("b", "a"):
            rel = S.raw_file_path("raw/flows", node, h + dt.timedelta(minutes=m))
            files.append((rel, 40))
    cells = C.make_cells({h: files}, 100)
    assert [len(c.files) for c in cells] == [2, 2, 2] and [c.index for c in cells] == [0, 1, 2]
    assert all(c.rows <= 100 for c in cells)
    first = [S.parse_raw_file_name(f)[1:] for f in cells[0].files]
    assert first == [("a", h), ("b", h)]          # one window, its nodes
    assert C.make_cells({h: [(files[0][0], 500)]}, 100)[0].rows == 500  # a big file is its own cell
    assert C.make_cells({h: []}, 100) == [C.Cell(h, 0, (), 0)]        # an empty hour: one empty cell
    assert cells[0].memory == C.memory_for(80) < C.memory_for(10 ** 6)
    with pytest.raises(ValueError):
        C.make_cells({h: files}, 0)


def test_cells_hold_whole_windows_when_they_fit():
    """The relayed-connection rule matches rows of different nodes in one window, so a window
    is not cut between cells unless it alone is larger than a cell."""
    h = H0
    files = [(S.raw_file_path("raw/flows", node, h + dt.timedelta(minutes=m)), 30)
             for m in range(4) for node in ("a", "b", "c")]          # windows of 90 rows
    cells = C.make_cells({h: files}, 200)
    assert [c.rows for c in cells] == [180, 180]                     # not 180 + 20 of the third window
    for c in cells:
        windows = {S.parse_raw_file_name(f)[2] for f in c.files}
        assert all(sum(S.parse_raw_file_name(f)[2] == w for f in c.files) == 3 for w in windows)
    small = C.make_cells({h: files}, 50)                             # windows larger than a cell
    assert [c.rows for c in small] == [30] * 12 and all(c.rows <= 50 for c in small)
    assert [c.index for c in small] == list(range(12))
    # ... and its cells know it: they exchange outside-client rows and declare memory for them
    assert all(c.window == S.parse_raw_file_name(c.files[0])[2] and c.window_rows == 90 for c in small)
    assert small[0].memory == C.memory_for(30) + C.CLIENT_BYTES_PER_ROW * 90
    assert all(c.window is None and c.window_rows == 0 for c in cells)
    # a single file larger than a cell leaves its window whole
    assert C.make_cells({h: [(files[0][0], 500)]}, 100)[0].window is None


def test_files_another_cell_owns_are_checked_but_not_quarantined(lake):  # noqa: F811
    from jobs import load
    rels = [lake.rel(i.path) for i in lake.list_files("raw/flows")][:2]
    bad = S.raw_file_path("raw/flows", "n9", H1 + dt.timedelta(minutes=7))
    lake.write_bytes(bad, b"not parquet")
    want = sum(lake.read_table(r).num_rows for r in rels)
    flows, skipped = load.load_files(lake, rels + [bad], "raw/flows", move=False)
    assert flows.num_rows == want >= 2 and [b["path"] for b in skipped] == [bad]
    assert lake.exists(bad) and not lake.list_files(S.QUARANTINE_DIR)  # its own cell quarantines it


def test_rows_are_estimated_from_footers(lake):  # noqa: F811
    rels = [lake.rel(i.path) for i in lake.list_files("raw/flows")]
    sizes = [(r, lake.fs.get_file_info(lake.path(r)).size) for r in rels]
    est = dict(C.estimate_rows(lake, sizes))
    assert all(1 <= n <= 10 for n in est.values())  # the fixture's files hold 1-2 rows


def test_many_small_cells_give_the_same_costs_as_one_cell_per_hour(lake, tmp_path):  # noqa: F811
    # more rows per hour: several nodes' windows, so cells of one file split each hour
    for k, node in enumerate(("n1", "n2", "n3")):
        for m in range(1, 4):
            start = H1 + dt.timedelta(minutes=m)
            src = {"n1": "10.0.1.1", "n2": "10.0.2.1", "n3": "10.0.3.1"}[node]
            write_raw(lake, "raw/flows", node, start, flows(start, node, [(src, S3_IP, (k + m) * GB, 10), (src, "10.0.1.1", 5, 5)]))
    shutil.copytree(lake.root, tmp_path / "twin")
    twin = open_lake(str(tmp_path / "twin"))
    one = run(lake)
    many = run(twin, cell_rows=1)
    assert many.cells > one.cells == 3
    a, b = all_costs(lake), all_costs(twin)
    key = ["window_start", "src_ip", "dst_ip", "tx_bytes"]
    a, b = a.sort_by([(k, "ascending") for k in key]), b.sort_by([(k, "ascending") for k in key])
    assert a.drop_columns(["cost_usd"]).equals(b.drop_columns(["cost_usd"]))
    assert np.allclose(a["cost_usd"].to_numpy(), b["cost_usd"].to_numpy(), rtol=1e-12, atol=1e-12)
    total = (60 + 50 + 30 + sum(k + m for k in range(3) for m in range(1, 4))) * GB
    assert class_cost(b, "internet_egress") == pytest.approx(egress_cost(total))
    hour1 = twin.list_files(S.TABLES["costs/flows"].partition_dir(H1))
    assert len(hour1) == many.cells - 2  # H1's cells are its parts; H0 and H2 hold one file each
    for name in pt.ROLLUPS:
        assert_close(lake.read_table(S.cost_file_path(f"costs/{name}", H0)),
                     twin.read_table(S.cost_file_path(f"costs/{name}", H0)), name)
    assert not twin.list_files("_state/staging")  # staging is cleaned up


def test_rollups_from_partials_equal_rollups_of_the_rows(lake):  # noqa: F811
    run(lake)
    costs = all_costs(lake)
    for name, r in pt.ROLLUPS.items():
        got = lake.read_table(S.cost_file_path(f"costs/{name}", H0))
        assert got.num_rows > 0, name
        assert_close(got, S.conform(r.combine([r.fn(costs)]), r.schema), name)
        # summing partials is a group-by sum: two halves of the rows give the whole
        half = costs.num_rows // 2
        assert_close(r.combine([r.fn(costs.slice(0, half)), r.fn(costs.slice(half))]),
                     r.combine([r.fn(costs)]), name)
    # a re-priced part changes the partials by new - old: old + delta == new
    old = pt.partials(costs)
    cost = costs.column("cost_usd").to_numpy() * 1.5
    new = pt.partials(costs.set_column(costs.schema.get_field_index("cost_usd"), "cost_usd", pa.array(cost)))
    for name, d in pt.delta(old, new).items():
        r = pt.ROLLUPS[name]
        assert_close(r.combine([old[name], d]), r.combine([new[name]]), name)


# ------------------------------------------------------------------------------ DNS state

def _answers(rng, n, start, span_s, ips, clients, domains):
    seen = start + (rng.integers(0, span_s, n) * 1_000_000).astype("timedelta64[us]")
    seen = seen.astype("datetime64[us]")
    ws = seen.astype("datetime64[m]").astype("datetime64[us]")  # the window the answer was seen in
    return S.conform(pa.table({
        "window_start": pa.array(ws, S.TS), "window_end": pa.array(ws + np.timedelta64(60, "s"), S.TS),
        "node": ["n1"] * n, "client_ip": pa.array(rng.choice(clients, n).tolist()),
        "domain": rng.choice(domains, n).tolist(), "ip": rng.choice(ips, n).tolist(),
        "ttl_s": pa.array([30] * n, pa.int32()), "seen_at": pa.array(seen, S.TS),
    }), S.RAW_DNS)


def test_carried_dns_state_names_destinations_exactly_as_all_answers_do():
    """Hour by hour: state(H-1) + answers of H and H+1 gives the same dst_domain for every
    flow of H as the lookup over every answer, with ties in time and a client-less answer."""
    rng = np.random.default_rng(5)
    lookback = dt.timedelta(hours=2)
    ips = [f"10.9.0.{i}" for i in range(12)]
    clients = [f"10.0.0.{i}" for i in range(4)] + [None]
    domains = ["a.example", "b.example", "Z.example", "c.example"]
    t0 = np.datetime64("2026-03-02T00:00:00", "us")
    hours = 6
    # answers land in the hour of their window_start; whole seconds make equal times common
    raw = _answers(rng, 4000, t0, hours * 3600 + 600, ips, clients, domains)
    hour_of = pc.floor_temporal(raw["window_start"], unit="hour").cast(pa.int64()).to_numpy()
    base = dt.datetime(2026, 3, 2, tzinfo=UTC)
    by_hour = {base + dt.timedelta(hours=k): raw.filter(pa.array(hour_of == int((t0 + np.timedelta64(k, "h")).astype(np.int64))))
               for k in range(hours + 1)}
    everything = DnsIndex(raw, lookback.total_seconds())
    state = S.RAW_DNS.empty_table()
    for k in range(hours):
        h = base + dt.timedelta(hours=k)
        # flows of hour h: windows ending in (h, h + 1h]
        n = 3000
        ends = np.datetime64(h.replace(tzinfo=None), "us") + (rng.integers(60, 3601, n) * 1_000_000).astype("timedelta64[us]")
        fl = pa.table({"window_end": pa.array(ends, S.TS), "src_ip": rng.choice(clients[:-1] + ["10.0.0.99"], n).tolist(),
                       "dst_ip": rng.choice(ips + ["10.9.9.9"], n).tolist(), "orig_dst_ip": pa.nulls(n, pa.string()),
                       "node": ["n1"] * n})
        ipd, ids = shared_ip_dictionary(encode(fl.select(["src_ip", "dst_ip", "orig_dst_ip", "node"])))
        _, _, we = window_codes(fl)
        carried = DnsIndex(pa.concat_tables([state, by_hour[h], by_hour[h + dt.timedelta(hours=1)]]), lookback.total_seconds())
        want = everything.lookup(ipd, ids["src_ip"], ids["dst_ip"], we)
        got = carried.lookup(ipd, ids["src_ip"], ids["dst_ip"], we)
        assert got.to_pylist() == want.to_pylist(), h
        assert sum(v is not None for v in got.to_pylist()) > n // 4  # the lookups do find names
        state = cx.reduce_answers(pa.concat_tables([state, by_hour[h]]), h + dt.timedelta(hours=1), lookback)
        assert state.num_rows <= len(ips) * len(clients) + by_hour[h].num_rows  # bounded by pairs (+ late ones)


def test_dns_state_is_persisted_and_reused_and_a_changed_file_means_a_cold_start(lake):  # noqa: F811
    from test_jobs_load_state import dns_table
    write_raw(lake, "raw/dns", "n1", H0, dns_table(H0, "n1", "10.0.1.1", "10.99.0.7", "vpce-1.s3.us-east-1.vpce.amazonaws.com"))
    write_raw(lake, "raw/flows", "n1", H2 + dt.timedelta(minutes=3),
              flows(H2 + dt.timedelta(minutes=3), "n1", [("10.0.1.1", "10.99.0.7", GB, GB)]))
    run(lake)
    for h in (H0, H1, H2):
        assert lake.exists(cx.state_path(h))
    st1 = lake.read_table(cx.state_path(H1))
    assert st1["domain"].to_pylist() == ["vpce-1.s3.us-east-1.vpce.amazonaws.com"]
    t = all_costs(lake)
    row = t.filter(pc.equal(t["dst_ip"], "10.99.0.7")).to_pylist()
    assert [r["traffic_class"] for r in row] == ["private_link"]  # named by an answer two hours earlier
    # recomputing H2 alone starts from the stored state of H1, not from the DNS files: a stored
    # state edited in place (its digest kept) is what the lookup then sees
    stored = lake.read_table(cx.state_path(H1))
    edited = stored.set_column(stored.schema.get_field_index("domain"), "domain",
                               pa.array(["api.eks.amazonaws.com"], pa.string()))
    lake.write_table(cx.state_path(H1), edited.replace_schema_metadata(stored.schema.metadata))
    run(lake, start=H2, end=H2 + dt.timedelta(hours=1))
    t = all_costs(lake)
    assert t.filter(pc.equal(t["dst_ip"], "10.99.0.7"))["traffic_class"].to_pylist() == ["k8s_control_plane"]
    # a new DNS file in the state's hours changes its digest: the state is rebuilt from the files
    write_raw(lake, "raw/dns", "n1", H1, dns_table(H1, "n1", "10.0.1.9", "10.99.0.8", "other.example"))
    run(lake, start=H2, end=H2 + dt.timedelta(hours=1))
    t = all_costs(lake)
    assert t.filter(pc.equal(t["dst_ip"], "10.99.0.7"))["traffic_class"].to_pylist() == ["private_link"]
    assert sorted(lake.read_table(cx.state_path(H2))["domain"].to_pylist()) == [
        "other.example", "vpce-1.s3.us-east-1.vpce.amazonaws.com"]


# ----------------------------------------------------------------------------------- tiers

def test_window_rates_snap_to_the_card_and_split_a_crossing_window():
    from jobs import pricing
    cards = pricing.default_cards()
    pool = "aws/us-east-1/internet_egress"
    w0, w1 = (int(dt.datetime(2026, 3, 2, 10, m, tzinfo=UTC).timestamp() * 1e6) for m in (0, 1))
    vols = {(pool, w0): 90 * GB, (pool, w1): 20 * GB}
    rates, after = tiers.window_rates(vols, {}, cards)
    assert rates[(pool, w0)] == 0.0                       # inside the free 100 GB
    assert rates[(pool, w1)] * 20 * GB == pytest.approx(10 * 0.09)  # half of it above
    assert after[pool] == 110 * GB
    rates2, _ = tiers.window_rates({(pool, w0): 5 * GB}, after, cards)
    assert rates2[(pool, w0)] == 0.09 / GB                # exactly the card's marginal rate
    assert tiers.marginal_rate(pool, H0, after, cards) == 0.09 / GB
    assert tiers.marginal_rate(pool, H0, {}, cards) == 0.0


def test_settled_parts_are_not_rewritten_and_moved_ones_are(lake):  # noqa: F811
    run(lake)
    mtimes = {i.path: i.mtime_ns for i in lake.list_files("costs/flows")}
    late = H0 + dt.timedelta(minutes=30)
    write_raw(lake, "raw/flows", "n2", late, flows(late, "n2", [("10.0.2.1", S3_IP, 20 * GB, 0)]))
    res = run(lake)
    assert res.hours_computed == [H0] and res.hours_retiered == [H1]
    now = {i.path: i.mtime_ns for i in lake.list_files("costs/flows")}
    h2 = [p for p in now if "hour=12" in p]
    assert h2 and all(now[p] == mtimes[p] for p in h2)   # H2: same rate, untouched
    assert class_cost(all_costs(lake), "internet_egress") == pytest.approx(egress_cost(160 * GB))
    ledger = st.EgressLedger.load(lake, "2026-03")
    assert ledger.state_before(H2)["aws/us-east-1/internet_egress"] == 130 * GB


def test_a_window_cut_between_cells_keeps_every_relayed_hop(tmp_path, monkeypatch):
    """A window larger than a cell is cut between its nodes' files; the second hop of a
    relayed NodePort connection (one node's client row, another node's inbound hop) must still
    be found, from the outside-client rows the window's other cells hand over."""
    from jobs import tasks as T
    from simulator.simulate import simulate
    whole = open_lake(str(tmp_path / "whole"))
    simulate(whole, nodes=3, hours=1, seed=11, regions=2)
    for name in ("split", "blind"):
        shutil.copytree(whole.root, tmp_path / name)
    split, blind = open_lake(str(tmp_path / "split")), open_lake(str(tmp_path / "blind"))
    a = run(whole)                       # every window fits a cell
    b = run(split, cell_rows=1)          # every file its own cell: each window cut in three
    assert b.cells == 3 * 60 * a.cells   # 3 nodes x 60 windows
    ca, cb = all_costs(whole), all_costs(split)
    key = [f.name for f in ca.schema if not pa.types.is_floating(f.type)]
    ca, cb = (t.sort_by([(k, "ascending") for k in key]) for t in (ca, cb))
    assert ca.num_rows == cb.num_rows
    assert ca.drop_columns(["cost_usd"]).equals(cb.drop_columns(["cost_usd"]))
    assert np.allclose(ca["cost_usd"].to_numpy(), cb["cost_usd"].to_numpy(), rtol=1e-12, atol=1e-12)
    # the rule needs the other cells' rows: without them, relayed hops are lost
    real = T.relay_clients
    monkeypatch.setattr(T, "relay_clients", lambda *args: real(*args).slice(0, 0))
    run(blind, cell_rows=1)
    lost = ca.num_rows - all_costs(blind).num_rows
    assert lost > 0, (a.cells, b.cells, lost)
