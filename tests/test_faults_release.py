"""`netmon-jobs release`: quarantined files go back under raw/ with their reason kept, and the
next run costs them."""
from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import catalog, cli
from jobs.run import JobOptions, run_cost_job
from lake.storage import open_lake
from simulator.simulate import simulate

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "jobs", "fixtures")


def _cost(root):
    return run_cost_job(JobOptions(lake_url=str(root), executor="inline", progress=None,
                                   config_path=str(root / "_expected" / "job-config.json"),
                                   ip_ranges_dir=os.path.abspath(FIXTURES)))


def _totals(root):
    lake = open_lake(str(root))
    t = pa.concat_tables([lake.read_table(r) for r in catalog.current_files(lake, "costs/flows")])
    return pc.sum(t["tx_bytes"]).as_py() + pc.sum(t["rx_bytes"]).as_py(), round(pc.sum(t["cost_usd"]).as_py(), 9)


def test_release_after_a_fix_costs_the_files(tmp_path, capsys):
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    simulate(open_lake(str(clean)), nodes=2, hours=1, seed=5)
    shutil.copytree(clean, dirty)
    files = sorted((dirty / "raw" / "flows").rglob("*.parquet"))
    # two files quarantined for a content problem that is then fixed in place under _quarantine/
    victims = [files[3], files[11]]
    originals = {v: v.read_bytes() for v in victims}
    for v in victims:
        t = pq.read_table(v)
        ips = t["dst_ip"].to_pylist()
        ips[0] = "10.0.0.300"
        pq.write_table(t.set_column(t.schema.get_field_index("dst_ip"), "dst_ip", pa.array(ips)), v)
    _cost(clean)
    res = _cost(dirty)
    rels = sorted(str(v.relative_to(dirty)) for v in victims)
    assert sorted(q["path"] for q in res.quarantined) == rels
    assert _totals(dirty)[0] < _totals(clean)[0]

    # an unknown path is one error line
    assert cli.main(["release", "--lake", str(dirty), "raw/flows/nope.parquet"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: 'raw/flows/nope.parquet' is not in _quarantine/")
    # a reason that matches nothing releases nothing
    assert cli.main(["release", "--lake", str(dirty), "--all", "--reason", "unreadable"]) == 0
    assert "0 file(s) released" in capsys.readouterr().out

    for v in victims:  # the fix: the operator repairs the quarantined copies
        (dirty / "_quarantine" / v.relative_to(dirty)).write_bytes(originals[v])
    # one by its quarantine path, the rest with --all --reason
    assert cli.main(["release", "--lake", str(dirty), f"_quarantine/{rels[0]}"]) == 0
    assert cli.main(["release", "--lake", str(dirty), "--all", "--reason", "expectations",
                     "--note", "fixed the destination"]) == 0
    out = capsys.readouterr().out
    assert f"released {rels[1]}" in out
    for rel in rels:
        assert (dirty / rel).read_bytes() == originals[dirty / rel]
        assert not (dirty / "_quarantine" / rel).exists()
        assert not (dirty / "_quarantine" / (rel + ".reason.json")).exists()
        kept = json.loads((dirty / "_state" / "released" / (rel + ".reason.json")).read_text())
        assert kept["reason"] == "expectations" and kept["released"]
    assert json.loads((dirty / "_state" / "released" / (rels[1] + ".reason.json")).read_text())[
        "release_note"] == "fixed the destination"

    res = _cost(dirty)  # the released files' hour is recomputed
    assert res.quarantined == [] and len(res.hours_computed) == 1
    assert _totals(dirty) == _totals(clean)


def test_release_does_not_overwrite_a_newer_upload(tmp_path, capsys):
    from jobs import load
    from lake.writer import write_raw
    from tests.test_jobs_load import T0, flows_table
    lake = open_lake(str(tmp_path / "lake"))
    rel = write_raw(lake, "raw/flows", "n1", T0, flows_table())
    load.quarantine(lake, rel, "schema", "test")
    write_raw(lake, "raw/flows", "n1", T0, flows_table(tx=5))  # the agent uploaded it again, different
    assert cli.main(["release", "--lake", lake.url, rel]) == 1
    assert f"not released {rel}" in capsys.readouterr().err
    assert lake.exists(f"_quarantine/{rel}")
    assert pq.read_table(lake.path(rel))["tx_bytes"].to_pylist()[0] == 5
