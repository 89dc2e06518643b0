"""The exporter against a real S3 endpoint (moto_server): outage -> spool -> in-order upload.

moto keeps its objects in memory, so a stopped server comes back empty (as a fresh bucket
would): the test reads the bucket before each outage and after recovery, recreates the
bucket after the restart, and checks that the union is every window exactly once.
"""
from __future__ import annotations

import datetime as dt
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from lake import schema as S
from lake.storage import Lake, open_lake
from node_agent.exporter import Exporter
from node_agent.health import Metrics
from node_agent.spool import Spool

pytestmark = pytest.mark.slow

T0 = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.timezone.utc)
BUCKET = "netmon-exporter"


class RecordingLake(Lake):
    """The real lake, noting the order in which files were written."""

    written: list

    def write_table(self, rel, table, compression="zstd"):
        full = super().write_table(rel, table, compression)
        self.written.append(rel)
        return full


def open_recording(endpoint: str) -> RecordingLake:
    lake = open_lake(f"s3://{BUCKET}/lake", s3_endpoint=endpoint)
    rl = RecordingLake(lake.fs, lake.root, lake.url)
    rl.written = []
    return rl


def flows(i: int, rows: int = 4) -> pa.Table:
    ws = T0 + dt.timedelta(minutes=i)
    return pa.table({
        "window_start": [ws] * rows, "window_end": [ws + dt.timedelta(minutes=1)] * rows,
        "node": ["node-a"] * rows, "direction": ["outbound"] * rows,
        "src_ip": [f"10.1.0.{r}" for r in range(rows)], "dst_ip": ["10.2.0.1"] * rows,
        "orig_dst_ip": ["10.96.0.1"] * rows, "orig_dst_port": [443] * rows, "dst_port": [8443] * rows,
        "proto": [6] * rows, "tx_bytes": [10_000 * i + r for r in range(rows)], "tx_packets": [2] * rows,
        "rx_bytes": [i] * rows, "rx_packets": [1] * rows, "connections": [1] * rows,
    })


def read_bucket(lake: Lake) -> dict[str, pa.Table]:
    return {lake.rel(f.path): lake.read_table(f.path) for f in lake.list_files("raw/flows")}


def wait_for(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def recreate_bucket(lake: Lake) -> None:
    lake.fs.create_dir(BUCKET)


def test_outage_spools_and_recovery_uploads_everything_in_order_exactly_once(moto_s3, tmp_path):
    lake = open_recording(moto_s3.endpoint)
    metrics = Metrics()
    spool = Spool(str(tmp_path / "spool"), 1 << 30, metrics=metrics)
    exp = Exporter(lake, spool, metrics, backoff_initial=0.05, backoff_max=0.5).start()
    expected: dict[str, pa.Table] = {}

    def produce(i):
        rel = exp.submit_raw("raw/flows", "node-a", T0 + dt.timedelta(minutes=i), flows(i))
        expected[rel] = S.conform(flows(i), S.RAW_FLOWS)
        return rel

    try:
        before = [produce(i) for i in range(3)]
        wait_for(lambda: spool.depth()[0] == 0 and len(lake.written) == 3, what="first uploads")
        seen_before = read_bucket(lake)
        assert sorted(seen_before) == sorted(before)

        moto_s3.stop()
        during = [produce(i) for i in range(3, 7)]
        wait_for(lambda: metrics.upload_failures.get() >= 2, what="failed retries")
        assert spool.pending() == during              # all spooled, in order, none lost
        assert metrics.spool_files.get() == 4

        moto_s3.start()                               # same port; moto comes back empty
        recreate_bucket(lake)
        after = [produce(i) for i in range(7, 9)]
        wait_for(lambda: spool.depth()[0] == 0 and len(lake.written) == 9, what="spool drained")
    finally:
        exp.close(timeout=5)

    assert lake.written == before + during + after    # upload order is window order
    seen_after = read_bucket(lake)
    assert set(seen_before).isdisjoint(seen_after)   # nothing uploaded twice
    got = {**seen_before, **seen_after}
    assert sorted(got) == sorted(expected)
    for rel, table in expected.items():
        assert got[rel].equals(table), rel
    total = pa.concat_tables(got.values())
    assert pa.compute.sum(total["tx_bytes"]).as_py() == sum(pa.compute.sum(t["tx_bytes"]).as_py() for t in expected.values())
    assert metrics.spool_files.get() == 0
    assert metrics.last_flush.get() > 0


def test_windows_spooled_by_a_stopped_agent_upload_after_restart(moto_s3, tmp_path):
    lake = open_recording(moto_s3.endpoint)
    moto_s3.stop()
    spool_dir = str(tmp_path / "spool")
    first = Exporter(lake, Spool(spool_dir, 1 << 30), backoff_initial=0.05, backoff_max=0.2).start()
    rels = [first.submit_raw("raw/flows", "node-a", T0 + dt.timedelta(minutes=i), flows(i)) for i in range(5)]
    left = first.close(timeout=2)                      # storage still down: stays in the spool
    assert left == 5
    assert lake.written == []

    moto_s3.start()
    recreate_bucket(lake)
    metrics = Metrics()
    spool = Spool(spool_dir, 1 << 30, metrics=metrics)  # a new process: the directory is the state
    assert spool.pending() == rels
    second = Exporter(lake, spool, metrics, backoff_initial=0.05, backoff_max=0.2).start()
    try:
        rel5 = second.submit_raw("raw/flows", "node-a", T0 + dt.timedelta(minutes=5), flows(5))
        wait_for(lambda: spool.depth()[0] == 0, what="spool drained after restart")
    finally:
        second.close(timeout=5)
    assert lake.written == rels + [rel5]
    got = read_bucket(lake)
    assert sorted(got) == sorted(rels + [rel5])
    for i, rel in enumerate(rels + [rel5]):
        assert got[rel].equals(S.conform(flows(i), S.RAW_FLOWS))


def test_a_retried_upload_replaces_instead_of_duplicating(moto_s3, tmp_path):
    lake = open_recording(moto_s3.endpoint)
    spool = Spool(str(tmp_path / "spool"), 1 << 30)
    exp = Exporter(lake, spool, backoff_initial=0.05).start()
    try:
        rel = exp.submit_raw("raw/flows", "node-a", T0, flows(0))
        wait_for(lambda: spool.depth()[0] == 0, what="upload")
        # The same window again (an upload that succeeded but whose removal from the
        # spool was lost in a crash is retried like this).
        assert exp.submit_raw("raw/flows", "node-a", T0, flows(0)) == rel
        wait_for(lambda: spool.depth()[0] == 0 and len(lake.written) == 2, what="second upload")
    finally:
        exp.close(timeout=5)
    objects = [i for i in lake.fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True)) if i.type == pafs.FileType.File]
    assert [lake.rel(o.path) for o in objects] == [rel]


