"""End to end: a real `netmon-agent run` process counting real kernel conntrack in a network
namespace, flushing to a real S3 endpoint that goes down mid-run, restarted mid-outage.

Topology (tests/netns.py): client namespace `a` (10.77.0.1, fd77::1) and server namespace `b`
(10.77.0.2, fd77::2) on a veth pair. The agent runs inside `a` (as a hostNetwork DaemonSet
pod runs in the node's namespace), and so does moto_server, on a's own loopback, because a
process in `a` cannot reach the root namespace's 127.0.0.1. An nft DNAT rule in `a` makes
10.96.0.10 a "ClusterIP" for the server. Conntrack timeouts in `a` are cut to seconds, so
most connections end (DESTROY events) while the test runs, between two polls or across a
window boundary.

The kernel's own numbers are the truth: `conntrack -E` records every DESTROY with its final
counters, `conntrack -L` the connections still alive at the end. The lake must hold exactly
those bytes and packets, per (protocol, dialed address, dialed port), and for UDP also
exactly the payload sizes sent plus the IP/UDP headers.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict

import pytest

from conftest import free_port
from lake_totals import flow_files, flow_rows, sum_counters
from netns import Netns, TestCgroup, make_pair

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
BUCKET = "netmon-e2e"
CLUSTER_IP = "10.96.0.10"
FLUSH = 5  # seconds; windows are aligned to multiples of it
SOURCES = {"10.77.0.1", "fd77::1"}
TARGETS = {"10.77.0.2", "fd77::2", CLUSTER_IP}

SERVER = r"""
import socket, threading
def handle(c):
    n = 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        n += len(d)
    c.sendall(b"r" * (n // 10))   # reply: a tenth of what was received
    c.close()
def tcp(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 8080)); s.listen(256)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()
def udp(fam, addr):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 8081))
    while True:
        d, peer = s.recvfrom(65536)
        s.sendto(d[:100], peer)   # reply: at most 100 bytes
