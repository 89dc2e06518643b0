"""Datapath detection: does conntrack see pod traffic? Real namespaces: a node routing a pod's
traffic, once tracked and once bypassing conntrack (nft `notrack`, as eBPF datapaths do), and
counter-less entries of connections made before accounting was on."""
from __future__ import annotations

import threading
import time

import pytest

from node_agent.collectors.base import CollectorError
from node_agent.collectors.conntrack import ConntrackCollector
from node_agent.datapath import MIN_BYTES, AutoCollector, judge, pinned_dataplanes
from tests.topo import Sink, link, new_ns, router, tcp_transfer

POD, SRV = "10.89.1.2", "10.89.2.2"


# ------------------------------------------------------------------------------ unit
def test_judge_needs_traffic_and_compares_bytes():
    assert judge(MIN_BYTES - 1, 0, 3, {}).blind is None            # too little traffic to tell
    assert judge(10 * MIN_BYTES, 0, 3, {}).blind is True            # veths busy, conntrack empty
    assert judge(10 * MIN_BYTES, 4 * MIN_BYTES, 3, {}).blind is False
    v = judge(10 * MIN_BYTES, 0, 3, {"cilium": 4})
    assert "cilium (4)" in v.describe() and str(10 * MIN_BYTES) in v.describe()


def test_pinned_dataplane_maps(tmp_path):
    assert pinned_dataplanes(str(tmp_path)) == {}
    g = tmp_path / "tc" / "globals"
    g.mkdir(parents=True)
    for name in ("cilium_ct4_global", "cilium_lb4_services_v2", "cali_v4_ct3", "other_map"):
        (g / name).touch()
    assert pinned_dataplanes(str(tmp_path)) == {"cilium": 2, "calico-ebpf": 1}


# ------------------------------------------------------------------------ privileged
NOTRACK = """
table inet dpd_raw {
  chain raw_pre { type filter hook prerouting priority -300; notrack; }
  chain raw_out { type filter hook output priority -300; notrack; }
}
"""


@pytest.fixture
def node():
    p, n, s = new_ns("dpd-p"), new_ns("dpd-n"), new_ns("dpd-s")
    try:
        link(p, "eth0", f"{POD}/24", n, "vp", "10.89.1.1/24")
        link(s, "eth0", f"{SRV}/24", n, "vs", "10.89.2.1/24")
        p.run("ip", "route", "add", "default", "via", "10.89.1.1")
        s.run("ip", "route", "add", "default", "via", "10.89.2.1")
        router(n)
        n.enable_conntrack()
        sink = Sink(s, SRV, 8080)
        yield p, n, s
        sink.close()
    finally:
        for ns in (p, n, s):
            ns.delete()


class Traffic:
    """Pod -> server transfers in a loop until stopped."""

    def __init__(self, pod):
        self.stop = threading.Event()
        self.errors = []
        self.t = threading.Thread(target=self._run, args=(pod,), daemon=True)
        self.t.start()

    def _run(self, pod):
        while not self.stop.is_set():
            try:
                tcp_transfer(pod, SRV, 8080, 400_000, chunk=40_000)
            except OSError as e:
                self.errors.append(e)
                time.sleep(0.1)

    def close(self):
        self.stop.set()
        self.t.join(10)


class NoEbpf(Exception):
    pass


def ebpf_stub_factory(opened: list):
    """An eBPF collector stand-in that records it was chosen (the real one is tested in
    tests/test_ebpf_flows.py; here only the decision matters)."""
    from node_agent.collectors.base import Collector

    class Chosen(Collector):
        name = "ebpf"

        def open(self):
            opened.append(self)

        def dump(self):
            return []

        def drain_ended(self):
            return []

        def stats(self):
            return {"resyncs": 0, "events_lost": 0}

    return Chosen


@pytest.mark.privileged
def test_tracked_datapath_keeps_conntrack(node):
    p, n, _s = node
    traffic = Traffic(p)
    opened: list = []
    coll = AutoCollector("auto", lambda: ConntrackCollector(netns=n.name), ebpf_stub_factory(opened), netns=n.name)
    try:
        coll.open()
        st = coll.stats()
        assert coll.inner.name == "conntrack" and not opened
        assert st["datapath_conntrack_blind"] == 0 and st["datapath_collector_ebpf"] == 0
        assert coll.verdict.ct_bytes > 0.2 * coll.verdict.iface_bytes
    finally:
        traffic.close()
        coll.close()


