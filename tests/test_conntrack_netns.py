"""The conntrack collector and accounter against the real kernel table of a client namespace.

Two namespaces on a veth pair (tests/netns.py). Echo servers run in `b`; clients, a DNAT
rule standing in for a ClusterIP, and the collector run in `a` (the collector opens its
netlink sockets inside `a` through pyroute2's netns socket factory). The expected numbers
come from the kernel itself: `conntrack -L -o extended,id` snapshots taken at the baseline
and after the last poll (no traffic in between), and a `conntrack -E -e DESTROY` listener for
connections that ended.
"""
from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections import defaultdict

import pytest

from lake.schema import RAW_FLOWS
from netns import make_pair
from node_agent.accounter import Accounter
from node_agent.collectors.conntrack import ConntrackCollector
from node_agent.localaddrs import LocalAddrs

pytestmark = pytest.mark.privileged

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
T1 = T0 + dt.timedelta(seconds=60)
B4, B6 = "10.77.0.2", "fd77::2"
VIP4, VIP6 = "10.96.0.10", "fd96::10"
SHORT_TIMEOUTS = ("tcp_timeout_time_wait", "tcp_timeout_close", "tcp_timeout_fin_wait",
                  "tcp_timeout_last_ack", "tcp_timeout_close_wait")
NAT = f"""
table ip netmon_nat4 {{
  chain out {{ type nat hook output priority -100;
    ip daddr {VIP4} tcp dport 80 dnat to {B4}:8080
    ip daddr {VIP4} udp dport 53 dnat to {B4}:5300
  }}
}}
table ip6 netmon_nat6 {{
  chain out {{ type nat hook output priority -100;
    ip6 daddr {VIP6} tcp dport 80 dnat to [{B6}]:8081
  }}
}}
"""


# ------------------------------------------------------------------------ helpers
def ns_socket(ns, family, kind):
    from pyroute2.netns import create_socket

    return create_socket(ns.name, family, kind, 0)