for f, a in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for fn in (tcp, udp):
        threading.Thread(target=fn, args=(f, a), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import json, socket, sys, threading, time
ops = json.loads(sys.argv[1])
def fam(h): return socket.AF_INET6 if ":" in h else socket.AF_INET
def tcp(o):
    s = socket.socket(fam(o["host"]), socket.SOCK_STREAM)
    if o.get("bind"): s.bind((o["bind"], 0))
    s.connect((o["host"], o["port"]))
    chunks = o.get("chunks", [o.get("size", 0)])
    for i, n in enumerate(chunks):
        s.sendall(b"x" * n)
        if o.get("every") and i < len(chunks) - 1: time.sleep(o["every"])
    s.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        d = s.recv(65536)
        if not d: break
        got += len(d)
    s.close()
    assert got == sum(chunks) // 10, (got, chunks)
def udp(o):
    s = socket.socket(fam(o["host"]), socket.SOCK_DGRAM)
    if o.get("bind"): s.bind((o["bind"], 0))
    s.settimeout(5)
    for n in o["sizes"]:
        s.sendto(b"u" * n, (o["host"], o["port"]))
        d, _ = s.recvfrom(65536)
        assert len(d) == min(n, 100)
    s.close()
threads = []
for o in ops:
    fn = tcp if o["op"] == "tcp" else udp
    if o.get("background"):
        t = threading.Thread(target=fn, args=(o,)); t.start(); threads.append(t)
    else:
        fn(o)
for t in threads: t.join()
print("done", flush=True)
"""

READ_LAKE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from lake.storage import open_lake
print("ready", flush=True)
for line in sys.stdin:              # one request per line: URL ENDPOINT
    url, endpoint = line.split()
    lake = open_lake(url, s3_endpoint=endpoint, create_bucket=False)
    out = {}
    for f in lake.list_files("raw/flows"):
        t = lake.read_table(f.path)
        out[lake.rel(f.path)] = t.drop_columns(["window_start", "window_end"]).to_pylist()
    print(json.dumps(out), flush=True)
"""

CREATE_BUCKET = r"""
import sys
sys.path.insert(0, sys.argv[3])
from lake.storage import open_lake
lake = open_lake(sys.argv[1], s3_endpoint=sys.argv[2], create_bucket=True)
lake.check_writable()
"""

_CT_KV = re.compile(r"(\w+)=(\S+)")


# ------------------------------------------------------------------------------ helpers


def in_netns(ns: Netns, fn, *args):
    """Run fn in a thread switched into `ns` (setns affects only the calling thread);
    sockets it creates stay in that namespace."""
    box = {}

    def target():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{ns.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            box["v"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["e"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box.get("v")


class NetnsMoto:
    """moto_server on a namespace's loopback; stop()/start() keep the port (objects are lost,
    as moto keeps them in memory)."""

    def __init__(self, ns: Netns):
        self.ns = ns
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> "NetnsMoto":
        exe = shutil.which("moto_server", path=os.path.dirname(PY)) or shutil.which("moto_server")
        self.proc = self.ns.popen(exe, "-H", "127.0.0.1", "-p", str(self.port),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                in_netns(self.ns, lambda: urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).read())
                return self
            except OSError:
                assert self.proc.poll() is None, "moto_server exited at start"
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class AgentProc:
    def __init__(self, ns: Netns, args: list[str], log_path: str, env: dict, keep_sys: bool = False):
        self.log_path = log_path
        self.log = open(log_path, "a")
        cmd = [PY, "-m", "node_agent", *args]
        if keep_sys:
            # `ip netns exec` remounts /sys (hiding the cgroup2 mount the DNS tracer needs);
            # nsenter only switches the network namespace.
            cmd = ["nsenter", f"--net=/var/run/netns/{ns.name}", *cmd]
        else:
            cmd = ns.cmd(*cmd)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, cwd=REPO, env=env)

    def text(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_for(self, pattern: str, timeout: float = 60, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.text())) >= count:
                return
            assert self.proc.poll() is None, f"agent exited {self.proc.returncode}:\n{self.text()}"
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {pattern!r} in the agent log:\n{self.text()}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        self.log.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def setup_namespaces(prefix: str = "nmag") -> tuple[Netns, Netns]:
    a, b = make_pair(prefix)
    try:
        for ns in (a, b):
            ns.enable_conntrack()
        # Short conntrack timeouts: connections end (DESTROY) while the test runs.
        for key, val in (("tcp_timeout_time_wait", 2), ("tcp_timeout_close", 2), ("tcp_timeout_fin_wait", 2),
                         ("tcp_timeout_last_ack", 2), ("udp_timeout", 2), ("udp_timeout_stream", 3)):
            a.run("sysctl", "-qw", f"net.netfilter.nf_conntrack_{key}={val}")
        a.run("ip", "route", "add", "10.96.0.0/16", "via", "10.77.0.2")
        a.nft(f"""
table ip netmon_test_nat {{
  chain out {{
    type nat hook output priority -100;
    ip daddr {CLUSTER_IP} tcp dport 80 dnat to 10.77.0.2:8080
    ip daddr {CLUSTER_IP} udp dport 53 dnat to 10.77.0.2:8081
  }}
}}
""")
    except Exception:
        a.delete()
        b.delete()
        raise
    return a, b


def traffic(ns: Netns, ops: list[dict]) -> None:
    out = ns.run(PY, "-c", CLIENT, json.dumps(ops), check=False)
    assert out.returncode == 0 and "done" in out.stdout, out.stderr


def phase_ops(seed: int, src: str | None = None) -> list[dict]:
    """Short TCP (v4, v6, via the ClusterIP), UDP with known sizes, and one long TCP
    connection that spans window boundaries."""
    b = {"bind": src} if src else {}
    ops = [{"op": "tcp", "host": "10.77.0.2", "port": 8080, "chunks": [300, 5000, 900], "every": 1.1,
            "background": True, **b}]
    for i in range(12):
        ops.append({"op": "tcp", "host": "10.77.0.2", "port": 8080, "size": 1000 + 137 * i + seed, **b})
        ops.append({"op": "tcp", "host": CLUSTER_IP, "port": 80, "size": 2000 + 71 * i + seed, **b})
    if not src:
        for i in range(6):
            ops.append({"op": "tcp", "host": "fd77::2", "port": 8080, "size": 700 + 13 * i + seed})
        ops.append({"op": "udp", "host": "fd77::2", "port": 8081, "sizes": [50 + seed, 400, 1200]})
    ops.append({"op": "udp", "host": "10.77.0.2", "port": 8081, "sizes": [10 + seed, 99, 100, 101, 1400], **b})
    ops.append({"op": "udp", "host": CLUSTER_IP, "port": 53, "sizes": [60 + seed, 512], **b})
    return ops


def udp_expected(ops_by_phase) -> dict[tuple, tuple[int, int, int, int]]:
    """(dialed ip, dialed port) -> tx bytes, tx packets, rx bytes, rx packets for UDP: payload
    plus 28 (IPv4) or 48 (IPv6) header bytes per datagram, replies capped at 100 bytes."""
    exp = defaultdict(lambda: [0, 0, 0, 0])
    for ops in ops_by_phase:
        for o in ops:
            if o["op"] != "udp":
                continue
            hdr = 48 if ":" in o["host"] else 28
            e = exp[(o["host"], o["port"])]
            for n in o["sizes"]:
                e[0] += n + hdr
                e[1] += 1
                e[2] += min(n, 100) + hdr
                e[3] += 1
    return {k: tuple(v) for k, v in exp.items()}


def parse_conntrack(text: str) -> dict[tuple, dict]:
    """`conntrack -E`/`-L -o extended,id` lines -> {(id, proto, src, dst, sport, dport): counters}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if "src=" not in line or "bytes=" not in line:
            continue
        # layer-4 protocol number is the token after the protocol name
        proto = None
        for i, tok in enumerate(parts):
            if tok in ("tcp", "udp"):
                proto = int(parts[i + 1])
                break
        if proto is None:
            continue
        kv = _CT_KV.findall(line)
        orig, reply, ident = {}, {}, None
        for k, v in kv:
            if k == "id":
                ident = int(v)
            elif k in orig and k in ("src", "dst", "sport", "dport", "packets", "bytes"):
                reply.setdefault(k, v)
            else:
                orig.setdefault(k, v)
        key = (ident, proto, orig["src"], orig["dst"], int(orig["sport"]), int(orig["dport"]))
        out[key] = {"proto": proto, "orig_dst": orig["dst"], "dport": int(orig["dport"]), "peer": reply["src"],
                    "peer_port": int(reply["sport"]),
                    "tx_bytes": int(orig["bytes"]), "tx_packets": int(orig["packets"]),
                    "rx_bytes": int(reply["bytes"]), "rx_packets": int(reply["packets"])}
    return out


def sums_by_dialed(rows) -> dict[tuple, tuple[int, int, int, int]]:
    return sum_counters(rows, lambda r: (r["proto"], r["orig_dst"], r["dport"], r["peer"], r["peer_port"]))


def lake_rows_as_kernel(files: dict[str, list[dict]], sources: set[str]) -> list[dict]:
    rows = []
    for recs in files.values():
        for r in recs:
            if r["src_ip"] in sources and r["proto"] in (6, 17):
                assert r["direction"] == "outbound"
                rows.append({"proto": r["proto"], "orig_dst": r["orig_dst_ip"], "dport": r["orig_dst_port"],
                             "peer": r["dst_ip"], "peer_port": r["dst_port"],
                             "tx_bytes": r["tx_bytes"], "tx_packets": r["tx_packets"],
                             "rx_bytes": r["rx_bytes"], "rx_packets": r["rx_packets"]})
    return rows


class LakeReader:
    """A reader process inside the namespace (pyarrow imported once, so a read is quick)."""

    def __init__(self, ns: Netns):
        self.proc = ns.popen(PY, "-c", READ_LAKE, REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def read(self, url: str, endpoint: str) -> dict[str, list[dict]]:
        self.proc.stdin.write(f"{url} {endpoint}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())


def sleep_to_phase(offset: float) -> None:
    """Sleep until `offset` seconds after the next window boundary (keeps moto stops away
    from the instants at which the agent uploads)."""
    now = time.time()
    target = (int(now // FLUSH) + 1) * FLUSH + offset
    if target - now > FLUSH:
        target -= FLUSH
    time.sleep(max(0.0, target - now))


def metrics_text(ns: Netns, port: int) -> str:
    return in_netns(ns, lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, name
    return float(m[1])


# ------------------------------------------------------------------------------ tests


@pytest.mark.privileged
def test_every_byte_reaches_the_lake_exactly_once_through_an_outage_and_a_restart(tmp_path, s3_env):
    a, b = setup_namespaces()
    procs = []
    agent = moto = None
    try:
        events = open(tmp_path / "ct-events.txt", "w")
        ev_err = open(tmp_path / "ct-events.err", "w")
        ev = a.popen("stdbuf", "-oL", "conntrack", "-E", "-e", "DESTROY", "-o", "extended,id",
                     stdout=events, stderr=ev_err)
        procs.append(ev)
        server = b.popen(PY, "-c", SERVER, stdout=subprocess.PIPE, text=True)
        procs.append(server)
        assert server.stdout.readline().strip() == "ready"
        moto = NetnsMoto(a).start()
        reader = LakeReader(a)
        procs.append(reader.proc)
        url = f"s3://{BUCKET}/lake"
        spool = str(tmp_path / "spool")
        hport = free_port()
        args = ["run", "--standalone", "--collector", "conntrack", "--lake", url, "--s3-endpoint", moto.endpoint,
                "--node", "node-a", "--poll-interval", "1s", "--flush-interval", f"{FLUSH}s", "--spool", spool,
                "--listen", f"127.0.0.1:{hport}", "--no-dns", "--upload-retry-max", "2s"]
        env = dict(os.environ)
        log = str(tmp_path / "agent.log")
        phases = []

        # 1. storage up
        agent = AgentProc(a, args, log, env)
        agent.wait_for("agent running")
        phases.append(phase_ops(1))
        traffic(a, phases[-1])
        agent.wait_for(r"uploaded raw/flows", count=2, timeout=30)
        sleep_to_phase(1.0)                      # mid-window: no upload is due now
        before = reader.read(url, moto.endpoint)
        moto.stop()
        uploaded_before = set(re.findall(r"uploaded (raw/flows/\S+)", agent.text()))
        assert uploaded_before == set(before), "an upload raced the outage; the test cannot verify it"

        # 2. storage down, traffic continues, windows spool
        phases.append(phase_ops(2))
        traffic(a, phases[-1])
        agent.wait_for("upload to the lake failed", timeout=30)
        time.sleep(1.0)                          # the last packets of the phase are polled
        assert agent.terminate() == 0            # SIGTERM: partial window spooled
        text = agent.text()
        assert "stay in the spool" in text
        spooled = sorted(n for n in os.listdir(spool) if n.endswith(".parquet"))
        assert len(spooled) >= 2, text

        # 3. a new agent process while storage is still down: it keeps the old spool
        agent = AgentProc(a, args, log, env)
        agent.wait_for("agent running", count=2)
        assert "from an earlier run" in agent.text()
        phases.append(phase_ops(3))
        traffic(a, phases[-1])
        agent.wait_for("upload to the lake failed", count=2, timeout=30)   # the new process saw the outage too

        # 4. storage back (moto restarts empty: the operator's bucket is recreated)
        moto.start()
        a.run(PY, "-c", CREATE_BUCKET, url, moto.endpoint, REPO)
        phases.append(phase_ops(4))
        traffic(a, phases[-1])
        time.sleep(1.0)
        deadline = time.monotonic() + 60
        while any(n.endswith(".parquet") for n in os.listdir(spool)):
            assert time.monotonic() < deadline, f"spool not drained:\n{agent.text()}"
            time.sleep(0.2)
        mtext = metrics_text(a, hport)
        assert metric(mtext, "netmon_upload_failures_total") >= 1
        assert metric(mtext, "netmon_spool_dropped_total") == 0
        assert metric(mtext, "netmon_last_successful_flush_timestamp_seconds") > time.time() - 60
        assert agent.terminate() == 0
        assert not any(n.endswith(".parquet") for n in os.listdir(spool))
        after = reader.read(url, moto.endpoint)
        moto.stop()
        # The kernel's record of every test connection: ended ones from the DESTROY log, the
        # rest from a final listing. An entry past its timeout is hidden from listings until
        # the kernel reaps it (then its DESTROY comes), so wait until every connection the
        # client made is accounted for.
        n_conns = sum(1 for ops in phases for o in ops)
        deadline = time.monotonic() + 120
        while True:
            live = a.run("conntrack", "-L", "-o", "extended,id", check=False).stdout
            kernel = {**parse_conntrack((tmp_path / "ct-events.txt").read_text()), **parse_conntrack(live)}
            n_seen = sum(1 for k in kernel if k[2] in SOURCES and k[3] in TARGETS)
            if n_seen >= n_conns or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        ev.send_signal(signal.SIGINT)
        ev.wait(10)
        events.close()
    finally:
        if agent is not None:
            agent.kill()
        if moto is not None:
            moto.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        a.delete()
        b.delete()

    assert "ENOBUFS" not in (tmp_path / "ct-events.err").read_text()
    # Exactly once: nothing uploaded before the outage was uploaded again after it, and the
    # window files of both agent processes are distinct (a restart never reuses a window name).
    assert set(before).isdisjoint(after)
    files = {**before, **after}
    log_text = open(log).read()
    cut = re.findall(r"-> (raw/flows/\S+)", log_text)
    assert len(cut) == len(set(cut)) == len(files), (sorted(cut), sorted(files))
    assert set(cut) == set(files)

    assert n_seen == n_conns, f"the kernel reported {n_seen} of the client's {n_conns} connections"
    kernel_rows = [v for k, v in kernel.items() if k[2] in SOURCES and k[3] in TARGETS]
    lake_rows = lake_rows_as_kernel(files, SOURCES)
    got, want = sums_by_dialed(lake_rows), sums_by_dialed(kernel_rows)
    assert got == want
    # ... and the kernel saw what the client sent: per phase 1 long + 24 short v4 + 6 v6 TCP
    # connections, every UDP datagram with its exact size.
    tcp_conns = Counter((k[3], k[5]) for k in kernel if k[1] == 6 and k[2] in SOURCES and k[3] in TARGETS)
    assert tcp_conns == {("10.77.0.2", 8080): 4 * 13, (CLUSTER_IP, 80): 4 * 12, ("fd77::2", 8080): 4 * 6}
    udp_got = {(k[1], k[2]): v for k, v in got.items() if k[0] == 17}
    assert udp_got == udp_expected(phases)
    # The ClusterIP rows name both what was dialed and who answered (post-NAT).
    assert (6, CLUSTER_IP, 80, "10.77.0.2", 8080) in got and (17, CLUSTER_IP, 53, "10.77.0.2", 8081) in got
    # TCP carried at least the payload (plus headers, handshakes, ACKs).
    payload = sum(sum(o.get("chunks", [o.get("size", 0)])) for ops in phases for o in ops if o["op"] == "tcp")
    tcp_tx = sum(v[0] for k, v in got.items() if k[0] == 6)
    assert payload < tcp_tx < payload + 200 * sum(v[1] for k, v in got.items() if k[0] == 6)


def kube_pod(name, ns, node, ips, host_network=False):
    return {
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": i} for i in ips]},
    }


@pytest.mark.privileged
def test_pod_enrichment_from_the_api_server(tmp_path):
    from fake_apiserver import FakeApiServer

    a, b = setup_namespaces()
    procs = []
    agent = None
    api = FakeApiServer()
    try:
        # Two "pod IPs" on the client namespace besides its node address 10.77.0.1.
        for ip in ("10.77.0.11", "10.77.0.12"):
            a.run("ip", "addr", "add", f"{ip}/24", "dev", a.dev)
        in_netns(a, api.start)                   # the API server listens on a's loopback
        api.create("pods", kube_pod("client-0", "shop", "node-a", ["10.77.0.11"]))
        api.create("pods", kube_pod("echo-0", "tools", "node-a", ["10.77.0.12"]))
        api.create("pods", kube_pod("node-exporter-x", "monitoring", "node-a", ["10.77.0.1"], host_network=True))
        api.create("pods", kube_pod("db-0", "db", "node-b", ["10.77.0.2"]))   # another node
        kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
        for ns in (a, b):                        # servers: b (remote node) and a (the echo pod)
            p = ns.popen(PY, "-c", SERVER, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().strip() == "ready"
        lake = tmp_path / "lake"
        agent = AgentProc(a, ["run", "--node", "node-a", "--kubeconfig", kubeconfig, "--lake", str(lake),
                              "--spool", str(tmp_path / "spool"), "--poll-interval", "1s", "--flush-interval", "5s",
                              "--listen", "off", "--no-dns"], str(tmp_path / "agent.log"), dict(os.environ))
        agent.wait_for("agent running")
        traffic(a, [
            {"op": "tcp", "host": "10.77.0.2", "port": 8080, "size": 5000, "bind": "10.77.0.11"},
            {"op": "tcp", "host": "10.77.0.12", "port": 8080, "size": 3000, "bind": "10.77.0.11"},
            {"op": "tcp", "host": "10.77.0.2", "port": 8080, "size": 4000, "bind": "10.77.0.1"},
            {"op": "udp", "host": CLUSTER_IP, "port": 53, "sizes": [64], "bind": "10.77.0.11"},
        ])
        time.sleep(1.0)
        assert agent.terminate() == 0, agent.text()
    finally:
        if agent is not None:
            agent.kill()
        for p in procs:
            p.kill()
            p.wait()
        api.stop()
        a.delete()
        b.delete()

    assert flow_files(lake, "node-a")
    rows = [r for r in flow_rows(lake, "node-a") if r["src_ip"].startswith("10.77.")]
    key = lambda r: (r["src_ip"], r["orig_dst_ip"], r["proto"], r["src_pod"], r["src_namespace"], r["dst_pod"], r["dst_namespace"])  # noqa: E731
    by = {k: [v[0], None] for k, v in sum_counters(rows, key).items()}
    for r in rows:
        by[key(r)][1] = r["direction"]
    got = {k: v[1] for k, v in by.items()}
    assert got == {
        # a pod on this node talking to a pod on another node: only the source is ours
        ("10.77.0.11", "10.77.0.2", 6, "client-0", "shop", None, None): "outbound",
        # pod to pod on this node: both sides named
        ("10.77.0.11", "10.77.0.12", 6, "client-0", "shop", "echo-0", "tools"): "outbound",
        # the node's own address is also a hostNetwork pod's: attributed to the node, not the pod
        ("10.77.0.1", "10.77.0.2", 6, None, None, None, None): "outbound",
        # via the ClusterIP
        ("10.77.0.11", CLUSTER_IP, 17, "client-0", "shop", None, None): "outbound",
    }
    for (src, dst, proto, *_), (tx, _) in by.items():
        payload = {("10.77.0.11", "10.77.0.2"): 5000, ("10.77.0.11", "10.77.0.12"): 3000,
                   ("10.77.0.1", "10.77.0.2"): 4000, ("10.77.0.11", CLUSTER_IP): 64}[(src, dst)]
        if proto == 17:
            assert tx == payload + 28
        else:
            assert payload < tx < payload + 1000


def test_inventory_snapshots_from_the_api_server(tmp_path):
    from fake_apiserver import FakeApiServer
    import pyarrow.parquet as pq

    api = FakeApiServer().start()
    proc = None
    try:
        api.create("pods", kube_pod("web-7d9f8b6c5-abcde", "shop", "node-a", ["10.244.1.5", "fd00::5"]))
        api.create("pods", kube_pod("db-0", "db", "node-b", ["10.244.2.9"]))
        api.create("nodes", {"metadata": {"name": "node-a", "labels": {
            "topology.kubernetes.io/zone": "us-east-1a", "topology.kubernetes.io/region": "us-east-1"}},
            "spec": {"providerID": "aws:///us-east-1a/i-0123"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.1.10"}]}})
        api.create("services", {"metadata": {"name": "web", "namespace": "shop"},
                                "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]}})
        kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
        lake = tmp_path / "lake"
        log = open(tmp_path / "inventory.log", "w")
        proc = subprocess.Popen([PY, "-m", "node_agent", "inventory", "--lake", str(lake), "--kubeconfig", kubeconfig,
                                 "--spool", str(tmp_path / "spool"), "--interval", "2s", "--listen", "off"],
                                stdout=log, stderr=log, cwd=REPO)
        deadline = time.monotonic() + 60
        while len(list(lake.glob("inventory/pods/date=*/*.parquet"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "inventory.log").read_text()
            time.sleep(0.2)
        api.create("pods", kube_pod("late-0", "shop", "node-a", ["10.244.1.6"]))
        n = len(list(lake.glob("inventory/pods/date=*/*.parquet")))
        while len(list(lake.glob("inventory/pods/date=*/*.parquet"))) < n + 2:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "inventory.log").read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        api.stop()
    snaps = sorted(lake.glob("inventory/pods/date=*/*.parquet"))
    first = pq.read_table(snaps[0]).to_pylist()
    assert sorted((r["name"], r["namespace"], r["ip"], r["node"]) for r in first) == [
        ("db-0", "db", "10.244.2.9", "node-b"),
        ("web-7d9f8b6c5-abcde", "shop", "10.244.1.5", "node-a"),
        ("web-7d9f8b6c5-abcde", "shop", "fd00::5", "node-a"),
    ]
    assert "late-0" in {r["name"] for r in pq.read_table(snaps[-1]).to_pylist()}
    for kind in ("services", "nodes", "endpoints"):
        assert len(list(lake.glob(f"inventory/{kind}/date=*/*.parquet"))) == len(snaps)
    nodes = pq.read_table(sorted(lake.glob("inventory/nodes/date=*/*.parquet"))[-1]).to_pylist()
    assert [(r["name"], r["zone"], r["region"], r["provider"]) for r in nodes] == [("node-a", "us-east-1a", "us-east-1", "aws")]
    # Snapshot names are their times: one file per kind per snapshot, none overwritten.
    assert len({p.name for p in snaps}) == len(snaps)


DNS_SERVER = r"""
import time
from dnslib import RR, QTYPE, A, CNAME
from dnslib.server import DNSServer, BaseResolver
class Zone(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        if str(request.q.qname) == "api.shop.test.":
            reply.add_answer(RR("api.shop.test", QTYPE.CNAME, rdata=CNAME("edge.cdn.test"), ttl=30))
            reply.add_answer(RR("edge.cdn.test", QTYPE.A, rdata=A("198.51.100.7"), ttl=20))
        return reply
DNSServer(Zone(), address="0.0.0.0", port=53).start_thread()
print("ready", flush=True)
time.sleep(120)
"""

DNS_CLIENT = r"""
from dnslib import DNSRecord
DNSRecord.parse(DNSRecord.question("api.shop.test", "A").send("10.77.0.2", 53, timeout=5))
print("done")
"""


@pytest.mark.privileged
def test_dns_answers_land_in_raw_dns(tmp_path):
    """--dns: the agent's tracer (cgroup ingress, on a test cgroup so only our client is
    traced) turns DNS answers into raw/dns rows of the window."""

    import pyarrow.parquet as pq

    from node_agent import bpfload

    try:
        root = bpfload.find_cgroup2()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no cgroup v2 here: {exc}")
    cg = TestCgroup("netmon-agent-test", root)
    cgroup = cg.path
    a, b = make_pair("nmagd")
    srv = agent = None
    try:
        srv = b.popen(PY, "-c", DNS_SERVER, stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
        lake = tmp_path / "lake"
        agent = AgentProc(a, ["run", "--standalone", "--dns", "--cgroup-path", cgroup, "--node", "node-a",
                              "--lake", str(lake), "--spool", str(tmp_path / "spool"), "--poll-interval", "1s",
                              "--flush-interval", "5s", "--listen", "off"], str(tmp_path / "agent.log"), dict(os.environ),
                          keep_sys=True)
        agent.wait_for("agent running")

        r = subprocess.run(a.cmd(PY, "-c", DNS_CLIENT), preexec_fn=cg.enter, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        time.sleep(1.0)
        assert agent.terminate() == 0, agent.text()
        left = bpfload.attached_names(cgroup, bpfload.CGROUP_INET_INGRESS)
    finally:
        if agent is not None:
            agent.kill()
        if srv is not None:
            srv.kill()
            srv.wait()
        a.delete()
        b.delete()
        cg.remove()
    assert left == []                         # the agent detached its program at exit
    rows = [r for f in sorted(lake.glob("raw/dns/date=*/hour=*/node=node-a/*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert {(r["client_ip"], r["domain"], r["ip"], r["ttl_s"]) for r in rows} == {
        ("10.77.0.1", "api.shop.test", "198.51.100.7", 20)}
    # raw/dns files share their window names with raw/flows
    dns_windows = {p.name.split("-")[-1] for p in lake.glob("raw/dns/**/*.parquet")}
    flow_windows = {p.name.split("-")[-1] for p in lake.glob("raw/flows/**/*.parquet")}
    assert dns_windows == flow_windows
