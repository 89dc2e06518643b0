"""The per-hour commit (jobs/commit.py), what readers see (jobs/catalog.py) and the run lease
(jobs/lock.py), on real local and moto_server S3 lakes; kills are real SIGKILLs of a child
process at the commit's phases."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import catalog
from jobs import commit as C
from jobs import lock
from jobs.errors import JobError
from lake import schema as S
from lake.storage import open_lake

UTC = dt.timezone.utc
H = dt.datetime(2026, 3, 2, 10, tzinfo=UTC)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows(*tx):
    t = S.COST_FLOWS.empty_table().to_pydict()
    n = len(tx)
    cols = {k: [None] * n for k in t}
    cols.update(window_start=[H] * n, window_end=[H + dt.timedelta(minutes=1)] * n, tx_bytes=list(tx),
                rx_bytes=[0] * n, cost_usd=[0.5] * n, traffic_class=["same_zone"] * n)
    return pa.table(cols, schema=S.COST_FLOWS)


def read(lake, files):
    return sorted(v for f in files for v in pq.read_table(f, filesystem=lake.fs, columns=["tx_bytes"])
                  .column(0).to_pylist())


def glob(lake):
    return [i.path for i in lake.list_files("costs/flows")]


def publish(lake, lease, tables):
    parts = [C.write_part(lake, lease.token, C.part_path(H, lease.token, i), t) for i, t in enumerate(tables)]
    return C.publish_hour(lake, lease, C.HourRecord(hour=H, parts={C.FLOWS: parts}, rows_out=sum(
        t.num_rows for t in tables)))


@pytest.fixture
def local(tmp_path):
    return open_lake(str(tmp_path / "lake"))


@pytest.fixture
def s3(moto_s3):
    return open_lake("s3://netmon-commit/lake", s3_endpoint=moto_s3.endpoint)


@pytest.fixture(params=["local", "s3"])
def lake(request):
    return request.getfixturevalue(request.param)


def test_staged_parts_are_invisible_until_the_record_then_replace_the_old_generation(lake):
    a = lock.acquire(lake, keepalive=False)
    publish(lake, a, [rows(1, 2)])
    a.release()
    assert read(lake, catalog.current_files(lake, "costs/flows")) == [1, 2]

    b = lock.acquire(lake, keepalive=False)
    assert b.token == a.token + 1
    staged = [C.write_part(lake, b.token, C.part_path(H, b.token, i), rows(10 * (i + 1))) for i in range(2)]
    # staged: no reader and no glob of costs/ sees them
    assert read(lake, catalog.current_files(lake, "costs/flows")) == [1, 2]
    assert read(lake, glob(lake)) == [1, 2]
    rec = C.publish_hour(lake, b, C.HourRecord(hour=H, parts={C.FLOWS: staged}))
    b.release()
    files = catalog.current_files(lake, "costs/flows", H, H + dt.timedelta(hours=1))
    assert files == [lake.path(p) for p in staged] == glob(lake)  # old generation deleted
    assert read(lake, files) == [10, 20]
    assert C.read_record(lake, H).token == rec.token == b.token
    assert not lake.list_files(C.STAGING_DIR)
    manifest = lake.read_bytes(C.symlink_manifest_path(H)).decode().splitlines()
    assert manifest == [C.uri(lake, p) for p in staged]
    assert manifest[0].startswith("file:///" if lake.url.startswith("/") else "s3://netmon-commit/lake/costs/flows/")
    # ranges: dates are whole days, datetimes are [start, end)
    assert catalog.current_files(lake, "flows", H.date(), H.date()) == files
    assert catalog.current_files(lake, "costs/flows", H + dt.timedelta(hours=1)) == []


def test_a_part_that_was_not_written_is_refused_before_the_commit(local):
    a = lock.acquire(local, keepalive=False)
    with pytest.raises(JobError, match=r"^hour 2026-03-02T10:00:00Z cannot be committed: part .* was not written$"):
        C.publish_hour(local, a, C.HourRecord(hour=H, parts={C.FLOWS: [C.part_path(H, a.token, 0)]}))
    assert C.read_record(local, H) is None


def test_a_run_that_lost_its_lease_cannot_commit(lake):
    old = lock.acquire(lake, ttl_s=0.5, keepalive=False)
    part = C.write_part(lake, old.token, C.part_path(H, old.token, 0), rows(7))
    time.sleep(0.7)
    new = lock.acquire(lake, keepalive=False)            # the old lease expired: taken over
    with pytest.raises(JobError, match=r"lost the lease .* now held by .*token 2"):
        C.publish_hour(lake, old, C.HourRecord(hour=H, parts={C.FLOWS: [part]}))
    assert C.read_record(lake, H) is None and glob(lake) == []
    new.release()


# ---------------------------------------------------------------------- kill -9 mid-commit

CHILD = r"""
import datetime as dt, os, signal, sys
sys.path.insert(0, {tests!r})
from test_publishing import H, rows
from jobs import commit as C, lock
from lake.storage import open_lake
lake = open_lake({url!r}, s3_endpoint={ep!r})
lease = lock.acquire(lake)
lease.publishing([H])
parts = [C.write_part(lake, lease.token, C.part_path(H, lease.token, i), rows(100 + i)) for i in range(2)]
if {phase!r} == "before-commit":
    os.kill(os.getpid(), signal.SIGKILL)