@pytest.mark.privileged
def test_bypassed_conntrack_is_refused_or_switched_to_ebpf(node):
    p, n, _s = node
    n.nft(NOTRACK)
    traffic = Traffic(p)
    try:
        explicit = AutoCollector("conntrack", lambda: ConntrackCollector(netns=n.name), None, netns=n.name)
        with pytest.raises(CollectorError) as err:
            explicit.open()
        msg = str(err.value)
        assert "conntrack does not see pod traffic" in msg and "\n" not in msg and "--collector ebpf" in msg
        assert "conntrack counted 0 B" in msg
        opened: list = []
        auto = AutoCollector("auto", lambda: ConntrackCollector(netns=n.name), ebpf_stub_factory(opened), netns=n.name)
        auto.open()
        st = auto.stats()
        assert opened and auto.inner.name == "ebpf", (auto.verdict, traffic.errors)
        assert st["datapath_collector_ebpf"] == 1 and st["datapath_conntrack_blind"] == 1
        auto.close()
        # auto without a working eBPF collector: one line naming both reasons
        def broken():
            raise CollectorError("ebpf collector: kernel headers missing: /lib/modules/x/build does not exist")

        with pytest.raises(CollectorError) as err:
            AutoCollector("auto", lambda: ConntrackCollector(netns=n.name), broken, netns=n.name).open()
        assert "conntrack does not see pod traffic" in str(err.value) and "kernel headers missing" in str(err.value)
    finally:
        traffic.close()


@pytest.mark.privileged
def test_periodic_recheck_switches_when_conntrack_goes_blind(node):
    p, n, _s = node
    traffic = Traffic(p)
    opened: list = []
    coll = AutoCollector("auto", lambda: ConntrackCollector(netns=n.name), ebpf_stub_factory(opened),
                         netns=n.name, sample_seconds=1.0, recheck_seconds=0.0)
    try:
        coll.open()
        assert coll.inner.name == "conntrack"
        coll.drain_ended(); coll.dump()             # a re-check while tracked: stays
        time.sleep(1.0)
        coll.drain_ended(); coll.dump()
        assert coll.inner.name == "conntrack" and coll.stats()["datapath_checks"] == 2
        n.nft(NOTRACK)                               # the datapath changes under the agent
        time.sleep(0.5)
        coll.drain_ended(); coll.dump()
        time.sleep(1.5)
        coll.drain_ended(); coll.dump()
        st = coll.stats()
        assert coll.inner.name == "ebpf" and opened
        assert st["datapath_switches"] == 1 and st["datapath_conntrack_blind"] == 1
    finally:
        traffic.close()
        coll.close()


@pytest.mark.privileged
def test_entries_from_before_accounting_are_counted_apart(node):
    p, n, _s = node
    n.run("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=0")
    from pyroute2.netns import create_socket
    import socket

    early = create_socket(p.name, socket.AF_INET, socket.SOCK_STREAM, 0)
    early.settimeout(10)
    early.connect((SRV, 8080))
    early.sendall(b"x" * 5000)
    early.recv(100)
    coll = ConntrackCollector(netns=n.name)
    try:
        coll.open()                                  # sets acct=1 and reads it back
        assert n.run("sysctl", "-n", "net.netfilter.nf_conntrack_acct").stdout.strip() == "1"
        tcp_transfer(p, SRV, 8080, 50_000)           # a connection with counters
        samples = coll.dump()
        st = coll.stats()
        assert st["kernel_ct_acct"] == 1 and st["kernel_ct_events"] in (1, 2)
        assert st["entries_without_counters"] == 1
        from node_agent.rawmeta import WindowMeta
        assert WindowMeta().cut(coll.name, st)["netmon.entries_without_counters"] == "1"   # the window file says so
        assert early.getsockname()[1] not in {s.sport for s in samples}   # not a 0-byte flow
        assert [s for s in samples if s.orig_bytes > 50_000]
        early.close()
    finally:
        coll.close()


