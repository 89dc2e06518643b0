"""The agent's local spool: order, bound, restart recovery, atomicity (no root needed)."""
from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake import schema as S
from lake.storage import open_lake
from node_agent.health import Metrics
from node_agent.spool import Spool, SpoolError

T0 = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.timezone.utc)


def window(i: int, rows: int = 3) -> tuple[str, pa.Table]:
    """Window i of node n1: distinct byte counts so every window is recognisable."""
    ws = T0 + dt.timedelta(minutes=i)
    t = pa.table({
        "window_start": [ws] * rows, "window_end": [ws + dt.timedelta(minutes=1)] * rows,
        "node": ["n1"] * rows, "direction": ["outbound"] * rows,
        "src_ip": [f"10.0.0.{r}" for r in range(rows)], "dst_ip": ["10.0.1.1"] * rows,
        "orig_dst_ip": ["10.96.0.1"] * rows, "orig_dst_port": [80] * rows, "dst_port": [8080] * rows,
        "proto": [6] * rows, "tx_bytes": [1000 * i + r for r in range(rows)], "tx_packets": [1] * rows,
        "rx_bytes": [7] * rows, "rx_packets": [1] * rows, "connections": [1] * rows,
    })
    return S.raw_file_path("raw/flows", "n1", ws), S.conform(t, S.RAW_FLOWS)


def test_pending_is_oldest_first_and_upload_keeps_that_order(tmp_path):
    spool = Spool(str(tmp_path / "spool"), 1 << 30)
    wins = [window(i) for i in (3, 1, 2)]          # put order, not window order, is the upload order
    for rel, t in wins:
        spool.put(rel, t)
    assert spool.pending() == [rel for rel, _ in wins]

    lake = open_lake(str(tmp_path / "lake"))
    written = []

    def write(lk, rel, table):
        written.append(rel)
        lk.write_table(rel, table)

    assert spool.upload(lake, write=write) == 3
    assert written == [rel for rel, _ in wins]
    assert spool.pending() == [] and spool.depth() == (0, 0)
    for rel, t in wins:
        got = lake.read_table(rel)
        assert got.equals(t)                      # content intact, spool bookkeeping stripped
        assert b"netmon.spool.rel_path" not in (got.schema.metadata or {})
    assert [p for p in os.listdir(tmp_path / "spool")] == []


def test_upload_stops_at_the_first_failure_so_order_holds(tmp_path):
    spool = Spool(str(tmp_path / "spool"), 1 << 30)
    wins = [window(i) for i in range(4)]
    for rel, t in wins:
        spool.put(rel, t)
    lake = open_lake(str(tmp_path / "lake"))
    calls = []

    def flaky(lk, rel, table):
        calls.append(rel)
        if len(calls) == 2:
            raise OSError("storage unavailable")
        lk.write_table(rel, table)

    with pytest.raises(OSError):
        spool.upload(lake, write=flaky)
    assert calls == [wins[0][0], wins[1][0]]
    assert spool.pending() == [rel for rel, _ in wins[1:]]   # the failed one stays first
    assert spool.upload(lake) == 3
    assert spool.pending() == []
    assert sorted(f.path for f in lake.list_files("raw/flows")) == sorted(lake.path(r) for r, _ in wins)


def test_bound_drops_the_oldest_with_a_metric(tmp_path, caplog):
    metrics = Metrics()
    probe = Spool(str(tmp_path / "probe"), 1 << 30)
    one = probe.put(*window(0)).size
    # room for three windows (sizes differ by a few bytes at most)
    spool = Spool(str(tmp_path / "spool"), 3 * one + one // 2, metrics=metrics)
    wins = [window(i) for i in range(6)]
    for rel, t in wins:
        spool.put(rel, t)
    assert spool.pending() == [rel for rel, _ in wins[3:]]
    files, size = spool.depth()
    assert files == 3 and size <= spool.max_bytes
    assert metrics.spool_dropped.get() == 3
    assert metrics.spool_files.get() == 3
    assert metrics.spool_bytes.get() == size
    assert sum(1 for r in caplog.records if "dropped the oldest window" in r.getMessage()) == 3
    assert len([n for n in os.listdir(tmp_path / "spool") if n.endswith(".parquet")]) == 3


def test_the_newest_window_stays_even_if_it_alone_exceeds_the_bound(tmp_path):
    spool = Spool(str(tmp_path / "spool"), 10)
    rel0, t0 = window(0)
    rel1, t1 = window(1)
    spool.put(rel0, t0)
    spool.put(rel1, t1)
    assert spool.pending() == [rel1]


def test_a_restarted_spool_finds_the_windows_in_order_and_continues_the_sequence(tmp_path):
    d = str(tmp_path / "spool")
    first = Spool(d, 1 << 30)
    wins = [window(i) for i in range(3)]
    for rel, t in wins:
        first.put(rel, t)
    del first
    second = Spool(d, 1 << 30)                      # a new process sees the directory only
    assert second.pending() == [rel for rel, _ in wins]
    rel3, t3 = window(3)
    e = second.put(rel3, t3)
    assert e.seq == 4
    assert second.pending()[-1] == rel3
    assert [second.read(x).equals(t) for x, (_, t) in zip(second.entries(), wins + [(rel3, t3)])] == [True] * 4


def test_interrupted_writes_are_not_windows_and_corrupt_files_are_set_aside(tmp_path):
    d = tmp_path / "spool"
    s = Spool(str(d), 1 << 30)
    rel, t = window(0)
    s.put(rel, t)
    # What a crash mid-put leaves: a temp file with half a Parquet file in it.
    good = d / "000000000001.parquet"
    (d / ".tmp-000000000002-999").write_bytes(good.read_bytes()[:100])
    # And a committed file that the disk later mangled.
    (d / "000000000003.parquet").write_bytes(b"PAR1 not really parquet")
    s2 = Spool(str(d), 1 << 30)
    assert s2.pending() == [rel]
    assert not (d / ".tmp-000000000002-999").exists()
    assert (d / "000000000003.parquet.corrupt").exists()
    assert s2.put(*window(1)).seq == 2


def test_a_failed_put_leaves_no_entry(tmp_path, monkeypatch):
    d = tmp_path / "spool"
    s = Spool(str(d), 1 << 30)

    def boom(table, where, **kw):
        where.write(b"PAR1 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        s.put(*window(0))
    monkeypatch.undo()
    assert s.pending() == [] and os.listdir(d) == []
    assert Spool(str(d), 1 << 30).pending() == []


def test_an_unwritable_spool_directory_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match=r"spool directory .* is not writable: Not a directory"):
        Spool(str(blocker / "spool"), 1 << 20)
