"""kill -9 of the cost job at each phase (jobs/faults.py failpoints) and two overlapping runs:
after the next run, the lake equals an uninterrupted run's: the same cost rows (bytes and
dollars), rollups and month-to-date tier states; nothing quarantined, no staging or temporary
files left."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from jobs import catalog, faults
from lake.storage import open_lake
from simulator.simulate import simulate

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "jobs", "fixtures")
ROLLUPS = ("costs/namespace_hourly", "costs/workload_daily")
START = dt.datetime(2026, 1, 30, 22, tzinfo=dt.timezone.utc)  # 22:00, 23:00 and 00:00 of the next day
RANGE = ["--start", "2026-01-30T22:00Z", "--end", "2026-01-31T01:00Z"]


def cost(root, *extra, fault: str | None = None, wait: bool = True, **popen):
    """`netmon-jobs cost` in a child process (inline executor: the kill hits the driver itself)."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", REPO)}
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    cmd = [sys.executable, "-m", "jobs", "cost", "--lake", str(root), "--executor", "inline", "--quiet",
           "--config", str(root / "_expected" / "job-config.json"), "--ip-ranges", FIXTURES, *extra]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    if not wait:
        return p
    out, err = p.communicate(timeout=900)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A simulated lake (2 nodes, 3 hours across midnight: two dates, one month) and the
    reference: the same lake costed by one uninterrupted run."""
    root = tmp_path_factory.mktemp("faults-kill")
    src = root / "src"
    simulate(open_lake(str(src)), nodes=2, hours=3, seed=13, start=START)
    ref = root / "ref"
    shutil.copytree(src, ref)
    rc, _, err = cost(ref)
    assert rc == 0, err
    return {"src": src, "ref": ref, "root": root}


def fresh(world, name):
    dst = world["root"] / name
    shutil.copytree(world["src"], dst)
    return dst


def cost_rows(root) -> pa.Table:
    lake = open_lake(str(root))
    t = pa.concat_tables([lake.read_table(r) for r in catalog.current_files(lake, "costs/flows")])
    # a total order: nested columns (lists) take part as their text
    nested = [c for c in t.column_names if pa.types.is_nested(t.schema.field(c).type)]
    keyed = t.drop_columns(nested)
    for c in nested:
        keyed = keyed.append_column(f"_{c}", pa.array([repr(v) for v in t[c].to_pylist()], pa.string()))
    order = pc.sort_indices(keyed, [(c, "ascending") for c in keyed.column_names])
    return t.take(order)


def tier_states(root) -> dict:
    """Per month, per hour: the tier volumes and month-to-date state before and after (the
    ledger without the tokens, which differ between runs)."""
    out = {}
    for p in sorted((root / "_state" / "egress").glob("*.json")):
        body = json.loads(p.read_text())
        out[p.name] = {h: {k: v for k, v in e.items() if k != "token"} for h, e in body["hours"].items()}
    return out


def _diff(got: pa.Table, want: pa.Table) -> str:
    out = []
    for c in want.column_names:
        if c not in got.column_names or not got[c].equals(want[c]):
            g = got[c].to_pylist() if c in got.column_names else []
            w = want[c].to_pylist()
            bad = [(i, g[i] if i < len(g) else None, w[i]) for i in range(len(w)) if i >= len(g) or g[i] != w[i]]
            out.append(f"{c}: {len(bad)} row(s), e.g. {bad[:2]}")
    return "; ".join(out) or f"schemas: {got.schema} vs {want.schema}"


def assert_same_as_reference(root, ref):
    got, want = cost_rows(root), cost_rows(ref)
    assert got.num_rows == want.num_rows > 0
    for c in ("tx_bytes", "rx_bytes"):
        assert pc.sum(got[c]).as_py() == pc.sum(want[c]).as_py()
    assert pc.sum(got["cost_usd"]).as_py() == pytest.approx(pc.sum(want["cost_usd"]).as_py(), rel=1e-12)
    assert got.equals(want), f"the cost rows differ from the uninterrupted run's: {_diff(got, want)}"
    lake, rlake = open_lake(str(root)), open_lake(str(ref))
    for table in ROLLUPS:
        ours = sorted(lake.rel(i.path) for i in lake.list_files(table))
        assert ours == sorted(rlake.rel(i.path) for i in rlake.list_files(table)), table
        for rel in ours:
            assert lake.read_table(rel).equals(rlake.read_table(rel)), rel
    assert tier_states(root) == tier_states(ref)
    assert not (root / "_quarantine").exists(), "nothing valid is quarantined"
    assert not list((root / "_state" / "staging").rglob("*.parquet")) if (root / "_state" / "staging").exists() else True
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")], "temporary files left"
    assert sorted(p.relative_to(root) for p in (root / "raw").rglob("*.parquet")) == \
        sorted(p.relative_to(ref) for p in (ref / "raw").rglob("*.parquet"))


@pytest.mark.parametrize("point", faults.NAMES)
def test_kill_9_at_each_phase_then_the_next_run_equals_an_uninterrupted_run(world, point):
    root = fresh(world, f"kill-{point}")
    rc, out, err = cost(root, fault=point)
    assert rc == -9, f"the fault point {point} was not reached: rc={rc}\n{err[-2000:]}"
    rc, out, err = cost(root)
    assert rc == 0, err
    assert "Traceback" not in err
    assert_same_as_reference(root, world["ref"])
    # and a further run has nothing left to do
    rc, out, _ = cost(root)
    assert rc == 0 and "0 hour(s) computed" in out


@pytest.mark.parametrize("point", faults.MID_WRITE)
def test_kill_9_in_the_middle_of_a_write_leaves_no_temporary_behind(world, point):
    root = fresh(world, "kill-" + point.replace("/", "_").replace(":", "-"))
    rc, _, err = cost(root, fault=point)
    assert rc == -9, f"the fault point {point} was not reached: rc={rc}\n{err[-2000:]}"
    prefix = point.split(":", 1)[1]
    left = [p for p in root.rglob("*.tmp") if str(p.relative_to(root)).startswith(prefix)]
    assert len(left) == 1, left  # the kill left the half-written file...
    rc, out, err = cost(root)
    assert rc == 0 and "Traceback" not in err, err
    assert_same_as_reference(root, world["ref"])  # ...the next run removed it and lost nothing


def test_overlapping_full_and_ranged_runs_lose_nothing(world):
    """An hourly run and a --start/--end run of the same hours started together: the lease lets
    one in; the other says so in one line and exits non-zero (or, with --wait, runs after it).
    Either way the ledger keeps every hour and the costs equal one uninterrupted run's."""
    root = fresh(world, "overlap")
    ranged = RANGE
    a = cost(root, wait=False)
    time.sleep(0.5)
    b = cost(root, *ranged, wait=False)
    (ao, ae), (bo, be) = a.communicate(timeout=900), b.communicate(timeout=900)
    results = sorted([(a.returncode, ae), (b.returncode, be)], key=lambda r: r[0])
    if results[1][0] != 0:
        lines = [ln for ln in results[1][1].splitlines() if ln.strip()]
        assert len(lines) == 1 and "locked" in lines[0], results[1][1][-2000:]
    assert results[0][0] == 0, results[0][1][-2000:]
    # the one that was turned away, run again (waiting, should the other still hold the lease)
    rc, _, err = cost(root, *ranged, "--wait", "600")
    assert rc == 0, err
    assert_same_as_reference(root, world["ref"])
    # both at once again, now waiting: both succeed, one after the other
    a = cost(root, "--wait", "600", wait=False)
    b = cost(root, *ranged, "--wait", "600", wait=False)
    assert a.wait(900) == 0 and b.wait(900) == 0
    assert_same_as_reference(root, world["ref"])
