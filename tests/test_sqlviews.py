"""`netmon-jobs sql` / `netmon-jobs views` read exactly the committed cost files, also while an
hour is being rolled forward (both generations of its parts on disk), where a plain glob of
costs/flows double-counts. Totals are checked against pandas over the files the records list."""
from __future__ import annotations

import csv
import datetime as dt
import io
import os
import subprocess
import sys

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs import catalog
from jobs import commit as C
from jobs import sqlviews
from lake import storage
from lake.writer import write_raw
from test_jobs_load_state import GB, H0, S3_IP, flows, run
from test_jobs_load_state import lake  # noqa: F401 - fixture: 3 hours of a small cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTALS = ("SELECT traffic_class, SUM(tx_bytes) AS tx, SUM(cost_usd) AS usd, COUNT(*) AS n "
          "FROM cost_flows GROUP BY 1 ORDER BY 1")


class Killed(BaseException):
    """The run dies here (not an Exception: nothing on the way out handles it)."""


def pandas_totals(lake, files) -> dict[str, tuple[int, float, int]]:
    df = pd.concat([pq.read_table(f, filesystem=lake.fs).to_pandas() for f in files])
    g = df.groupby("traffic_class").agg(tx=("tx_bytes", "sum"), usd=("cost_usd", "sum"), n=("tx_bytes", "size"))
    return {k: (int(r.tx), float(r.usd), int(r.n)) for k, r in g.iterrows()}


def duck_totals(rows) -> dict[str, tuple[int, float, int]]:
    return {r[0]: (int(r[1]), float(r[2]), int(r[3])) for r in rows}


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k][0] == want[k][0] and got[k][2] == want[k][2], k
        assert got[k][1] == pytest.approx(want[k][1], rel=1e-12, abs=1e-12), k


@pytest.fixture
def rolling(lake, monkeypatch):  # noqa: F811
    """A lake whose hour H0 was re-costed and is half rolled forward: the new generation's parts
    are at their final names, the old generation's not yet deleted (a run killed there)."""
    run(lake)
    late = H0 + dt.timedelta(minutes=30)
    write_raw(lake, "raw/flows", "n2", late, flows(late, "n2", [("10.0.2.1", S3_IP, 20 * GB, 0)]))
    real = storage.Lake.delete

    def delete(self, rel_or_full):
        if "costs/flows/date=" in rel_or_full and "/_state/" not in rel_or_full and "part-" in rel_or_full:
            raise Killed(rel_or_full)
        return real(self, rel_or_full)

    monkeypatch.setattr(storage.Lake, "delete", delete)
    with pytest.raises(Killed):
        run(lake)
    monkeypatch.setattr(storage.Lake, "delete", real)
    return lake


def test_views_and_sql_see_the_committed_generation_while_a_plain_glob_double_counts(rolling):
    lake = rolling
    committed = catalog.current_files(lake, "costs/flows")
    listed = [i.path for i in lake.list_files("costs/flows")]
    h0 = f"date={H0:%Y-%m-%d}/hour={H0:%H}/"
    assert len([p for p in listed if h0 in p]) == 2 * len([p for p in committed if h0 in p])  # two generations
    want = pandas_totals(lake, committed)
    assert want["internet_egress"][0] == (60 + 20 + 50 + 30) * GB

    # the docs' former glob view reads both generations of H0
    glob = duckdb.connect()
    glob.execute(f"CREATE VIEW cost_flows AS SELECT * FROM read_parquet('{lake.root}/costs/flows/*/*/*.parquet', "
                 "hive_partitioning = true)")
    wrong = duck_totals(glob.sql(TOTALS).fetchall())
    assert wrong["internet_egress"][0] == (60 + 60 + 20 + 50 + 30) * GB != want["internet_egress"][0]

    # netmon-jobs views: plain DuckDB SQL over the committed files
    con = duckdb.connect()
    con.execute(sqlviews.view_sql(lake))
    assert_same(duck_totals(con.sql(TOTALS).fetchall()), want)
    assert con.sql(f"SELECT COUNT(*) FROM cost_flows WHERE date = DATE '{H0:%Y-%m-%d}' AND hour = '{H0:%H}'"
                   ).fetchall()[0][0] == want_rows(lake, committed, h0)
    assert {v for (v,) in con.sql("SELECT table_name FROM information_schema.tables").fetchall()} == set(sqlviews.VIEWS)
    nh = pd.concat([pq.read_table(f, filesystem=lake.fs).to_pandas()
                    for f in catalog.current_files(lake, "costs/namespace_hourly")])
    assert con.sql("SELECT SUM(cost_usd) FROM namespace_hourly").fetchall()[0][0] == pytest.approx(nh["cost_usd"].sum())

    # netmon-jobs sql: the same, through pyarrow datasets
    assert_same(duck_totals(sqlviews.connect(lake).sql(TOTALS).fetchall()), want)


def want_rows(lake, files, h0) -> int:
    return sum(pq.read_metadata(f, filesystem=lake.fs).num_rows for f in files if h0 in f)


def cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


def test_the_commands_print_the_committed_totals(rolling):
    lake = rolling
    want = pandas_totals(lake, catalog.current_files(lake, "costs/flows"))
    r = cli("sql", "--lake", lake.url, "--csv", TOTALS)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["traffic_class", "tx", "usd", "n"]
    assert_same(duck_totals(rows[1:]), want)
    shown = cli("sql", "--lake", lake.url, TOTALS)
    assert shown.returncode == 0 and "internet_egress" in shown.stdout
    r = cli("views", "--lake", lake.url)
    assert r.returncode == 0, r.stderr
    con = duckdb.connect()
    con.execute(r.stdout)
    assert_same(duck_totals(con.sql(TOTALS).fetchall()), want)
    bad = cli("sql", "--lake", lake.url, "SELECT nope FROM cost_flows")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert cli("sql", "--lake", lake.url, "--start", "2026-03-03", "--end", "2026-03-01", TOTALS).returncode == 2


def test_printed_views_fail_loudly_once_a_later_run_replaced_their_files(lake):  # noqa: F811
    run(lake)
    script = sqlviews.view_sql(lake)
    late = H0 + dt.timedelta(minutes=40)
    write_raw(lake, "raw/flows", "n2", late, flows(late, "n2", [("10.0.2.1", S3_IP, 5 * GB, 0)]))
    run(lake)
    con = duckdb.connect()
    with pytest.raises(duckdb.IOException, match="No files found"):
        con.execute(script)                 # H0's old part is gone: an error, not old numbers
    con.execute(sqlviews.view_sql(lake))   # printed again: the new commit
    assert duck_totals(con.sql(TOTALS).fetchall())["internet_egress"][0] == (60 + 5 + 50 + 30) * GB
    assert C.read_record(lake, H0).token > 1


def test_views_of_an_empty_range_have_the_tables_columns(lake):  # noqa: F811
    run(lake)
    con = duckdb.connect()
    con.execute(sqlviews.view_sql(lake, dt.date(2027, 1, 1), dt.date(2027, 1, 2)))
    assert con.sql(TOTALS).fetchall() == []
    cols = [r[0] for r in con.sql("DESCRIBE cost_flows").fetchall()]
    full = duckdb.connect()
    full.execute(sqlviews.view_sql(lake))
    assert cols == [r[0] for r in full.sql("DESCRIBE cost_flows").fetchall()]
    assert con.sql("SELECT COUNT(*) FROM focus").fetchall()[0][0] == 0
