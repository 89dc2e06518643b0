"""The cost job on a real two-node Ray cluster.

Two test hosts (network namespaces this test creates, joined by a veth pair): host A runs
`ray start --head` and moto_server (the lake's S3), host B joins with `ray start --address`.
Every Ray listener lives inside those namespaces, so nothing is reachable from outside them.
The cluster uses Ray's token authentication; the job, run on host A with `--ray-address`,
must join it with the cluster's settings (never Ray's single-node mode, which refuses a
second node, nor auth turned off). Asserts that tasks ran on both nodes and that the cost
tables equal those of a local run over the same simulated lake.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pyarrow as pa
import pytest

from jobs import run as R
from lake.storage import open_lake
from simulator.simulate import simulate
from netns import make_pair, sh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANGES = os.path.join(REPO, "jobs", "fixtures")
BIN = os.path.dirname(sys.executable)
SEED, NODES, HOURS = 5, 3, 2
CELL_ROWS = 3000  # several cells per hour, so both Ray nodes get cells
GCS_PORT, S3_PORT = 6379, 5000
TABLES = ("costs/flows", "costs/namespace_hourly", "costs/workload_daily")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
               AWS_DEFAULT_REGION="us-east-1", RAY_USAGE_STATS_ENABLED="0")
    env.update(extra)
    return env


def _in(ns, *cmd: str) -> list[str]:
    # nsenter --net keeps the host's mounts (ip netns exec would remount /sys)
    return ["nsenter", f"--net=/run/netns/{ns.name}", *cmd]


def _kill_netns_processes(ns) -> None:
    """Stop what this test started in its namespace (and only that): by pid, never by name."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _ns_pids(ns)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = _ns_pids(ns)
            time.sleep(0.2)
        if not pids:
            return


def _tails(tmp: str) -> str:
    out = []
    for name in sorted(os.listdir(tmp)):
        if name.endswith(".log"):
            with open(os.path.join(tmp, name), errors="replace") as f:
                out.append(f"--- {name}\n" + "".join(f.readlines()[-15:]))
    return "\n".join(out)


