"""A raw file's contents are checked against its name and partition; windows in the future or
beyond the horizon are quarantined, never priced; copies under other names count once."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import identity, load
from jobs.run import JobOptions, run_cost_job
from lake import schema as S
from lake.storage import open_lake
from lake.writer import write_raw
from simulator.simulate import simulate
from tests.test_jobs_load import T0, flows_table

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "jobs", "fixtures")


@pytest.fixture
def lake(tmp_path):
    return open_lake(str(tmp_path / "lake"))


def note(lake, rel):
    return json.loads(lake.read_bytes(f"_quarantine/{rel}.reason.json"))


def reason_of(rel, now=NOW, bounds=identity.Bounds()):
    try:
        identity.check_listed(rel, now, bounds)
    except load.InvalidFile as exc:
        return exc.reason, str(exc)
    return None


def test_listing_checks_name_against_partition_and_clock():
    good = S.raw_file_path("raw/flows", "n1", T0)
    assert reason_of(good) is None
    assert reason_of(good.replace("node=n1", "node=n2"))[0] == "misfiled"
    assert reason_of(good.replace("hour=10", "hour=11"))[0] == "misfiled"
    assert reason_of(good.replace("date=2026-03-02", "date=2026-03-01"))[0] == "misfiled"
    # within the clock skew: fine; beyond it: the future
    assert reason_of(S.raw_file_path("raw/flows", "n1", NOW + dt.timedelta(minutes=9))) is None
    r = reason_of(S.raw_file_path("raw/dns", "n1", dt.datetime(2099, 1, 1, tzinfo=UTC)))
    assert r[0] == "future_window" and "2099-01-01T00:00:00Z" in r[1]
    r = reason_of(S.raw_file_path("raw/flows", "n1", dt.datetime(1970, 1, 1, tzinfo=UTC)))
    assert r[0] == "beyond_horizon"
    # the horizon is configurable
    week = identity.Bounds(horizon=dt.timedelta(days=7))
    assert reason_of(S.raw_file_path("raw/flows", "n1", NOW - dt.timedelta(days=8)), bounds=week)[0] == "beyond_horizon"
    assert reason_of(S.raw_file_path("raw/flows", "n1", NOW - dt.timedelta(days=6)), bounds=week) is None


def test_rows_of_another_node_are_quarantined(lake):
    rel = S.raw_file_path("raw/flows", "n1", T0)
    lake.write_table(rel, flows_table(node="n2"))  # named for n1, rows of n2
    table, bad = load.load_files(lake, [rel], "raw/flows", validate=False)
    assert table.num_rows == 0 and [b["reason"] for b in bad] == ["wrong_node"]
    assert "rows say node n2" in bad[0]["error"] and "name says node n1" in bad[0]["error"]
    assert note(lake, rel)["reason"] == "wrong_node" and not lake.exists(rel)


def test_rows_of_another_window_are_quarantined(lake):
    rel = S.raw_file_path("raw/flows", "n1", T0 + dt.timedelta(minutes=5))
    lake.write_table(rel, flows_table(start=T0))  # same hour, another window
    _, bad = load.load_files(lake, [rel], "raw/flows", validate=False)
    assert [b["reason"] for b in bad] == ["wrong_window"]


def test_a_copy_under_another_name_is_a_duplicate_and_the_original_is_costed(lake):
    orig = write_raw(lake, "raw/flows", "n1", T0, flows_table())
    copy = S.raw_file_path("raw/flows", "n1", T0 + dt.timedelta(minutes=1))
    lake.write_bytes(copy, lake.read_bytes(orig))  # byte-identical, renamed
    table, bad = load.load_files(lake, [orig, copy], "raw/flows", validate=False)
    assert table.num_rows == 3  # once
    assert [(b["path"], b["reason"]) for b in bad] == [(copy, "duplicate")]
    assert orig in bad[0]["error"] and lake.exists(orig)


def _cost(root, **kw):
    return run_cost_job(JobOptions(lake_url=str(root), executor="inline", progress=None,
                                   config_path=str(root / "_expected" / "job-config.json"),
                                   ip_ranges_dir=os.path.abspath(FIXTURES), **kw))


def _costs(root):
    t = pq.read_table(root / "costs" / "flows")
    return pc.sum(t["tx_bytes"]).as_py() + pc.sum(t["rx_bytes"]).as_py(), pc.sum(t["cost_usd"]).as_py()


def test_misfiled_copies_and_future_files_are_quarantined_and_cost_nothing(tmp_path):
    """The job over a lake with a copy under another node's directory, a renamed copy, a file
    whose rows are another node's and a file dated 2099 costs exactly what the clean lake costs,
    and writes no partition or ledger for 2099."""
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    simulate(open_lake(str(clean)), nodes=2, hours=1, seed=5)
    shutil.copytree(clean, dirty)
    lake = open_lake(str(dirty))
    files = sorted(lake.rel(i.path) for i in lake.list_files("raw/flows"))
    _, node_a, t_a = S.parse_raw_file_name(files[0])
    other = next(S.parse_raw_file_name(f)[1] for f in files if S.parse_raw_file_name(f)[1] != node_a)
    data = lake.read_bytes(files[0])
    # 1. the same bytes under another node's directory and name -> rows say node_a
    as_other = S.raw_file_path("raw/flows", other, t_a + dt.timedelta(seconds=30))
    lake.write_bytes(as_other, data)
    # 2. the same bytes in another node's directory, with the right name -> misfiled
    misfiled = files[0].replace(f"node={node_a}", f"node={other}")
    lake.write_bytes(misfiled, data)
    # 3. a file dated 2099
    future = S.raw_file_path("raw/flows", node_a, dt.datetime(2099, 1, 1, tzinfo=UTC))
    t = pq.read_table(dirty / files[0])
    shift = dt.datetime(2099, 1, 1, tzinfo=UTC) - t_a
    t = t.set_column(0, "window_start", pc.add(t["window_start"], pc.cast(shift, "duration[us]"))) \
         .set_column(1, "window_end", pc.add(t["window_end"], pc.cast(shift, "duration[us]")))
    lake.write_table(future, t)

    ref = _cost(clean)
    res = _cost(dirty)
    got = {q["path"]: q["reason"] for q in res.quarantined}
    assert got == {as_other: "duplicate", misfiled: "misfiled", future: "future_window"}
    assert _costs(dirty) == _costs(clean)
    assert res.rows_in == ref.rows_in
    assert not (dirty / "costs" / "flows" / "date=2099-01-01").exists()
    assert not list((dirty / "_state").rglob("*2099*"))
    for rel in got:
        assert (dirty / "_quarantine" / (rel + ".reason.json")).exists()