def test_the_lake_path_is_the_shared_writers_path(tmp_path):
    from lake.writer import write_raw, write_inventory

    lake = open_lake(str(tmp_path / "lake"))
    exp = Exporter(lake, Spool(str(tmp_path / "spool"), 1 << 30))
    assert exp.submit_raw("raw/flows", "node-a", T0, flows(0)) == write_raw(lake, "raw/flows", "node-a", T0, flows(0))
    inv = pa.table({"snapshot_time": [T0], "name": ["n1"], "internal_ip": ["10.0.0.1"]})
    assert exp.submit_inventory("nodes", T0, inv) == write_inventory(lake, "nodes", T0, inv)
    exp.close(timeout=5)


def test_a_spool_disk_that_refuses_writes_keeps_windows_in_memory_until_it_recovers(tmp_path):
    import os
    import shutil

    lake_dir = tmp_path / "lake"
    lake = open_lake(str(lake_dir))
    metrics = Metrics()
    spool_dir = tmp_path / "spool"
    spool = Spool(str(spool_dir), 1 << 30, metrics=metrics)
    # Storage down too (the lake root is a file), so nothing can leave memory yet.
    shutil.rmtree(lake_dir)
    lake_dir.write_text("not a directory")
    exp = Exporter(lake, spool, metrics, backoff_initial=0.05, backoff_max=0.2)
    # The spool disk goes bad: its directory is replaced by a file.
    os.rmdir(spool_dir)
    spool_dir.write_text("broken disk")
    rels = [exp.submit_raw("raw/flows", "node-a", T0 + dt.timedelta(minutes=i), flows(i)) for i in range(3)]
    assert metrics.spool_errors.get() == 1       # later windows queue behind the first in memory
    assert spool.pending() == []
    exp.start()
    wait_for(lambda: metrics.upload_failures.get() >= 2, what="failed attempts")
    # The disk recovers first: the windows move from memory into the spool, in order.
    spool_dir.unlink()
    spool_dir.mkdir()
    wait_for(lambda: spool.pending() == rels, what="windows spooled after the disk recovered")
    # Then storage: everything is uploaded in order.
    lake_dir.unlink()
    lake_dir.mkdir()
    wait_for(lambda: spool.depth()[0] == 0, what="upload")
    assert exp.close(timeout=5) == 0
    got = read_bucket(lake)
    assert sorted(got) == sorted(rels)
    for i, rel in enumerate(rels):
        assert got[rel].equals(S.conform(flows(i), S.RAW_FLOWS))


def _nowhere_to_write(tmp_path):
    """A spool whose disk refuses writes and a lake that is down: windows stay in memory."""
    import os
    import shutil

    lake_dir = tmp_path / "lake"
    lake = open_lake(str(lake_dir))
    metrics = Metrics()
    spool_dir = tmp_path / "spool"
    spool = Spool(str(spool_dir), 1 << 30, metrics=metrics)
    shutil.rmtree(lake_dir)
    lake_dir.write_text("not a directory")
    os.rmdir(spool_dir)
    spool_dir.write_text("broken disk")
    return lake, lake_dir, spool, spool_dir, metrics


def test_windows_in_memory_are_visible_and_dropped_with_one_line_after_the_grace(tmp_path, caplog):
    lake, _, spool, _, metrics = _nowhere_to_write(tmp_path)
    exp = Exporter(lake, spool, metrics, backoff_initial=0.05, backoff_max=0.2).start()
    for i in range(2):
        exp.submit_raw("raw/flows", "node-a", T0 + dt.timedelta(minutes=i), flows(i, rows=3))
    assert metrics.memory_windows.get() == 2 and metrics.memory_bytes.get() > 0
    t0 = time.monotonic()
    assert exp.close(timeout=0.5, memory_timeout=2.5) == 2      # kept trying for the grace ...
    assert 2.3 < time.monotonic() - t0 < 6
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "dropped" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("dropped 2 window(s) (6 rows, ")  # ... then says what it lost


def test_a_disk_that_recovers_within_the_grace_loses_nothing(tmp_path):
    import threading

    lake, lake_dir, spool, spool_dir, metrics = _nowhere_to_write(tmp_path)
    exp = Exporter(lake, spool, metrics, backoff_initial=0.05, backoff_max=0.2).start()
    rel = exp.submit_raw("raw/flows", "node-a", T0, flows(1))

    def recover():
        time.sleep(1.0)
        spool_dir.unlink()
        spool_dir.mkdir()

    threading.Thread(target=recover).start()
    assert exp.close(timeout=0.5, memory_timeout=10) == 1        # in the spool: it uploads at the next start
    assert spool.pending() == [rel] and metrics.memory_windows.get() == 0