def _cost_cli(prefix: list[str], lake_url: str, cfg: str, *extra: str, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run([*prefix, sys.executable, "-m", "jobs", "cost", "--lake", lake_url, "--config", cfg,
                        "--ip-ranges", RANGES, *extra], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, f"cost job failed:\n{r.stdout}\n{r.stderr[-4000:]}"
    return r


COPY_OUT = """
import sys
from jobs import run as R
from lake.storage import open_lake
src = open_lake(sys.argv[1], s3_endpoint=sys.argv[2])
dst = open_lake(sys.argv[3])
for table in sys.argv[4:]:
    for info in src.list_files(table):
        rel = src.rel(info.path)
        dst.write_bytes(rel, src.read_bytes(rel))
"""


def _ns_pids(ns) -> list[int]:
    return [int(p) for p in sh("ip", "netns", "pids", ns.name, check=False).stdout.split()]


def _set_group_nice(pid: int | str, nice: int) -> None:
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass  # no autogroup scheduling on this kernel: nothing to raise or restore


def _boosted_group() -> None:
    os.setsid()
    _set_group_nice("self", -10)


def _start_ray(ns, args: list[str], env: dict, log_path: str, keep: set[int]) -> subprocess.Popen:
    """`ray start ... --block` in `ns`, until it reports the node up. On a loaded machine a
    node's start can miss Ray's fixed 15-30 s start-up windows: then its processes (all in this
    test's namespace, except `keep`) are killed by pid and the start is tried again. The node's
    processes get a scheduler group of their own (a session: the kernel's autogroup) at a raised
    priority while they start (the windows are fixed), set back to normal once the node is up."""
    for attempt in range(3):
        with open(log_path, "w") as log:
            p = subprocess.Popen(_in(ns, os.path.join(BIN, "ray"), "start", *args), preexec_fn=_boosted_group,
                                 env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 240
        while p.poll() is None and time.monotonic() < deadline:
            with open(log_path, errors="replace") as f:
                if "will now block forever" in f.read():
                    _set_group_nice(p.pid, 0)
                    return p
            time.sleep(0.5)
        for pid in set(_ns_pids(ns)) - keep:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait(30)
        with open(log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-5:])
        print(f"ray start in {ns.name} failed (attempt {attempt + 1}):\n{tail}")
    raise AssertionError(f"ray start in {ns.name} failed three times; last log:\n{tail}")


@pytest.fixture
def cluster():
    a, b = make_pair("bench-ray")
    tmp = tempfile.mkdtemp(prefix="rb-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    token = uuid.uuid4().hex + uuid.uuid4().hex
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    procs = []
    try:
        head_ip, worker_ip = a.addrs["ipv4"], b.addrs["ipv4"]
        moto = shutil.which("moto_server", path=BIN) or shutil.which("moto_server")
        with open(os.path.join(tmp, "moto.log"), "w") as log:
            procs.append(subprocess.Popen(_in(a, moto, "-H", head_ip, "-p", str(S3_PORT)), env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
        # Fixed agent ports (each namespace has its own): fewer port files for the raylet to wait for.
        common = ["--num-cpus", "1", "--object-store-memory", str(200 << 20), "--disable-usage-stats",
                  "--metrics-export-port", "8081", "--dashboard-agent-listen-port", "52365",
                  "--dashboard-agent-grpc-port", "8082", "--runtime-env-agent-port", "8083", "--block"]
        address = f"{head_ip}:{GCS_PORT}"
        procs.append(_start_ray(a, ["--head", "--node-ip-address", head_ip, "--port", str(GCS_PORT),
                                    "--include-dashboard", "false", "--temp-dir", tmp, *common],
                                env, os.path.join(tmp, "head.log"), keep={procs[0].pid}))
        procs.append(_start_ray(b, ["--address", address, "--node-ip-address", worker_ip, *common],
                                env, os.path.join(tmp, "worker.log"), keep=set()))
        count_nodes = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                       "print(sum(n['Alive'] for n in ray.nodes()))")
        r = subprocess.run(_in(a, sys.executable, "-c", count_nodes, address), env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and r.stdout.strip().endswith("2"), f"{r.stdout}{r.stderr[-2000:]}\n{_tails(tmp)}"
        yield {"a": a, "b": b, "address": address, "env": env, "tmp": tmp,
               "s3": f"http://{head_ip}:{S3_PORT}", "ips": (head_ip, worker_ip)}
    finally:
        for ns in (b, a):
            _kill_netns_processes(ns)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        a.delete()
        b.delete()
        if os.environ.get("NETMON_KEEP_RAY_LOGS"):
            print(f"Ray logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.privileged
@pytest.mark.slow
def test_cost_job_runs_on_a_two_node_ray_cluster(cluster, tmp_path):
    a, env = cluster["a"], cluster["env"]
    # the same simulated lake twice: on moto S3 (host A) for the cluster, in a directory locally
    local = open_lake(str(tmp_path / "local"))
    simulate(local, NODES, HOURS, SEED)
    cfg = tmp_path / "job-config.json"
    cfg.write_bytes(local.read_bytes("_expected/job-config.json"))
    url = "s3://netmon-bench/lake"
    r = subprocess.run(_in(a, sys.executable, "-m", "jobs", "simulate", "--lake", url, "--s3-endpoint", cluster["s3"],
                           "--nodes", str(NODES), "--hours", str(HOURS), "--seed", str(SEED)),
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]

    r = _cost_cli(_in(a), url, str(cfg), "--s3-endpoint", cluster["s3"], "--ray-address", cluster["address"],
                  "--cell-rows", str(CELL_ROWS), env=env)
    assert f"{HOURS} hour(s) computed" in r.stdout
    line = next(x for x in r.stderr.splitlines() if x.startswith("cost: tasks per Ray node: "))
    per_node = {ip: (node_id, int(n)) for ip, node_id, n in re.findall(r"([\d.]+) ([0-9a-f]{20,}) (\d+)", line)}
    assert set(per_node) == set(cluster["ips"]), line  # both Ray nodes did work
    assert len({nid for nid, _ in per_node.values()}) == 2
    assert all(n > 0 for _, n in per_node.values())

    # a local run over the same lake (the same task functions, in this process) gives the same tables
    R.run_cost_job(R.JobOptions(lake_url=local.url, config_path=str(cfg), ip_ranges_dir=RANGES, executor="inline",
                                cell_rows=CELL_ROWS, progress=None))
    copy = open_lake(str(tmp_path / "from-s3"))
    r = subprocess.run(_in(a, sys.executable, "-c", COPY_OUT, url, cluster["s3"], copy.url, *TABLES),
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for table in TABLES:
        theirs = sorted(copy.rel(i.path) for i in copy.list_files(table))
        ours = sorted(local.rel(i.path) for i in local.list_files(table))
        assert theirs == ours and ours, table
        for rel in ours:
            assert copy.read_table(rel).equals(local.read_table(rel)), rel


def test_joining_by_address_leaves_ray_settings_alone(tmp_path):
    """Single-node mode and the auth opt-out are for the local Ray the job starts, never for a
    cluster it joins: with an address (here one nobody listens on) they stay unset."""
    code = ("import os, json\nfrom jobs.executors import RayExecutor\nfrom jobs.errors import JobError\n"
            "try:\n    RayExecutor('127.0.0.1:1', 1)\nexcept JobError as e:\n    err = str(e)\n"
            "print(json.dumps([err, os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'), "
            "os.environ.get('RAY_AUTH_MODE')]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    err, single, auth = json.loads(r.stdout.strip().splitlines()[-1])
    assert err.startswith("cannot start or reach Ray at 127.0.0.1:1")
    assert single is None and auth is None