# ------------------------------------------------------------- window file metadata
def test_window_file_carries_the_collector_figures(tmp_path):
    """Counter-less entries, zone duplicates and tunnel bytes reach the raw/flows file's
    Parquet key/value metadata through the exporter and the spool."""
    import datetime as dt

    import pyarrow.parquet as pq

    from lake.schema import RAW_FLOWS
    from lake.storage import open_lake
    from node_agent.exporter import Exporter
    from node_agent.rawmeta import WindowMeta
    from node_agent.spool import Spool

    meta = WindowMeta()
    stats = {"entries_without_counters": 3, "ended_without_counters": 5, "zone_duplicates": 2,
             "tunnel_excluded_bytes": 1000, "kernel_ct_events": 2}
    first = meta.cut("auto", stats)
    second = meta.cut("auto", {**stats, "ended_without_counters": 6, "tunnel_excluded_bytes": 1500,
                               "datapath_collector_ebpf": 1})
    assert first == {"netmon.collector": "conntrack", "netmon.entries_without_counters": "3",
                     "netmon.ended_without_counters": "5", "netmon.zone_duplicates": "2",
                     "netmon.tunnel_excluded_bytes": "1000", "netmon.conntrack_events": "2"}
    assert second["netmon.ended_without_counters"] == "1" and second["netmon.tunnel_excluded_bytes"] == "500"
    assert second["netmon.collector"] == "ebpf"

    lake = open_lake(str(tmp_path / "lake"))
    exp = Exporter(lake, Spool(str(tmp_path / "spool"), 1 << 30), backoff_initial=0.05).start()
    ws = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    rel = exp.submit_raw("raw/flows", "node-a", ws, RAW_FLOWS.empty_table(), metadata=first)
    exp.close(timeout=10)
    md = pq.read_schema(str(tmp_path / "lake" / rel)).metadata
    assert md[b"netmon.entries_without_counters"] == b"3" and md[b"netmon.table"] == b"raw/flows"
    assert md[b"netmon.collector"] == b"conntrack"


@pytest.mark.privileged
def test_agent_refuses_a_blind_datapath_with_one_line(node, tmp_path):
    """`netmon-agent run --collector conntrack` on the node namespace whose pod traffic
    bypasses conntrack: exit 2 and one error line, before anything is written."""
    import os
    import subprocess
    import sys

    p, n, _s = node
    n.nft(NOTRACK)
    traffic = Traffic(p)
    try:
        exe = os.path.join(os.path.dirname(sys.executable), "netmon-agent")
        r = subprocess.run(n.cmd(exe, "run", "--standalone", "--node", "node-a", "--collector", "conntrack",
                                 "--lake", str(tmp_path / "lake"), "--spool", str(tmp_path / "spool"),
                                 "--listen", "off", "--no-dns"),
                           capture_output=True, text=True, timeout=120)
    finally:
        traffic.close()
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2, r.stderr
    assert len(errors) == 1 and "conntrack does not see pod traffic on this node" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.privileged
def test_agent_auto_uses_ebpf_on_a_blind_datapath_and_says_so_in_the_files(node, tmp_path):
    """`netmon-agent run` (auto) on the same node: it picks the eBPF collector (programs on a
    test cgroup of our own), runs, and its window files name the collector."""
    import glob
    import os
    import signal
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from tests.netns import TestCgroup

    p, n, _s = node
    n.nft(NOTRACK)
    cg = TestCgroup()
    traffic = Traffic(p)
    try:
        exe = os.path.join(os.path.dirname(sys.executable), "netmon-agent")
        proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{n.name}", exe, "run", "--standalone", "--node", "node-a",
             "--lake", str(tmp_path / "lake"), "--spool", str(tmp_path / "spool"), "--listen", "off", "--no-dns",
             "--cgroup-path", cg.path, "--poll-interval", "1s", "--flush-interval", "2s"],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "NETMON_BPF_PIN_DIR": ""})
        files: list = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(files) < 2 and proc.poll() is None:
            time.sleep(0.5)
            files = glob.glob(str(tmp_path / "lake" / "raw" / "flows" / "**" / "*.parquet"), recursive=True)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        traffic.close()
        cg.remove()
    assert proc.returncode == 0, err
    assert "conntrack does not see pod traffic" in err and "using the ebpf collector" in err, err
    assert files, err
    md = pq.read_schema(files[0]).metadata
    assert md[b"netmon.collector"] == b"ebpf"
