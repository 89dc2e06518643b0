"""Storage faults (throttling, resets, stalls, a dead endpoint) between the cost job and a real
S3 endpoint (moto_server behind tests/s3_fault_proxy.py): retried, never quarantined; when
they persist the run fails with one line and a non-zero exit, and the next run completes. The
final lake equals an uninterrupted run's, file for file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from jobs import catalog
from jobs.run import JobOptions, run_cost_job
from lake.storage import StorageError, open_lake
from simulator.simulate import simulate
from tests.conftest import MotoS3
from tests.s3_fault_proxy import FaultProxy, Rule

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "jobs", "fixtures")
OUTPUTS = ("costs/flows", "costs/namespace_hourly", "costs/workload_daily")  # rollups: one file per date
HOUR1 = "raw/flows/date=2026-01-05/hour=01/"
CELL_FOOTER_SAMPLE = 16  # more than jobs/cells.py reads to estimate rows per byte
FAST_RETRY = {"NETMON_STORAGE_BACKOFF": "0.05", "NETMON_STORAGE_ATTEMPTS": "6", "NETMON_S3_TIMEOUT": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A simulated lake (2 nodes, 2 hours), its reference costs (an uninterrupted local run),
    and a moto_server to copy it into."""
    root = tmp_path_factory.mktemp("faults-storage")
    src, ref = root / "src", root / "ref"
    simulate(open_lake(str(src)), nodes=2, hours=2, seed=7)
    shutil.copytree(src, ref)
    cfg = str(src / "_expected" / "job-config.json")
    run_cost_job(JobOptions(lake_url=str(ref), executor="inline", progress=None, config_path=cfg,
                            ip_ranges_dir=FIXTURES))
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(k, raising=False)
        moto = MotoS3().start()
        try:
            yield {"src": src, "ref": open_lake(str(ref)), "cfg": cfg, "moto": moto, "env": env}
        finally:
            moto.stop()


def upload(world, prefix: str) -> str:
    """The source lake's raw, inventory and config copied into s3://netmon-faults/<prefix>."""
    url = f"s3://netmon-faults/{prefix}"
    lake = open_lake(url, s3_endpoint=world["moto"].endpoint)
    pafs.copy_files(str(world["src"]), lake.root, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=lake.fs, use_threads=True)
    return url


@pytest.fixture
def proxy(world):
    p = FaultProxy(world["moto"].endpoint).start()
    yield p
    p.stop()


def _rows(lake):
    """The lake's committed cost rows in a total order (part names carry run tokens)."""
    t = pa.concat_tables([lake.read_table(r) for r in catalog.current_files(lake, "costs/flows")])
    return t.sort_by([(c, "ascending") for c in t.column_names])


def assert_same_as_reference(lake, ref):
    assert _rows(lake).equals(_rows(ref)), "the cost rows differ from the uninterrupted run's"
    for table in OUTPUTS[1:]:
        ours = sorted(lake.rel(i.path) for i in lake.list_files(table))
        assert ours == sorted(ref.rel(i.path) for i in ref.list_files(table)), table
        for rel in ours:
            assert lake.read_table(rel).equals(ref.read_table(rel)), rel
    assert not lake.list_files("_quarantine", suffix=""), "nothing valid is quarantined"
    assert len(lake.list_files("raw/flows")) == len(ref.list_files("raw/flows"))


def run_inline(world, url, endpoint):
    return run_cost_job(JobOptions(lake_url=url, s3_endpoint=endpoint, executor="inline", progress=None,
                                   config_path=world["cfg"], ip_ranges_dir=FIXTURES))


