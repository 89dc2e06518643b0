"""netmon-jobs CLI and the cost job on local Ray (the same lake as test_jobs_load_state)."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from jobs import cli
from jobs import run as R
from jobs import commit as C
from lake import schema as S
from test_jobs_load_state import GB, H0, S3_IP, all_costs, class_cost, egress_cost, flows
from test_jobs_load_state import lake  # noqa: F401 - fixture
from lake.storage import open_lake
from lake.writer import write_raw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env=None):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------- CLI errors (fast)

@pytest.mark.parametrize("args, needle", [
    (["cost"], "--lake is required"),
    (["cost", "--lake", "/tmp/x", "--start", "yesterday"], "invalid time 'yesterday'"),
    (["cost", "--lake", "s3://ab/lake"], "invalid S3 bucket name"),
    (["cost", "--lake", "/tmp/x", "--start", "2026-03-02T10:00", "--end", "2026-03-02T09:00"], "is not after"),
    (["cost", "--lake", "/tmp/x", "--cell-rows", "0"], "invalid --cell-rows '0'"),
])
def test_bad_input_gives_one_error_line_and_exit_2(args, needle, capsys, tmp_path):
    args = [a.replace("/tmp/x", str(tmp_path / "x")) for a in args]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]


def test_bad_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rules:\n  - {cidr: 10.0.0.0/33, class: peering}\n")
    assert cli.main(["cost", "--lake", str(tmp_path / "lk"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid CIDR" in err[0]


def test_missing_ip_ranges_dir_is_one_line(tmp_path, capsys):
    assert cli.main(["cost", "--lake", str(tmp_path / "lk"), "--ip-ranges", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_lake_from_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NETMON_LAKE", str(tmp_path / "envlake"))
    assert cli.main(["cost", "--quiet"]) == 0  # empty lake: nothing to do, no Ray started
    assert "0 hour(s) computed" in capsys.readouterr().out
    assert (tmp_path / "envlake").is_dir()


def test_time_parsing():
    assert cli.parse_time("2026-03-02") == dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc)
    assert cli.parse_time("2026-03-02T10:30Z") == dt.datetime(2026, 3, 2, 10, 30, tzinfo=dt.timezone.utc)
    assert cli.parse_time("2026-03-02T12:30+02:00") == dt.datetime(2026, 3, 2, 10, 30, tzinfo=dt.timezone.utc)


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "cost" in capsys.readouterr().err


# --------------------------------------------------------------------- on local Ray (slow)

@pytest.mark.slow
def test_cli_on_local_ray_matches_inline_and_is_incremental(lake, tmp_path):  # noqa: F811

    twin_dir = tmp_path / "twin"
    shutil.copytree(lake.root, twin_dir)
    twin = open_lake(str(twin_dir))
    R.run_cost_job(R.JobOptions(lake_url=twin.url, executor="inline", progress=None))

    r = run_cli("cost", "--lake", lake.url)
    assert r.returncode == 0, r.stderr
    assert "3 hour(s) computed" in r.stdout and "by class:" in r.stdout and "top namespaces" in r.stdout
    assert "internet_egress" in r.stdout and "files quarantined: 0" in r.stdout
    assert "hours written" in r.stderr  # progress
    assert "Traceback" not in r.stderr
    costs = all_costs(lake)
    assert class_cost(costs, "internet_egress") == pytest.approx(egress_cost(140 * GB))
    assert class_cost(costs, "cross_zone") == pytest.approx(4 * 0.01 * 2)
    for table in ("costs/flows", "costs/namespace_hourly", "costs/workload_daily"):
        ours = sorted(lake.rel(i.path) for i in lake.list_files(table))
        assert ours == sorted(twin.rel(i.path) for i in twin.list_files(table))
        for rel in ours:  # Ray and in-process runs write identical tables
            assert pq.read_table(lake.path(rel)).equals(pq.read_table(twin.path(rel))), rel

    late = H0 + dt.timedelta(minutes=30)
    write_raw(lake, "raw/flows", "n2", late, flows(late, "n2", [("10.0.2.1", S3_IP, 20 * GB, 0)]))
    r = run_cli("cost", "--lake", lake.url, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "1 hour(s) computed, 1 re-tiered" in r.stdout  # H2 stays at $0.09/GB: not rewritten
    assert class_cost(all_costs(lake), "internet_egress") == pytest.approx(egress_cost(160 * GB))
    assert C.read_record(lake, H0).rows_in == 3

    r = run_cli("cost", "--lake", lake.url, "--quiet")
    assert r.returncode == 0 and "0 hour(s) computed, 0 re-tiered" in r.stdout


@pytest.mark.slow
def test_cost_job_joins_an_existing_ray_cluster_by_address(lake):  # noqa: F811
    """--ray-address: the job connects as a driver to a running cluster (here: one this test
    starts on loopback) instead of starting its own."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:")
        r = run_cli("cost", "--lake", lake.url, "--ray-address", address, "--quiet")
        assert r.returncode == 0, r.stderr
        assert "3 hour(s) computed" in r.stdout
        assert class_cost(all_costs(lake), "internet_egress") == pytest.approx(egress_cost(140 * GB))
        assert ray.is_initialized()  # the job did not shut down a cluster it did not start
    finally:
        ray.shutdown()


def test_unreachable_ray_address_is_one_error_line(lake, capsys):  # noqa: F811
    port = __import__("socket").socket()
    port.bind(("127.0.0.1", 0))
    addr = f"127.0.0.1:{port.getsockname()[1]}"
    port.close()
    r = run_cli("cost", "--lake", lake.url, "--ray-address", addr, "--quiet")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("error: cannot start or reach Ray at " + addr), r.stderr[-2000:]
