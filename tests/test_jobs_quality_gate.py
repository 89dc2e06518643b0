"""The cost job's data-quality gates: raw files that break a rule are quarantined with the
failed expectations recorded; a cost partition that fails its checks is not published."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import pipeline
from jobs.run import JobError, JobOptions, run_cost_job
from simulator.simulate import simulate
from lake.storage import open_lake


@pytest.fixture
def small_lake(tmp_path):
    root = tmp_path / "lake"
    simulate(open_lake(str(root)), nodes=2, hours=1, seed=5)
    return root


def _opts(root):
    return JobOptions(lake_url=str(root), executor="inline", progress=None,
                      config_path=str(root / "_expected" / "job-config.json"))


def _kept_bytes(root) -> int:
    return sum(json.loads(p.read_text())["kept_bytes"] for p in (root / "_state" / "hours").rglob("*.json"))


def _cost_bytes(root) -> int:
    t = pq.read_table(root / "costs" / "flows")
    return pc.sum(t["tx_bytes"]).as_py() + pc.sum(t["rx_bytes"]).as_py()


def test_a_file_breaking_a_rule_is_quarantined_with_its_expectations(small_lake):
    files = sorted((small_lake / "raw" / "flows").rglob("*.parquet"))
    victim = files[7]
    t = pq.read_table(victim)
    ips = t["dst_ip"].to_pylist()
    ips[0] = "10.0.0.300"           # passes the schema, breaks canonical_ip
    pq.write_table(t.set_column(t.schema.get_field_index("dst_ip"), "dst_ip", pa.array(ips)), victim)

    res = run_cost_job(_opts(small_lake))

    rel = str(victim.relative_to(small_lake))
    assert [q["path"] for q in res.quarantined] == [rel]
    assert not victim.exists()
    note = json.loads((small_lake / "_quarantine" / (rel + ".reason.json")).read_text())
    assert note["reason"] == "expectations"
    assert [(f["rule"], f["column"], f["unexpected_count"]) for f in note["failed_expectations"]] == [
        ("canonical_ip", "dst_ip", 1)]
    # nothing valid lost: every other file was costed, byte for byte
    assert res.files_read == len(files) - 1
    assert _cost_bytes(small_lake) == _kept_bytes(small_lake) > 0


def test_a_cost_partition_that_fails_is_not_published(small_lake, monkeypatch):
    real = pipeline.cost_flows

    def drops_a_row(raw, ctx, stats=None, clients=None):
        out = real(raw, ctx, stats, clients)
        return out.slice(1)          # a stage that loses a row: bytes no longer reconcile

    monkeypatch.setattr(pipeline, "cost_flows", drops_a_row)
    with pytest.raises(JobError, match=r"cost partition 2026-01-05T00:00Z failed its checks and was not "
                                       r"published: equal_raw on bytes"):
        run_cost_job(_opts(small_lake))
    assert not list((small_lake / "costs").rglob("*.parquet"))
    assert not (small_lake / "_state" / "hours").exists()
    # with the stage fixed, the same run publishes everything
    monkeypatch.setattr(pipeline, "cost_flows", real)
    run_cost_job(_opts(small_lake))
    assert _cost_bytes(small_lake) == _kept_bytes(small_lake)


def test_an_hour_whose_checks_great_expectations_does_not_confirm_is_not_published(small_lake, monkeypatch):
    """The tasks decide from their profiles; the driver has great-expectations validate the same
    profiles before it commits. A task that decides wrongly (here: lets every file through) is
    caught there, and nothing of the hour is published."""
    from jobs import quality
    files = sorted((small_lake / "raw" / "flows").rglob("*.parquet"))
    t = pq.read_table(files[3])
    ips = t["dst_ip"].to_pylist()
    ips[0] = "10.0.0.300"
    pq.write_table(t.set_column(t.schema.get_field_index("dst_ip"), "dst_ip", pa.array(ips)), files[3])
    monkeypatch.setattr(quality, "_decide", lambda frame, bounds: {})
    with pytest.raises(JobError, match=r"great-expectations and the job's tasks disagree on raw/flows "
                                       r"\(dst_ip:canonical_ip\): nothing of the hour was published"):
        run_cost_job(_opts(small_lake))
    assert not (small_lake / "costs" / "flows").exists() or not list((small_lake / "costs" / "flows").rglob("*.parquet"))
    assert not (small_lake / "_state" / "hours").exists()