def test_throttling_resets_and_stalls_are_retried_not_quarantined(world, proxy, monkeypatch):
    for k, v in FAST_RETRY.items():
        monkeypatch.setenv(k, v)
    url = upload(world, "transient")
    # more failures in a row than the S3 client's own 3 attempts: the lake's retries must carry them
    proxy.add(Rule("slowdown", method="GET", path=HOUR1, times=12))
    proxy.add(Rule("reset", method="GET", path=r"raw/dns/.*\.parquet", times=6))
    proxy.add(Rule("stall", method="GET", path="inventory/pods/", times=2, seconds=3))
    proxy.add(Rule("slowdown", method="PUT", path="costs/flows/", times=4))
    res = run_inline(world, url, proxy.endpoint)
    assert dict(proxy.injected) == {"slowdown": 16, "reset": 6, "stall": 2}
    assert res.quarantined == []
    assert_same_as_reference(open_lake(url, s3_endpoint=world["moto"].endpoint), world["ref"])


def test_a_persistent_storage_error_fails_the_run_and_the_next_run_completes(world, proxy, monkeypatch):
    for k, v in FAST_RETRY.items():
        monkeypatch.setenv(k, v)
    url = upload(world, "persistent")
    lake = open_lake(url, s3_endpoint=world["moto"].endpoint)
    victim = sorted(lake.rel(i.path) for i in lake.list_files(HOUR1))[5]
    proxy.add(Rule("slowdown", method="GET", path=victim.split("/")[-1], times=None))
    with pytest.raises(StorageError) as err:
        run_inline(world, url, proxy.endpoint)
    msg = str(err.value)
    assert "\n" not in msg and victim in msg and "SLOW_DOWN" in msg
    assert "the next run retries it" in msg
    assert proxy.injected["slowdown"] >= 6  # at least our attempts (the S3 client adds its own)
    assert not lake.list_files("_quarantine", suffix="") and lake.exists(victim)
    proxy.clear()
    res = run_inline(world, url, proxy.endpoint)
    assert res.quarantined == [] and len(res.hours_computed) == 2
    assert_same_as_reference(lake, world["ref"])


def _ray_processes(ray_tmp: str, tasks_only: bool = False) -> list[str]:
    """Processes started by a job run with RAY_TMPDIR=ray_tmp (its environment is inherited by
    every Ray process, whatever title the process gives itself); `tasks_only`: workers running
    a task (`ray::<task>` titles)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"RAY_TMPDIR={ray_tmp}".encode() in env and (not tasks_only or cmd.startswith("ray::")):
            out.append(f"{pid} {cmd[:120]}")
    return out


def test_a_dead_endpoint_inside_ray_tasks_is_one_line_and_no_ray_process_survives(world, proxy):
    """The endpoint dies after discovery: the Ray tasks' reads fail; the CLI prints one error
    line (no remote traceback), exits non-zero, quarantines nothing, and the local Ray it
    started is gone when it exits."""
    url = upload(world, "dead")
    # object reads only (not listings), after the driver's footer samples: the tasks' reads die
    proxy.add(Rule("dead", method="GET", path=r"raw/flows/.*\.parquet$", times=None, after=CELL_FOOTER_SAMPLE))
    ray_tmp = tempfile.mkdtemp(prefix="rf-", dir="/tmp")  # short: Ray's socket paths have a limit
    env = {**os.environ, **world["env"], **FAST_RETRY, "RAY_TMPDIR": ray_tmp,
           "PYTHONPATH": os.environ.get("PYTHONPATH", REPO)}
    try:
        r = subprocess.run([sys.executable, "-m", "jobs", "cost", "--lake", url, "--s3-endpoint", proxy.endpoint,
                            "--config", world["cfg"], "--ip-ranges", FIXTURES, "--quiet"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 2, r.stderr[-3000:]
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, r.stderr[-3000:]
        assert lines[0].startswith("error: reading raw/flows/") and "the next run retries it" in lines[0]
        assert "Traceback" not in r.stderr and proxy.injected["dead"] > 0
        deadline = time.monotonic() + 20
        while _ray_processes(ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _ray_processes(ray_tmp) == []
        lake = open_lake(url, s3_endpoint=world["moto"].endpoint)
        assert not lake.list_files("_quarantine", suffix="")
        assert not lake.list_files("costs/flows")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
