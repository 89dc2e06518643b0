"""No Ray process outlives the cost job that started it: SIGTERM stops it cleanly (one line,
exit 143, local Ray shut down); after kill -9 the kernel takes its Ray processes with it; the
next run finishes the work."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from lake.storage import open_lake
from simulator.simulate import simulate
from tests.test_faults_storage import _ray_processes

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "jobs", "fixtures")


@pytest.fixture
def ray_lake(tmp_path):
    root = tmp_path / "lake"
    simulate(open_lake(str(root)), nodes=2, hours=2, seed=5)
    ray_tmp = tempfile.mkdtemp(prefix="rf-", dir="/tmp")  # short: Ray's socket paths have a limit
    yield root, ray_tmp
    shutil.rmtree(ray_tmp, ignore_errors=True)


def start(root, ray_tmp, **env):
    e = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", REPO), "RAY_TMPDIR": ray_tmp, **env}
    return subprocess.Popen([sys.executable, "-m", "jobs", "cost", "--lake", str(root),
                             "--config", str(root / "_expected" / "job-config.json"), "--ip-ranges", FIXTURES],
                            cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def gone(ray_tmp, within=30.0) -> list[str]:
    deadline = time.monotonic() + within
    while _ray_processes(ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _ray_processes(ray_tmp)



AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::IDLE")


def _running(ray_tmp: str, when: str, job: int) -> bool:
    """`starting`: a Ray process other than the job exists (ray.init is under way); `task`: a
    job task runs."""
    procs = [p.split(" ", 1) for p in _ray_processes(ray_tmp, tasks_only=(when == "task"))]
    procs = [cmd for pid, cmd in procs if int(pid) != job]
    return bool([c for c in procs if not c.startswith(AGENTS)] if when == "task" else procs)


@pytest.mark.parametrize("when", ["starting", "task"])
def test_sigterm_stops_the_job_in_one_line_and_shuts_down_its_ray(ray_lake, when):
    root, ray_tmp = ray_lake
    p = start(root, ray_tmp)
    deadline = time.monotonic() + 300
    while not _running(ray_tmp, when, p.pid) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until Ray is starting, or up with a task running
    assert p.poll() is None, p.communicate()[1][-3000:]
    p.terminate()
    out, err = p.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("cost: ")]
    assert p.returncode == 143 and lines == ["error: terminated (SIGTERM)"], err[-3000:]
    assert gone(ray_tmp) == []
    assert not (root / "_quarantine").exists()


def test_kill_9_takes_the_local_ray_with_it(ray_lake):
    root, ray_tmp = ray_lake
    p = start(root, ray_tmp, NETMON_FAULT_POINT="after-cells")
    _, err = p.communicate(timeout=600)
    assert p.returncode == -9, err[-3000:]
    assert gone(ray_tmp) == []
    r = subprocess.run([sys.executable, "-m", "jobs", "cost", "--lake", str(root), "--executor", "inline",
                        "--config", str(root / "_expected" / "job-config.json"), "--ip-ranges", FIXTURES],
                       cwd=REPO, env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", REPO)},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (root / "_quarantine").exists()
