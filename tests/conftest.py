"""Shared fixtures: root detection for privileged tests, a real S3 endpoint (moto_server)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

IS_ROOT = os.geteuid() == 0
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    # Privileged tests need root. A non-root developer deselects them with -m "not privileged";
    # if they are selected anyway they skip with the reason, except in CI, where they run (and
    # fail, if CI is not root: a green CI must mean they passed).
    if IS_ROOT or IN_CI:
        return
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs root; deselect with -m 'not privileged'"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    """A real S3 HTTP endpoint on 127.0.0.1 (moto_server), which can be stopped and restarted
    on the same port to simulate an outage."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MotoS3":
        exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
        if exe is None:
            raise RuntimeError("moto_server not installed (scripts/setup.sh installs it)")
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto_server exited at start")
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def s3_env(monkeypatch):
    """Credentials and region for talking to moto (never a real account)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)


@pytest.fixture
def moto_s3(s3_env):
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def costed_lake(tmp_path_factory):
    """A small simulated lake (3 nodes, 2 hours) costed once per test session, in-process
    (the Ray path is covered by the end-to-end tests). Tests must not modify it."""
    from jobs.run import JobOptions, run_cost_job
    from simulator.simulate import simulate
    from lake.storage import open_lake

    root = tmp_path_factory.mktemp("costed") / "lake"
    lake = open_lake(str(root))
    simulate(lake, nodes=3, hours=2, seed=11)
    fixtures = os.path.join(os.path.dirname(__file__), "..", "jobs", "fixtures")
    run_cost_job(JobOptions(lake_url=str(root), executor="inline", progress=None,
                            ip_ranges_dir=os.path.abspath(fixtures)))
    return root