real = C._fault
C._fault = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == {phase!r} else real(name)
C.publish_hour(lake, lease, C.HourRecord(hour=H, parts={{C.FLOWS: parts}}))
"""


def kill_child(lake, phase, ep=None):
    code = CHILD.format(tests=os.path.join(REPO, "tests"), url=lake.url, ep=ep, phase=phase)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])})
    assert r.returncode == -9, r.stderr


@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill_after_the_record_is_rolled_forward_by_the_next_holder(where, request):
    lake = request.getfixturevalue(where)
    ep = lake.s3_endpoint
    first = lock.acquire(lake, keepalive=False)
    publish(lake, first, [rows(1)])
    first.release()

    kill_child(lake, "during-commit", ep)
    rec = C.read_record(lake, H)
    assert rec.token == first.token + 1                  # committed: the record is written
    # readers already get exactly the new generation (still at its staged names)
    assert read(lake, catalog.current_files(lake, "costs/flows")) == [100, 101]
    assert read(lake, glob(lake)) == [1]                 # a plain glob lags until rolled forward

    nxt = lock.acquire(lake, keepalive=False)            # the holder is dead: free at once
    assert nxt.previous["publishing"] == ["2026-03-02T10:00:00Z"]
    got = C.recover(lake, nxt)
    assert got.hours == [H] and got.committed == [H] and rec.token in got.staging_removed
    assert catalog.current_files(lake, "costs/flows") == glob(lake) == [lake.path(p) for p in rec.parts[C.FLOWS]]
    assert read(lake, glob(lake)) == [100, 101]
    assert not lake.list_files(C.STAGING_DIR)
    nxt.release()


def test_kill_before_the_record_leaves_the_hour_as_it_was(local):
    first = lock.acquire(local, keepalive=False)
    publish(local, first, [rows(1)])
    first.release()
    kill_child(local, "before-commit")
    assert C.read_record(local, H).token == first.token
    assert read(local, catalog.current_files(local, "costs/flows")) == read(local, glob(local)) == [1]
    nxt = lock.acquire(local, keepalive=False)
    got = C.recover(local, nxt)
    assert got.committed == [] and first.token + 1 in got.staging_removed
    assert read(local, glob(local)) == [1] and not local.list_files(C.STAGING_DIR)


# --------------------------------------------------------------------------------- lease

def test_a_held_lease_is_one_line_and_tokens_grow_across_releases(lake):
    a = lock.acquire(lake, owner="run-a")
    with pytest.raises(JobError) as e:
        lock.acquire(lake, owner="run-b")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"lake {lake.url!r} is locked by run-a (token {a.token}) until ")
    assert "--wait SECONDS" in msg
    a.release()
    b = lock.acquire(lake, owner="run-b")
    assert b.token == a.token + 1
    b.check()
    b.release()
    body = json.loads(lake.read_bytes(lock.LOCK_PATH))
    assert body["released"] is True and body["token"] == b.token


def test_wait_takes_the_lease_when_the_holder_releases_it(local):
    a = lock.acquire(local, owner="run-a")
    threading.Timer(1.0, a.release).start()
    t0 = time.monotonic()
    b = lock.acquire(local, owner="run-b", wait_s=30)
    assert 0.8 < time.monotonic() - t0 < 20 and b.token == a.token + 1
    b.release()


def test_keepalive_renews_and_a_dead_holder_frees_the_lease(local):
    a = lock.acquire(local, ttl_s=0.6)
    time.sleep(1.5)                 # past the ttl: renewed every ttl/3 by the keepalive
    a.check()
    with pytest.raises(JobError, match="is locked by"):
        lock.acquire(local)
    a.release()
    # a holder on this host whose process is gone does not hold the lake
    r = subprocess.run([sys.executable, "-c", "import os,signal;from jobs import lock;from lake.storage import "
                        f"open_lake;lock.acquire(open_lake({local.url!r}));os.kill(os.getpid(),signal.SIGKILL)"],
                       cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=60)
    assert r.returncode == -9
    b = lock.acquire(local, keepalive=False)
    assert b.token == a.token + 2 and b.previous["released"] is False
    b.release()


def test_concurrent_acquirers_get_exactly_one_lease(lake):
    go = threading.Barrier(4)
    won, lost = [], []

    def attempt(i):
        go.wait()
        try:
            won.append(lock.acquire(lake, owner=f"run-{i}", keepalive=False))
        except JobError as exc:
            lost.append(str(exc))

    ts = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(won) == 1 and len(lost) == 3 and all("is locked by" in m for m in lost)
    won[0].check()
    won[0].release()


def test_a_damaged_lease_is_replaced_with_a_larger_token(local):
    a = lock.acquire(local, keepalive=False)
    a.release()
    local.write_bytes(lock.LOCK_PATH, b"{not json")
    b = lock.acquire(local, keepalive=False)
    assert b.token > 1000 * a.token
    b.release()


def test_rollup_tables_are_their_date_partitions(local):
    for day in (1, 2, 3):
        when = dt.datetime(2026, 3, day, tzinfo=UTC)
        local.write_table(S.cost_file_path("costs/namespace_hourly", when), S.COST_NAMESPACE_HOURLY.empty_table())
    got = catalog.current_files(local, "namespace_hourly", dt.date(2026, 3, 2), dt.date(2026, 3, 3))
    assert [f.split("/date=")[1][:10] for f in got] == ["2026-03-02", "2026-03-03"]
    assert len(catalog.current_files(local, "costs/namespace_hourly")) == 3
    with pytest.raises(ValueError, match="unknown table 'costs/nope'"):
        catalog.current_files(local, "nope")
