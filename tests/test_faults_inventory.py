"""An hour costed while its inventory was unreadable is flagged in every row, in its record, in
the run's summary and by `netmon-jobs validate`; recomputed once the inventory is back, it
equals an uninterrupted run."""
from __future__ import annotations

import datetime as dt
import os
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from jobs import catalog, load, summary as sm, validate
from jobs import commit as C
from jobs.run import JobOptions, run_cost_job
from lake import schema as S
from lake.storage import open_lake
from simulator.simulate import simulate

UTC = dt.timezone.utc
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "jobs", "fixtures")
H0 = dt.datetime(2026, 1, 5, 0, tzinfo=UTC)
H1 = H0 + dt.timedelta(hours=1)


def _cost(root, **kw):
    return run_cost_job(JobOptions(lake_url=str(root), executor="inline", progress=None,
                                   config_path=str(root / "_expected" / "job-config.json"),
                                   ip_ranges_dir=os.path.abspath(FIXTURES), **kw))


def _rows(lake, hour):
    t = pa.concat_tables([lake.read_table(r) for r in catalog.current_files(lake, "costs/flows", hour, hour + dt.timedelta(hours=1))])
    return t.sort_by([(c, "ascending") for c in t.column_names if not pa.types.is_nested(t.schema.field(c).type)])


def test_gap_coverage_rule():
    def snaps(*minutes):
        return {k: pa.table({"snapshot_time": pa.array([H1 + dt.timedelta(minutes=m) for m in minutes], S.TS)})
                for k in S.INVENTORY_KINDS}
    every_minute = snaps(*range(-1, 60))
    assert load.inventory_gaps(every_minute, H1) == []
    assert load.inventory_gaps(snaps(-1, 9, 19, 29, 39, 49, 59), H1) == []       # every 10 minutes: enough
    assert load.inventory_gaps(snaps(*range(-1, 20), *range(40, 60)), H1) == list(S.INVENTORY_KINDS)
    assert load.inventory_gaps(snaps(-5), H1) == list(S.INVENTORY_KINDS)         # nothing in the hour
    only_pods_missing = {**every_minute, "pods": None}
    assert load.inventory_gaps(only_pods_missing, H1) == ["pods"]


def test_an_hour_of_unreadable_pod_snapshots_is_flagged_then_repaired(tmp_path):
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    simulate(open_lake(str(clean)), nodes=2, hours=2, seed=5)
    shutil.copytree(clean, dirty)
    lake, ref = open_lake(str(dirty)), open_lake(str(clean))
    pods_h1 = [lake.rel(i.path) for i in lake.list_files("inventory/pods")
               if f"-{H1:%Y%m%dT%H}" in i.path]
    assert len(pods_h1) >= 50
    saved = {rel: lake.read_bytes(rel) for rel in pods_h1}
    for rel in pods_h1:
        lake.write_bytes(rel, b"not parquet")

    _cost(clean)
    res = _cost(dirty)
    assert list(res.inventory_gaps) == [H1] and res.inventory_gaps[H1] == ["pods"]
    text = sm.format_summary(res.summary, hours=2, retiered=0, rows_in=res.rows_in, files=res.files_read,
                             quarantined=res.quarantined, duplicates=0, seconds=1.0,
                             inventory_gaps=res.inventory_gaps)
    assert "hours costed with an inventory gap" in text and "2026-01-05T01:00Z: no readable pods" in text
    h0, h1 = _rows(lake, H0), _rows(lake, H1)
    assert h1.num_rows and pc.all(h1["inventory_gap"]).as_py()
    assert not pc.any(h0["inventory_gap"]).as_py()
    assert h0.equals(_rows(ref, H0))  # the hour with inventory is unaffected
    assert C.read_record(lake, H1).flags["inventory_gap"] == ["pods"]
    assert C.read_record(lake, H0).flags["inventory_gap"] == []
    rep = validate.validate(lake)
    gaps = [f for f in rep.critical if f.rule == "inventory_gap"]
    assert len(gaps) == 1 and "2026-01-05T01:00:00Z" in str(gaps[0].observed)
    assert not (dirty / "_quarantine").exists()  # inventory is reported, never quarantined

    # the inventory comes back: the hour is recomputed over its range and equals the clean run
    for rel, data in saved.items():
        lake.write_bytes(rel, data)
    res = _cost(dirty, start=H1, end=H1 + dt.timedelta(hours=1))
    assert res.inventory_gaps == {}
    assert _rows(lake, H1).equals(_rows(ref, H1))
    assert not [f for f in validate.validate(lake).critical if f.rule == "inventory_gap"]
