"""One run at a time, and a month-to-date ledger that cannot be lost: overlapping runs, and a
deleted or damaged ledger, end with the same ledger and dollars as an uninterrupted run."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import commit as C
from jobs import lock
from jobs import state as st
from jobs import validate as V
from lake.storage import open_lake
from lake.writer import write_raw
from test_jobs_load_state import GB, H0, H1, H2, S3_IP, all_costs, class_cost, egress_cost, flows, run
from test_jobs_load_state import lake  # noqa: F401 - fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MONTH = "2026-03"


def twin_of(lake, tmp_path, name="twin"):  # noqa: F811
    shutil.copytree(lake.root, tmp_path / name)
    return open_lake(str(tmp_path / name))


def late_file(lk):
    late = H1 + dt.timedelta(minutes=30)
    write_raw(lk, "raw/flows", "n2", late, flows(late, "n2", [("10.0.2.1", S3_IP, 20 * GB, 0)]))


def hour_costs(lk):
    t = all_costs(lk)
    g = t.group_by("window_start").aggregate([("cost_usd", "sum"), ("tx_bytes", "sum")])
    return sorted(zip(g["window_start"].to_pylist(), [round(v, 9) for v in g["cost_usd_sum"].to_pylist()],
                      g["tx_bytes_sum"].to_pylist()))


def ledger_view(lk):
    """The ledger's content apart from which run wrote each hour."""
    led = st.EgressLedger.read(lk, MONTH)
    assert led is not None
    return {h: {k: v for k, v in e.items() if k != "token"} for h, e in led.entries.items()}


def publishing_failures(lk):
    """validate's critical findings about records, parts and the ledger (the fixture lake has
    an inventory gap in H2 by design of other tests; that is not what is checked here)."""
    return [f for f in V.validate(lk).critical if f.rule.startswith(("commit:", "ledger:"))]


def damage(lk, how):
    path = st.egress_path(MONTH)
    if how == "deleted":
        lk.delete(path)
    elif how == "garbage":
        lk.write_bytes(path, b'{"month": "2026-03", "hours": {"2026-03-02T1')
    else:  # what two overlapping runs used to leave: one hour only
        body = json.loads(lk.read_bytes(path))
        body["hours"] = {k: v for k, v in body["hours"].items() if k.startswith("2026-03-02T12")}
        lk.write_bytes(path, json.dumps(body).encode())


@pytest.mark.parametrize("how", ["deleted", "garbage", "one_hour_left"])
def test_a_lost_or_damaged_ledger_is_rebuilt_from_the_records(lake, tmp_path, how):  # noqa: F811
    run(lake)
    twin = twin_of(lake, tmp_path)
    damage(lake, how)
    report = V.validate(lake)
    assert {f.rule for f in report.critical} & {"ledger:missing", "ledger:differs"}
    # a late file in H1: its tiers (and H2's) depend on H0's month-to-date bytes
    late_file(lake)
    late_file(twin)
    res, ref = run(lake), run(twin)
    assert res.hours_computed == ref.hours_computed == [H1] and res.hours_retiered == ref.hours_retiered
    assert hour_costs(lake) == hour_costs(twin)
    assert class_cost(all_costs(lake), "internet_egress") == pytest.approx(egress_cost(160 * GB))
    assert ledger_view(lake) == ledger_view(twin)
    assert not publishing_failures(lake)


def test_a_ledger_lost_with_nothing_new_is_rebuilt_by_the_next_run(lake):  # noqa: F811
    run(lake)
    before = ledger_view(lake)
    damage(lake, "one_hour_left")
    assert run(lake).hours_computed == []
    assert ledger_view(lake) == before


def test_records_whose_chain_broke_are_retiered(lake, tmp_path):  # noqa: F811
    """A run that died between re-tiered hours leaves H1 committed from new offsets and H2 from
    old ones: the next run re-tiers H2 from H1's state."""
    run(lake)
    twin = twin_of(lake, tmp_path)
    rec = C.read_record(lake, H2)
    rec.tier_state_before = {"aws/us-east-1": 1}   # as if tiered before a late change to H1
    rec.token += 1                                  # by a run whose ledger write never happened
    lake.write_bytes(C.record_path(H2), json.dumps(rec.to_json()).encode())
    assert "ledger:chain_broken" in {f.rule for f in V.validate(lake).critical}
    res = run(lake)
    assert res.hours_computed == []
    fixed = C.read_record(lake, H2)     # re-tiered from H1's state (its dollars did not move)
    assert fixed.tier_state_before == C.read_record(lake, H1).tier_state_after
    assert hour_costs(lake) == hour_costs(twin)
    assert not publishing_failures(lake)


