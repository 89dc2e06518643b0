"""`netmon-agent`: bad input is one clear `error:` line and exit 2, never a traceback; the
health endpoint answers as the loop ticks."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from node_agent.durations import parse_duration, parse_size
from node_agent.health import Health, HealthServer, Metrics, parse_listen
from conftest import free_port

AGENT = [sys.executable, "-m", "node_agent"]


def agent(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("NETMON_", "KUBERNETES_")) and k not in ("KUBECONFIG", "NODE_NAME")}
    e["HOME"] = "/nonexistent-home"          # no ~/.kube/config to fall back on
    e.update(env or {})
    return subprocess.run(AGENT + list(args), capture_output=True, text=True, timeout=timeout, env=e,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def base(tmp_path):
    """A valid standalone command line; each test breaks one thing."""
    return ["run", "--lake", str(tmp_path / "lake"), "--node", "node-1", "--spool", str(tmp_path / "spool"),
            "--listen", "off"]


def test_missing_kubeconfig_without_standalone(base, tmp_path):
    line = one_error(agent(*base, "--kubeconfig", str(tmp_path / "nope.yaml")))
    assert "kubeconfig not found" in line and "nope.yaml" in line and "--standalone" in line


def test_no_kubernetes_config_at_all(base):
    line = one_error(agent(*base))
    assert "kubeconfig not found" in line


def test_unreachable_api_server(base, tmp_path):
    port = free_port()                        # nothing listens there
    kc = tmp_path / "kc.yaml"
    kc.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    line = one_error(agent(*base, "--kubeconfig", str(kc)))
    assert f"127.0.0.1:{port}" in line and "cannot reach" in line


def test_unwritable_spool(base, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = list(base)
    args[args.index("--spool") + 1] = str(blocker / "spool")
    line = one_error(agent(*args, "--standalone"))
    assert "spool directory" in line and "not writable" in line and "--spool" in line


def test_unknown_lake_scheme(base):
    args = list(base)
    args[args.index("--lake") + 1] = "foo://x"
    line = one_error(agent(*args, "--standalone"))
    assert "foo" in line and "scheme" in line


@pytest.mark.parametrize("flag,value", [
    ("--flush-interval", "10x"), ("--poll-interval", "soon"), ("--flush-interval", "0s"), ("--dns-ttl-cap", "-5"),
])
def test_bad_duration(base, flag, value):
    line = one_error(agent(*base, "--standalone", flag, value))
    assert flag in line and "invalid duration" in line and value in line


@pytest.mark.parametrize("value", ["500ms", "1.5s", "2500ms"])
def test_flush_interval_must_be_whole_seconds(base, value):
    """Window files are named by their start second: two windows in one second would share a name."""
    line = one_error(agent(*base, "--standalone", "--poll-interval", "100ms", "--flush-interval", value))
    assert line == f"error: --flush-interval: {value!r} must be a whole number of seconds, at least 1s"


def test_other_bad_input(base):
    assert "--spool-max-bytes" in one_error(agent(*base, "--standalone", "--spool-max-bytes", "lots"))
    assert "--listen" in one_error(agent(*base, "--standalone", "--listen", "localhost"))
    assert "must not be longer" in one_error(agent(*base, "--standalone", "--poll-interval", "2m"))
    args = list(base)
    args[args.index("--node") + 1] = "Node_1"
    assert "--node" in one_error(agent(*args, "--standalone"))
    assert "--lake is required" in one_error(agent("run", "--node", "n1", "--standalone", "--listen", "off"))


def test_env_fallbacks_are_read(tmp_path):
    line = one_error(agent("run", "--standalone", "--listen", "off", env={
        "NETMON_LAKE": "foo://x", "NODE_NAME": "node-1", "NETMON_SPOOL": str(tmp_path / "s")}))
    assert "foo" in line


def test_inventory_without_kubernetes(tmp_path):
    line = one_error(agent("inventory", "--lake", str(tmp_path / "lake"), "--spool", str(tmp_path / "spool"),
                           "--listen", "off", "--kubeconfig", str(tmp_path / "missing")))
    assert "kubeconfig not found" in line
    assert "invalid duration" in one_error(agent("inventory", "--lake", str(tmp_path), "--interval", "every minute"))


def test_durations_and_sizes():
    assert parse_duration("60s") == 60 and parse_duration("5m") == 300 and parse_duration("1h") == 3600
    assert parse_duration("90") == 90 and parse_duration("250ms") == 0.25
    assert parse_size("256Mi") == 256 << 20 and parse_size("1G") == 10**9 and parse_size("4096") == 4096
    for bad in ("", "m5", "5 minutes", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_listen("0.0.0.0:9808") == ("0.0.0.0", 9808)
    assert parse_listen("[::1]:9") == ("::1", 9) and parse_listen("off") is None


def test_healthz_follows_the_loop_and_metrics_are_prometheus_text():
    now = [100.0]
    metrics = Metrics()
    health = Health(stale_after=15, metrics=metrics, clock=lambda: now[0])
    server = HealthServer(("127.0.0.1", 0), health).start()
    base = f"http://127.0.0.1:{server.address[1]}"

    def status(path):
        try:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    try:
        assert status("/healthz") == (503, "starting\n")
        health.tick()
        assert status("/healthz")[0] == 200
        now[0] += 16
        code, body = status("/healthz")
        assert code == 503 and "stalled" in body
        health.tick()
        metrics.bytes.labels("tx").inc(1234)
        metrics.publish_collector_stats({"events": 7, "events_lost": 2, "resyncs": 1, "entries": 40})
        metrics.publish_informer_stats({"relists": 3})
        code, text = status("/metrics")
        assert code == 200
        for line in ('netmon_bytes_total{direction="tx"} 1234.0', "netmon_collector_events_total 7.0",
                     "netmon_collector_events_lost_total 2.0", "netmon_collector_resyncs_total 1.0",
                     'netmon_collector_stat{stat="entries"} 40.0', "netmon_informer_relists_total 3.0",
                     "netmon_spool_files 0.0", "netmon_upload_failures_total 0.0"):
            assert line in text.splitlines(), line
        assert status("/nope")[0] == 404
    finally:
        server.close()


def test_metrics_text_is_valid_prometheus_exposition():
    """The agent writes the exposition itself (no prometheus_client import, ~4 MiB); the
    reference parser must read it back with the same values."""
    from prometheus_client.parser import text_string_to_metric_families

    from node_agent.health import Metrics

    m = Metrics()
    m.bytes.labels("tx").inc(1234)
    m.bytes.labels("rx").inc(5)
    m.dump_seconds.observe(0.02)
    m.dump_seconds.observe(3)
    m.memory_windows.set(2)
    m.publish_collector_stats({"events": 7, "accounter_transit_flows": 3})
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert fams["netmon_bytes"].type == "counter"
    assert samples[("netmon_bytes_total", (("direction", "tx"),))] == 1234
    assert samples[("netmon_bytes_total", (("direction", "rx"),))] == 5
    assert fams["netmon_dump_duration_seconds"].type == "histogram"
    assert samples[("netmon_dump_duration_seconds_bucket", (("le", "0.025"),))] == 1
    assert samples[("netmon_dump_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    assert samples[("netmon_dump_duration_seconds_count", ())] == 2
    assert samples[("netmon_dump_duration_seconds_sum", ())] == 3.02
    assert samples[("netmon_memory_windows", ())] == 2
    assert samples[("netmon_collector_stat", (("stat", "accounter_transit_flows"),))] == 3
    assert samples[("netmon_collector_events_total", ())] == 7