def fam_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class EchoServers:
    """TCP and UDP echo servers inside namespace `b` (threads of this process)."""

    def __init__(self, ns):
        self.socks = []
        for addr, port in ((B4, 8080), (B6, 8080), (B6, 8081)):
            s = ns_socket(ns, fam_of(addr), socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(64)
            self.socks.append(s)
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        for addr in (B4, B6):
            u = ns_socket(ns, fam_of(addr), socket.SOCK_DGRAM)
            u.bind((addr, 5300))
            self.socks.append(u)
            threading.Thread(target=self._udp, args=(u,), daemon=True).start()

    def _accept(self, s):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        with c:
            while True:
                try:
                    data = c.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                c.sendall(data)

    @staticmethod
    def _udp(u):
        while True:
            try:
                data, peer = u.recvfrom(65536)
                if peer is None:  # shut down
                    return
                u.sendto(data, peer)
            except OSError:
                return

    def close(self):
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def tcp(ns, addr, port):
    s = ns_socket(ns, fam_of(addr), socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect((addr, port))
    return s


def exchange(s, n):
    s.sendall(b"x" * n)
    got = 0
    while got < n:
        chunk = s.recv(n - got)
        assert chunk, "echo server closed early"
        got += len(chunk)


def udp_exchange(s, addr, port, n):
    s.sendto(b"u" * n, (addr, port))
    data, _ = s.recvfrom(65536)
    assert len(data) == n


def parse_ct_line(line: str):
    """(key, counters, flow) of one `conntrack -o extended,id` line (TCP/UDP only)."""
    kv = defaultdict(list)
    proto = None
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            kv[k].append(v)
        elif tok.isdigit() and proto is None and tok in ("6", "17"):
            proto = int(tok)
    if proto is None or len(kv["src"]) < 2:
        return None
    key = (int(kv["id"][-1]), kv["src"][0], kv["dst"][0], int(kv["sport"][0]), int(kv["dport"][0]), proto)
    counters = (int(kv["bytes"][0]), int(kv["packets"][0]), int(kv["bytes"][1]), int(kv["packets"][1]))
    flow = (kv["src"][0], kv["src"][1], kv["dst"][0], int(kv["dport"][0]), int(kv["sport"][1]), proto)
    return key, counters, flow


def ct_table(ns) -> dict:
    out = {}
    for line in ns.run("conntrack", "-L", "-o", "extended,id").stdout.splitlines():
        p = parse_ct_line(line)
        if p:
            out[p[0]] = p[1:]
    return out


def read_destroys(path) -> dict:
    out = {}
    with open(path) as f:
        for line in f:
            if "DESTROY" in line:
                p = parse_ct_line(line)
                if p:
                    out[p[0]] = p[1:]
    return out


def expected_rows(before: dict, after: dict, ended: dict) -> dict:
    """Per flow key: kernel counters at the end minus at the baseline, summed over connections."""
    exp: dict = defaultdict(lambda: [0, 0, 0, 0, 0])
    for key, (final, flow) in {**after, **ended}.items():
        base = before.get(key, ((0, 0, 0, 0), None))[0]
        d = [f - b for f, b in zip(final, base)]
        if any(d):
            acc = exp[flow]
            for i in range(4):
                acc[i] += d[i]
            acc[4] += 1
    return {k: tuple(v) for k, v in exp.items()}


def got_rows(table) -> dict:
    assert table.schema.equals(RAW_FLOWS, check_metadata=True)
    out = {}
    for r in table.to_pylist():
        assert r["direction"] == "outbound"
        flow = (r["src_ip"], r["dst_ip"], r["orig_dst_ip"], r["orig_dst_port"], r["dst_port"], r["proto"])
        out[flow] = (r["tx_bytes"], r["tx_packets"], r["rx_bytes"], r["rx_packets"], r["connections"])
    return out


@pytest.fixture
def pair():
    a, b = make_pair("ct")
    try:
        a.enable_conntrack()
        b.enable_conntrack()
        for name in SHORT_TIMEOUTS:  # let closed TCP connections end within a poll interval
            a.run("sysctl", "-qw", f"net.netfilter.nf_conntrack_{name}=1")
        a.run("ip", "route", "add", "10.96.0.0/24", "via", B4)
        a.run("ip", "-6", "route", "add", "fd96::/64", "via", B6)
        a.nft(NAT)
        servers = EchoServers(b)
        try:
            yield a, b
        finally:
            servers.close()
    finally:
        a.delete()
        b.delete()


# -------------------------------------------------------------------------- tests
def test_deltas_equal_what_the_kernel_counted(pair):
    a, _b = pair
    events_path = tempfile.mktemp(prefix="ct-events-")
    listener = subprocess.Popen(
        a.cmd("stdbuf", "-oL", "conntrack", "-E", "-e", "DESTROY", "-o", "extended,id"),
        stdout=open(events_path, "w"), stderr=subprocess.DEVNULL)
    socks = []
    try:
        time.sleep(0.5)
        # --- before the agent starts: none of this may be counted
        long4, long6 = tcp(a, B4, 8080), tcp(a, B6, 8080)
        socks += [long4, long6]
        exchange(long4, 1000)
        exchange(long6, 2000)
        pre = tcp(a, B4, 8080)
        exchange(pre, 500)
        pre.close()
        u4 = ns_socket(a, socket.AF_INET, socket.SOCK_DGRAM)
        socks.append(u4)
        udp_exchange(u4, B4, 5300, 100)
        time.sleep(2.5)  # `pre` reaches TIME_WAIT and expires

        coll = ConntrackCollector(netns=a.name)
        coll.open()
        acc = Accounter()
        acc.poll(coll)  # baseline
        before = ct_table(a)
        time.sleep(0.3)
        pre_start_destroys = set(read_destroys(events_path))
        assert before, "the long-lived connections must be in the baseline"
        assert acc.stats()["baseline_entries"] == len(before)

        # --- window traffic: live connections, DNAT'ed ClusterIPs, UDP, IPv6
        exchange(long4, 3000)
        exchange(long6, 4000)
        udp_exchange(u4, B4, 5300, 200)
        udp_exchange(u4, B4, 5300, 200)
        d4, d6 = tcp(a, VIP4, 80), tcp(a, VIP6, 80)
        socks += [d4, d6]
        exchange(d4, 5000)
        exchange(d6, 1500)
        u6 = ns_socket(a, socket.AF_INET6, socket.SOCK_DGRAM)
        ud = ns_socket(a, socket.AF_INET, socket.SOCK_DGRAM)
        socks += [u6, ud]
        udp_exchange(u6, B6, 5300, 300)
        udp_exchange(ud, VIP4, 53, 64)
        udp_exchange(ud, VIP4, 53, 64)
        time.sleep(0.3)
        acc.poll(coll)

        # --- short connections that start and end between two polls
        for addr, port, n in ((B4, 8080, 700), (B6, 8080, 900), (VIP4, 80, 1100), (VIP6, 80, 1300)):
            s = tcp(a, addr, port)
            exchange(s, n)
            s.close()
        us = ns_socket(a, socket.AF_INET, socket.SOCK_DGRAM)
        udp_exchange(us, B4, 5300, 77)
        us_port = us.getsockname()[1]
        us.close()
        a.run("conntrack", "-D", "-p", "udp", "--sport", str(us_port))  # as kube-proxy does for UDP
        exchange(long4, 600)  # a baseline connection that ends: final minus baseline
        long4.close()
        socks.remove(long4)
        time.sleep(2.5)  # closed TCP entries expire (TIME_WAIT 1 s)
        acc.poll(coll)   # its dump evicts the expired entries -> DESTROY events
        time.sleep(0.3)
        acc.poll(coll)   # ... drained here
        after = ct_table(a)
        time.sleep(0.3)
    finally:
        listener.terminate()
        listener.wait(5)
        for s in socks:
            s.close()
    destroys = {k: v for k, v in read_destroys(events_path).items() if k not in pre_start_destroys}
    os.unlink(events_path)
    table = acc.cut(T0, T1, "node-a", LocalAddrs(netns=a.name))
    coll.close()

    got = got_rows(table)
    exp = expected_rows(before, after, destroys)
    assert got == exp
    # the DNAT'ed ClusterIPs: what was dialed differs from the real peer
    assert got[("10.77.0.1", B4, VIP4, 80, 8080, 6)][4] == 2   # d4 and one short connection
    assert ("fd77::1", B6, VIP6, 80, 8081, 6) in got
    assert ("10.77.0.1", B4, VIP4, 53, 5300, 17) in got
    # short connections were never dumped: they were counted through DESTROY events
    st = acc.stats()
    assert st["ended_unseen"] >= 5, st
    assert len(destroys) >= 6
    # traffic before start is not counted: got == exp above subtracts the baseline snapshot
    # and leaves out `pre`, which ended before the agent started
    assert all(counters[0] > 0 for counters, _flow in before.values())
    assert coll.stats()["events_lost"] == 0 and coll.stats()["malformed"] == 0


def test_baseline_only_then_idle_gives_no_rows(pair):
    a, _b = pair
    s = tcp(a, B4, 8080)
    try:
        exchange(s, 4000)
        coll = ConntrackCollector(netns=a.name)
        coll.open()
        acc = Accounter()
        acc.poll(coll)
        before = ct_table(a)
        acc.poll(coll)
        table = acc.cut(T0, T1, "node-a", LocalAddrs(netns=a.name))
        assert acc.stats()["baseline_entries"] == 1
        assert table.num_rows == 0  # 4000 bytes each way are in the kernel's counters, none after start
        exchange(s, 10)
        time.sleep(0.2)
        acc.poll(coll)
        after = ct_table(a)
        got = got_rows(acc.cut(T0, T1, "node-a", LocalAddrs(netns=a.name)))
        assert got == expected_rows(before, after, {})
        (tx_bytes, tx_packets, rx_bytes, rx_packets, conns), = got.values()
        assert tx_bytes < 4000 and rx_bytes < 4000 and conns == 1
        coll.close()
    finally:
        s.close()


def test_event_overrun_resyncs_and_never_double_counts(pair):
    a, _b = pair
    coll = ConntrackCollector(netns=a.name, rcvbuf=4096)  # tiny buffer: DESTROY events overflow
    coll.open()
    acc = Accounter()
    acc.poll(coll)
    socks = []
    try:
        for _ in range(200):
            u = ns_socket(a, socket.AF_INET, socket.SOCK_DGRAM)
            udp_exchange(u, B4, 5300, 40)
            socks.append(u)
        time.sleep(0.3)
        acc.poll(coll)
        snapshot = ct_table(a)
        a.run("conntrack", "-F")  # 200 DESTROY events at once
        time.sleep(0.3)
        acc.poll(coll)
        acc.poll(coll)
    finally:
        for u in socks:
            u.close()
    st = coll.stats()
    assert st["event_overruns"] >= 1 and st["events_lost"] >= 1 and st["resyncs"] >= 1, st
    (row,) = acc.cut(T0, T1, "node-a", LocalAddrs(netns=a.name)).to_pylist()
    exp = expected_rows({}, snapshot, {})
    assert (row["tx_bytes"], row["tx_packets"], row["rx_bytes"], row["rx_packets"], row["connections"]) == \
        exp[("10.77.0.1", B4, B4, 5300, 5300, 17)]
    assert row["tx_bytes"] == 200 * (20 + 8 + 40)


def test_setup_failures_are_one_clear_error():
    import sys

    from node_agent.collectors.base import CollectorError

    with pytest.raises(CollectorError, match="no-such-netns") as exc:
        ConntrackCollector(netns="no-such-netns-0f3a").open()
    assert "\n" not in str(exc.value)
    # without CAP_NET_ADMIN (an unprivileged user namespace over a namespace of ours)
    a, b = make_pair("cterr")
    try:
        code = ("from node_agent.collectors.conntrack import ConntrackCollector\n"
                "from node_agent.collectors.base import CollectorError\n"
                "try:\n    ConntrackCollector().open()\n"
                "except CollectorError as e:\n    print('error:', e)\n")
        out = a.run("unshare", "--user", "--map-root-user", sys.executable, "-c", code,
                    check=False)
        line = out.stdout.strip()
        assert line.startswith("error: cannot") and "root" in line and "\n" not in line, (line, out.stderr)
    finally:
        a.delete()
        b.delete()