def test_a_run_finds_the_lease_held_and_says_so_in_one_line(lake, capsys):  # noqa: F811
    from jobs import cli
    held = lock.acquire(lake, owner="other-run")
    try:
        assert cli.main(["cost", "--lake", lake.url, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: lake {lake.url!r} is locked by other-run (token 1)")
        assert C.read_record(lake, H0) is None
    finally:
        held.release()


# --------------------------------------------------------------------- overlapping CLI runs

def cli(*args):
    return subprocess.Popen([sys.executable, "-m", "jobs", "cost", "--executor", "inline", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_overlapping_runs_fail_or_wait_and_lose_nothing(lake, tmp_path):  # noqa: F811
    twin = twin_of(lake, tmp_path)
    run(twin)                                            # the uninterrupted run
    full = cli("--lake", lake.url, "--quiet")            # an hourly run
    deadline = time.monotonic() + 60
    while True:
        body = json.loads(lake.read_bytes(lock.LOCK_PATH) or b"{}")
        if body.get("pid") == full.pid and not body.get("released"):
            break
        assert full.poll() is None and time.monotonic() < deadline, "the run never took the lease"
        time.sleep(0.01)
    os.kill(full.pid, signal.SIGSTOP)                    # hold it there: the overlap is certain
    rng = ["--start", H0.isoformat(), "--end", (H2 + dt.timedelta(hours=1)).isoformat()]
    refused = cli("--lake", lake.url, "--quiet", *rng)
    out, err = refused.communicate(timeout=120)
    assert refused.returncode == 2, err
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"error: lake {lake.url!r} is locked by ")
    assert full.poll() is None                           # refused while the first holds the lease
    waiting = cli("--lake", lake.url, "--quiet", "--wait", "300", *rng)
    time.sleep(3)
    assert waiting.poll() is None                        # waiting for the lease
    os.kill(full.pid, signal.SIGCONT)
    out1, err1 = full.communicate(timeout=300)
    out2, err2 = waiting.communicate(timeout=300)
    assert full.returncode == 0, err1
    assert waiting.returncode == 0, err2
    assert "3 hour(s) computed" in out1 and "3 hour(s) computed" in out2
    assert hour_costs(lake) == hour_costs(twin)
    assert ledger_view(lake) == ledger_view(twin)
    # the refused run never held the lease; the waiting one (token 2) recomputed every hour
    assert {h: C.read_record(lake, h).token for h in (H0, H1, H2)} == {H0: 2, H1: 2, H2: 2}
    assert pc.sum(all_costs(lake)["tx_bytes"]).as_py() == pc.sum(all_costs(twin)["tx_bytes"]).as_py()
    assert not publishing_failures(lake)


# ------------------------------------------------------------- kill -9 at each phase, then resume

def rollup_sums(lk):
    from jobs import catalog
    out = {}
    for table in ("costs/namespace_hourly", "costs/workload_daily"):
        files = catalog.current_files(lk, table)
        t = pa.concat_tables([pq.read_table(f, filesystem=lk.fs, columns=["tx_bytes", "cost_usd"]) for f in files])
        out[table] = (pc.sum(t["tx_bytes"]).as_py(), round(pc.sum(t["cost_usd"]).as_py(), 9))
    return out


@pytest.mark.parametrize("point", ["after-cells", "during-commit", "during-ledger", "during-rollups"])
def test_a_run_killed_at_any_phase_is_finished_by_the_next(lake, tmp_path, point):  # noqa: F811
    run(lake)
    twin = twin_of(lake, tmp_path)
    for lk in (lake, twin):
        late_file(lk)
        write_raw(lk, "raw/flows", "n1", H0 + dt.timedelta(minutes=5),
                  flows(H0 + dt.timedelta(minutes=5), "n1", [("10.0.1.1", S3_IP, 45 * GB, 0)]))
    run(twin)
    killed = subprocess.run([sys.executable, "-m", "jobs", "cost", "--executor", "inline", "--quiet",
                             "--lake", lake.url], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NETMON_FAULT_POINT": point})
    assert killed.returncode == -9, killed.stderr
    run(lake)                                            # the dead holder's lease is free at once
    assert hour_costs(lake) == hour_costs(twin)
    assert ledger_view(lake) == ledger_view(twin)
    assert rollup_sums(lake) == rollup_sums(twin)
    assert not lake.list_files(C.STAGING_DIR)
    assert not publishing_failures(lake)
