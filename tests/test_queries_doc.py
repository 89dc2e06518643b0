"""Every query in docs/queries.md runs through DuckDB on a costed simulated lake, and the
headline ones give the figures computed independently from the Parquet files."""
from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "queries.md"


def blocks(kind: str) -> dict[str, str]:
    text = DOC.read_text()
    return {m.group(1): m.group(2).strip() for m in
            re.finditer(rf"```sql\n-- {kind}: (\S+)\n(.*?)```", text, re.S)}


@pytest.fixture(scope="module")
def con(costed_lake):
    c = duckdb.connect()
    c.execute(blocks("setup")["duckdb"].replace("LAKE", str(costed_lake)))
    return c


def test_doc_has_setup_for_each_engine_and_queries():
    assert set(blocks("setup")) == {"duckdb", "athena", "trino"}
    assert len(blocks("query")) >= 8


@pytest.mark.parametrize("name", sorted(blocks("query")))
def test_query_runs_and_returns_rows(con, name):
    rows = con.execute(blocks("query")[name]).fetchall()
    if name != "unplaced":
        assert rows, f"{name} returned nothing on a simulated lake"


def _costs(lake) -> "pyarrow.Table":
    return ds.dataset(str(lake / "costs" / "flows"), format="parquet", partitioning="hive").to_table()


def test_cost_by_class_matches_the_files(con, costed_lake):
    got = {(r[1]): (r[2], r[3]) for r in con.execute(blocks("query")["cost_by_class"]).fetchall()}
    df = _costs(costed_lake).to_pandas()
    df["bytes"] = df.tx_bytes + df.rx_bytes
    want = df.groupby("traffic_class").agg(bytes=("bytes", "sum"), cost=("cost_usd", "sum"))
    # the simulated lake spans one day, so there is one row per class
    assert set(got) == set(want.index)
    for cls, (b, usd) in got.items():
        assert b == want.loc[cls, "bytes"]
        assert usd == pytest.approx(want.loc[cls, "cost"], abs=1e-6)


def test_partition_filter_prunes_other_days(con):
    q = blocks("query")["cost_by_class"].replace("DATE '2026-01-05'", "DATE '2031-01-01'")
    assert con.execute(q).fetchall() == []


def test_focus_and_cost_rows_give_the_same_totals_by_meter(con):
    focus = {r[2]: r[5] for r in con.execute(blocks("query")["focus_by_meter"]).fetchall()}
    flows = {r[0]: r[1] for r in con.execute(blocks("query")["flows_by_meter"]).fetchall()}
    assert focus and set(focus) == set(flows)
    for meter, usd in flows.items():
        assert focus[meter] == pytest.approx(usd, abs=1e-5), meter
    assert "USE1-DataTransfer-Regional-Bytes" in focus


def test_reconciliation_with_a_cost_and_usage_report(con):
    """A hand-made CUR for the simulated day: the cross-AZ line as netmon computed it plus a
    $1.50 line netmon cannot see; the join shows each meter's difference."""
    q = blocks("reconcile")["cur"]
    regional = con.execute("""SELECT SUM(ConsumedQuantity), SUM(BilledCost) FROM focus
                              WHERE x_UsageType = 'USE1-DataTransfer-Regional-Bytes'""").fetchone()
    con.execute("CREATE OR REPLACE TABLE cur (line_item_usage_type VARCHAR, line_item_usage_amount DOUBLE, "
                "line_item_unblended_cost DOUBLE, line_item_line_item_type VARCHAR, line_item_usage_start_date TIMESTAMP)")
    con.execute("INSERT INTO cur VALUES ('USE1-DataTransfer-Regional-Bytes', ?, ?, 'Usage', TIMESTAMP '2026-01-05 03:00:00'),"
                "('USE1-EUC1-AWS-Out-Bytes', 75, 1.5, 'Usage', TIMESTAMP '2026-01-05 04:00:00'),"
                "('USE1-BoxUsage:m6i.xlarge', 24, 4.6, 'Usage', TIMESTAMP '2026-01-05 04:00:00')",
                [regional[0], regional[1]])
    rows = {r[0]: r for r in con.execute(q).fetchall()}
    assert rows["USE1-EUC1-AWS-Out-Bytes"][5] == pytest.approx(-1.5)          # on the bill, not seen by netmon
    assert rows["USE1-DataTransfer-Regional-Bytes"][5] == pytest.approx(0, abs=1e-4)
    assert "USE1-BoxUsage:m6i.xlarge" not in rows                                # not a network meter
    assert con.execute(q).fetchall()[0][0] == "USE1-EUC1-AWS-Out-Bytes"         # largest difference first
