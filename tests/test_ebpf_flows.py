"""eBPF flow collector against conntrack on the same traffic.

Two namespaces (tests/netns.py): the client netns is "the node", with conntrack on and an
nft DNAT that makes 10.96.0.10 / fd96::10 a "ClusterIP" for the server in the other netns.
Client and server processes run in a cgroup of our own where the BCC programs are attached
(other traffic on this machine is not ours to count), so both ends of each connection are
seen, in two network namespaces, as for two pods of one node. Both collectors run at once, each feeds an
Accounter, and the cut windows must be the same rows: same keys (real ports, ClusterIP as
orig_dst_ip and the backend as dst_ip), bytes, packets and connections.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from netns import TestCgroup, make_pair


NAT = """
table ip nm_nat {
  chain out { type nat hook output priority -100;
    ip daddr 10.96.0.10 tcp dport 80 dnat to 10.77.0.2:8080
    ip daddr 10.96.0.10 udp dport 5353 dnat to 10.77.0.2:9090
  }
}
table ip6 nm_nat6 {
  chain out { type nat hook output priority -100;
    ip6 daddr fd96::10 tcp dport 80 dnat to [fd77::2]:8080
  }
}
"""

SERVER = textwrap.dedent("""
    import socket, struct, threading, time
    def tcp_conn(c):
        want = struct.unpack("!Q", c.recv(8, socket.MSG_WAITALL))[0]
        while c.recv(65536):
            pass
        c.sendall(b"r" * want)
        c.close()
    def tcp():
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", 8080)); s.listen(16)
        while True:
            c, _ = s.accept()
            threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()
    def udp():
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 9090))
        while True:
            d, peer = s.recvfrom(65536)
            s.sendto(b"u" * 100, peer)
    threading.Thread(target=tcp, daemon=True).start()
    threading.Thread(target=udp, daemon=True).start()
    print("ready", flush=True)
    time.sleep(300)
""")

CLIENT = textwrap.dedent("""
    import socket, struct, subprocess
    def tcp(host, port, send, reply):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(struct.pack("!Q", reply) + b"s" * send)
        s.shutdown(socket.SHUT_WR)
        got = 0
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += len(d)
        s.close()
        assert got == reply, (host, got)
    def udp(fam, host, port, n, size):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.connect((host, port))
        for _ in range(n):
            s.send(b"q" * size)
            assert len(s.recv(1000)) == 100
        s.close()
    tcp("10.96.0.10", 80, 200000, 50000)       # via the v4 ClusterIP
    tcp("10.96.0.10", 80, 3000, 10)            # a second connection of the same flow key
    tcp("10.77.0.2", 8080, 30000, 1000)        # direct
    tcp("fd96::10", 80, 70000, 7000)           # via the v6 ClusterIP
    udp(socket.AF_INET, "10.96.0.10", 5353, 5, 300)
    udp(socket.AF_INET6, "fd77::2", 9090, 3, 200)
    subprocess.run(["ping", "-q", "-c", "3", "-i", "0.2", "-s", "100", "10.77.0.2"], check=True, capture_output=True)
    subprocess.run(["ping", "-q", "-6", "-c", "2", "-i", "0.2", "fd77::2"], check=True, capture_output=True)
    print("done")
""")


def _rows(table):
    return sorted(table.drop_columns(["src_pod", "src_namespace", "dst_pod", "dst_namespace"]).to_pylist(),
                  key=lambda r: (r["proto"], r["src_ip"], r["dst_ip"], r["orig_dst_ip"], r["orig_dst_port"], r["dst_port"]))


@pytest.mark.privileged
@pytest.mark.slow
def test_ebpf_rows_equal_conntrack_rows():
    from node_agent import bpfload
    from node_agent.accounter import Accounter
    from node_agent.collectors.conntrack import ConntrackCollector
    from node_agent.collectors.ebpf import EbpfCollector

    cg = TestCgroup()
    cgroup = cg.path
    client, server = make_pair("nmebpf")
    srv = None
    ct = eb = None
    left = None
    try:
        client.enable_conntrack()
        client.nft(NAT)
        client.run("ip", "route", "add", "10.96.0.0/16", "dev", client.dev)
        client.run("ip", "-6", "route", "add", "fd96::/64", "dev", client.dev)
        # The server runs in the traced cgroup too, as two pods of one node would: its end of
        # every connection lands in another netns's map entries and must not count twice.
        srv = server.popen(sys.executable, "-c", SERVER, stdout=subprocess.PIPE, text=True, preexec_fn=cg.enter)
        assert srv.stdout.readline().strip() == "ready"

        # a crashed earlier agent's attachments: open() must remove them
        stale = bpfload.load("flows.c", ["netmon_flow_in", "netmon_flow_out"], [])
        crashed = bpfload.Attachments(cgroup)
        crashed.attach(stale.progs["netmon_flow_in"], bpfload.CGROUP_INET_INGRESS)
        crashed.attach(stale.progs["netmon_flow_out"], bpfload.CGROUP_INET_EGRESS)
        stale.close()              # the process "dies": its attachments stay

        ct = ConntrackCollector(netns=client.name)
        ct.open()
        eb = EbpfCollector(cgroup_path=cgroup, conntrack_netns=client.name, close_grace=1.0)
        eb.open()
        assert sorted(bpfload.attached_names(cgroup, 0) + bpfload.attached_names(cgroup, 1)) == [
            b"netmon_flow_in", b"netmon_flow_out"]
        acc_ct, acc_eb = Accounter(), Accounter()
        acc_ct.poll(ct)
        acc_eb.poll(eb)            # baselines (nothing yet)

        r = subprocess.run(client.cmd(sys.executable, "-c", CLIENT), preexec_fn=cg.enter,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        time.sleep(1.5)            # past close_grace: closed TCP connections end in the ebpf collector
        for _ in range(2):
            acc_ct.poll(ct)
            acc_eb.poll(eb)
        ws = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        we = ws + dt.timedelta(minutes=1)
        local = {"10.77.0.1", "fd77::1"}
        t_ct = acc_ct.cut(ws, we, "node-a", local)
        t_eb = acc_eb.cut(ws, we, "node-a", local)
        eb_stats = eb.stats()
    finally:
        if eb is not None:
            eb.close()
            left = bpfload.attached_names(cgroup, 0) + bpfload.attached_names(cgroup, 1)
        if ct is not None:
            ct.close()
        if srv is not None:
            srv.kill()
            srv.wait()
        client.delete()
        server.delete()
        cg.remove()

    assert left == []                      # close() detached both programs
    rows_ct, rows_eb = _rows(t_ct), _rows(t_eb)
    assert t_eb.schema.equals(t_ct.schema)
    assert rows_eb == rows_ct
    by_key = {(r["proto"], r["orig_dst_ip"], r["orig_dst_port"]): r for r in rows_eb}
    # NAT kept both ways: what was dialed and the real backend, with real ports
    svc = by_key[(6, "10.96.0.10", 80)]
    assert (svc["dst_ip"], svc["dst_port"], svc["connections"], svc["direction"]) == ("10.77.0.2", 8080, 2, "outbound")
    assert svc["tx_bytes"] > 203000 + 16 and svc["rx_bytes"] > 50010
    assert by_key[(6, "fd96::10", 80)]["dst_ip"] == "fd77::2"
    # UDP bytes are exact: IP + UDP headers + payload
    u4 = by_key[(17, "10.96.0.10", 5353)]
    assert (u4["dst_ip"], u4["dst_port"]) == ("10.77.0.2", 9090)
    assert (u4["tx_packets"], u4["tx_bytes"], u4["rx_packets"], u4["rx_bytes"]) == (5, 5 * 328, 5, 5 * 128)
    u6 = by_key[(17, "fd77::2", 9090)]
    assert (u6["tx_packets"], u6["tx_bytes"], u6["rx_bytes"]) == (3, 3 * 248, 3 * 148)
    # ICMP echo: 3 requests of 100 bytes payload (+8 ICMP +20 IP), replies the same
    p4 = by_key[(1, "10.77.0.2", 0)]
    assert (p4["tx_packets"], p4["tx_bytes"], p4["rx_packets"], p4["rx_bytes"]) == (3, 384, 3, 384)
    assert by_key[(58, "fd77::2", 0)]["tx_packets"] == 2
    assert eb_stats["map_full_packets"] == 0 and eb_stats["nat_resolved"] >= 6
    assert eb_stats["stale_detached"] == 2
    assert eb_stats["ended"] == 4              # the closed TCP connections (UDP/ICMP wait for idle expiry)
    assert eb_stats["duplicates_dropped"] == 4  # ... each also seen from the server's netns


def test_clear_error_without_root():
    # A child drops to nobody (or we already are not root): one clear CollectorError line.
    code = textwrap.dedent("""
        import os
        from node_agent.collectors.base import CollectorError
        from node_agent.collectors.ebpf import EbpfCollector
        if os.geteuid() == 0:   # after the imports: nobody cannot read this interpreter's files
            os.setgid(65534); os.setuid(65534)
        try:
            EbpfCollector().open()
        except CollectorError as e:
            print(e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("ebpf collector: eBPF needs root"), r.stdout


def test_clear_error_without_kernel_headers(monkeypatch):
    from node_agent import bpfload
    from node_agent.collectors.base import CollectorError
    from node_agent.collectors.ebpf import EbpfCollector

    real = os.uname()
    fake = os.uname_result((real.sysname, real.nodename, "0.0.0-netmon-none", real.version, real.machine))
    monkeypatch.setattr(bpfload.os, "uname", lambda: fake)
    monkeypatch.setattr(bpfload.os, "geteuid", lambda: 0)
    with pytest.raises(CollectorError, match="kernel headers missing: /lib/modules/0.0.0-netmon-none/build"):
        EbpfCollector().open()


def test_cgroup_path_must_be_cgroup2(tmp_path):
    from node_agent import bpfload

    with pytest.raises(bpfload.BpfError, match="is not a cgroup v2 directory"):
        bpfload.find_cgroup2(str(tmp_path))
    root = bpfload.find_cgroup2()
    assert bpfload.find_cgroup2(root) == root
    if root.endswith("/unified"):            # hybrid layout: the parent path finds it too
        assert bpfload.find_cgroup2(os.path.dirname(root)) == root


@pytest.mark.privileged
@pytest.mark.slow
def test_map_bound_counts_what_does_not_fit_and_batches_read_everything():
    """6000 UDP flows into a map bounded at 5000: 5000 entries read back (over several batch
    reads), the other 1000 packets counted as not fitting, none silently lost."""
    from node_agent import bpfload
    from node_agent.collectors.ebpf import EbpfCollector

    cg = TestCgroup()
    cgroup = cg.path
    client, server = make_pair("nmbound")
    eb = None
    try:
        eb = EbpfCollector(cgroup_path=cgroup, max_flows=5000, nat_source=lambda: [])
        eb.open()

        code = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "for i in range(6000):\n    s.sendto(b'x' * 50, ('10.77.0.2', 20000 + i))\n")
        subprocess.run(client.cmd(sys.executable, "-c", code), preexec_fn=cg.enter, check=True, timeout=60)
        samples = eb.dump()
        st = eb.stats()
    finally:
        if eb is not None:
            eb.close()
        client.delete()
        server.delete()
        cg.remove()
    # the kernel may answer unreachable ports with ICMP errors: not flows (untracked)
    assert len(samples) == 5000 == st["map_entries"]
    assert all(s.proto == 17 and s.orig_packets == 1 and s.orig_bytes == 78 for s in samples)
    assert len({s.dport for s in samples}) == 5000
    assert st["map_full_packets"] == 1000 and st["map_full_bytes"] == 1000 * 78


def _three_hosts():
    """pod netns -- host netns (router, kube-proxy-like DNAT in prerouting) -- server netns,
    all created here: pod 10.78.1.2, host 10.78.1.1 / 10.78.2.1, server 10.78.2.2."""
    from netns import Netns, sh

    tag = uuid.uuid4().hex[:6]
    pod, host, srv = Netns(f"nmpod-{tag}"), Netns(f"nmhost-{tag}"), Netns(f"nmsrv-{tag}")
    try:
        for ns in (pod, host, srv):
            sh("ip", "netns", "add", ns.name)
            ns.run("ip", "link", "set", "lo", "up")
        for (a, an, b, bn, net) in ((pod, "p", host, "h1", "10.78.1"), (srv, "s", host, "h2", "10.78.2")):
            va, vb = f"{an}{tag}", f"{bn}{tag}"
            sh("ip", "link", "add", va, "netns", a.name, "type", "veth", "peer", "name", vb, "netns", b.name)
            a.run("ip", "addr", "add", f"{net}.2/24", "dev", va)
            b.run("ip", "addr", "add", f"{net}.1/24", "dev", vb)
            a.run("ip", "link", "set", va, "up")
            b.run("ip", "link", "set", vb, "up")
            a.run("ip", "route", "add", "default", "via", f"{net}.1")
        host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        host.enable_conntrack()
        host.nft("""
table ip nm_kubeproxy {
  chain pre { type nat hook prerouting priority -100;
    ip daddr 10.96.0.10 tcp dport 80 dnat to 10.78.2.2:8080
    ip daddr 10.96.0.10 udp dport 5353 dnat to 10.78.2.2:9090
  }
}
""")
    except Exception:
        for ns in (pod, host, srv):
            ns.delete()
        raise
    return pod, host, srv


POD_CLIENT = textwrap.dedent("""
    import socket, struct
    for send, reply in ((120000, 40000), (5000, 100)):
        s = socket.create_connection(("10.96.0.10", 80), timeout=10)
        s.sendall(struct.pack("!Q", reply) + b"s" * send)
        s.shutdown(socket.SHUT_WR)
        got = 0
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += len(d)
        s.close()
        assert got == reply
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.connect(("10.96.0.10", 5353))
    for _ in range(4):
        u.send(b"q" * 200)
        assert len(u.recv(1000)) == 100
    print("done")
""")


@pytest.mark.privileged
@pytest.mark.slow
def test_pod_dialing_a_clusterip_translated_in_the_host_netns():
    """A pod's own netns sees the ClusterIP both ways (the DNAT happens later, in the host
    netns, as with kube-proxy); the ebpf rows still name the backend like conntrack's."""
    from node_agent import bpfload
    from node_agent.accounter import Accounter
    from node_agent.collectors.conntrack import ConntrackCollector
    from node_agent.collectors.ebpf import EbpfCollector

    cg = TestCgroup()
    cgroup = cg.path
    pod, host, srv_ns = _three_hosts()
    srv = ct = eb = None
    try:
        srv = srv_ns.popen(sys.executable, "-c", SERVER, stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
        ct = ConntrackCollector(netns=host.name)
        ct.open()
        eb = EbpfCollector(cgroup_path=cgroup, conntrack_netns=host.name, close_grace=1.0)
        eb.open()
        acc_ct, acc_eb = Accounter(), Accounter()
        acc_ct.poll(ct)
        acc_eb.poll(eb)

        r = subprocess.run(pod.cmd(sys.executable, "-c", POD_CLIENT), preexec_fn=cg.enter,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        time.sleep(1.5)
        for _ in range(2):
            acc_ct.poll(ct)
            acc_eb.poll(eb)
        ws = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        local = {"10.78.1.2"}        # the node's pod IPs
        rows_ct = _rows(acc_ct.cut(ws, ws + dt.timedelta(minutes=1), "node-a", local))
        rows_eb = _rows(acc_eb.cut(ws, ws + dt.timedelta(minutes=1), "node-a", local))
    finally:
        if eb is not None:
            eb.close()
        if ct is not None:
            ct.close()
        if srv is not None:
            srv.kill()
            srv.wait()
        for ns in (pod, host, srv_ns):
            ns.delete()
        cg.remove()
    assert rows_eb == rows_ct
    keys = {(r["proto"], r["src_ip"], r["orig_dst_ip"], r["orig_dst_port"], r["dst_ip"], r["dst_port"], r["connections"])
            for r in rows_eb}
    assert keys == {(6, "10.78.1.2", "10.96.0.10", 80, "10.78.2.2", 8080, 2),
                    (17, "10.78.1.2", "10.96.0.10", 5353, "10.78.2.2", 9090, 1)}
    udp = next(r for r in rows_eb if r["proto"] == 17)
    assert (udp["tx_bytes"], udp["rx_bytes"]) == (4 * 228, 4 * 128)


LOCAL_TRAFFIC = textwrap.dedent("""
    import socket, threading
    def serve(fam, addr):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.bind((addr, 0)); s.listen(1)
        def run():
            c, _ = s.accept()
            n = 0
            while True:
                d = c.recv(65536)
                if not d:
                    break
                n += len(d)
            c.sendall(b"r" * 1234)
            c.close()
        t = threading.Thread(target=run); t.start()
        return s.getsockname()[1], t
    for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "10.77.0.1"), (socket.AF_INET6, "::1")):
        port, t = serve(fam, addr)
        c = socket.create_connection((addr, port))
        c.sendall(b"s" * 50000)
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass
        c.close()
        t.join()
        u, v = socket.socket(fam, socket.SOCK_DGRAM), socket.socket(fam, socket.SOCK_DGRAM)
        v.bind((addr, 0))
        for _ in range(3):
            u.sendto(b"d" * 99, v.getsockname())
            v.recv(1000)
    print("done")
""")


@pytest.mark.privileged
@pytest.mark.slow
def test_traffic_within_one_netns_counted_once():
    """Client and server in the same netns (loopback and the netns's own address): egress and
    ingress see the same packet; ebpf counts it once, like conntrack."""
    from node_agent import bpfload
    from node_agent.accounter import Accounter
    from node_agent.collectors.conntrack import ConntrackCollector
    from node_agent.collectors.ebpf import EbpfCollector

    cg = TestCgroup()
    cgroup = cg.path
    client, server = make_pair("nmlocal")
    ct = eb = None
    try:
        client.enable_conntrack()
        client.run("ip", "link", "set", "lo", "up")
        ct = ConntrackCollector(netns=client.name)
        ct.open()
        eb = EbpfCollector(cgroup_path=cgroup, conntrack_netns=client.name, close_grace=1.0)
        eb.open()
        acc_ct, acc_eb = Accounter(), Accounter()
        acc_ct.poll(ct)
        acc_eb.poll(eb)

        r = subprocess.run(client.cmd(sys.executable, "-c", LOCAL_TRAFFIC), preexec_fn=cg.enter,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        time.sleep(1.5)
        for _ in range(2):
            acc_ct.poll(ct)
            acc_eb.poll(eb)
        ws = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        local = {"127.0.0.1", "::1", "10.77.0.1"}
        rows_ct = _rows(acc_ct.cut(ws, ws + dt.timedelta(minutes=1), "node-a", local))
        rows_eb = _rows(acc_eb.cut(ws, ws + dt.timedelta(minutes=1), "node-a", local))
    finally:
        if eb is not None:
            eb.close()
        if ct is not None:
            ct.close()
        client.delete()
        server.delete()
        cg.remove()
    # Loopback (127.0.0.1, ::1) never leaves the node: the accounter drops those flows and
    # counts them; what remains is TCP and UDP on the namespace's own address.
    assert len(rows_eb) == 2
    # UDP: 3 datagrams of 99 bytes + 8 + IP header, once
    for r in rows_eb:
        if r["proto"] == 17:
            hdr = 40 if ":" in r["src_ip"] else 20
            assert (r["tx_packets"], r["tx_bytes"]) == (3, 3 * (99 + 8 + hdr))
    assert rows_eb == rows_ct
    st_ct, st_eb = acc_ct.stats(), acc_eb.stats()
    assert st_eb["loopback_flows"] == st_ct["loopback_flows"] == 4   # TCP and UDP on 127.0.0.1 and ::1
    assert st_eb["loopback_bytes"] == st_ct["loopback_bytes"] > 0


def test_failing_nat_lookup_is_counted_not_fatal():
    from node_agent.collectors.ebpf import EbpfCollector

    def no_conntrack():
        raise OSError(2, "nf_conntrack not loaded")

    c = EbpfCollector(nat_source=no_conntrack)
    assert c._nat_index() == {} and c._nat_index() == {}
    assert c.stats()["nat_errors"] == 2


PINNED = textwrap.dedent("""
    import os, subprocess, sys
    from node_agent import bpfload
    pin = sys.argv[1]
    subprocess.run([sys.executable, "-m", "node_agent.bpfload", "pin", pin], check=True, capture_output=True)
    names = sorted(n for n in os.listdir(pin) if n.startswith("netmon_"))  # bpffs also lists *.debug
    a = bpfload.load("flows.c", *bpfload.SOURCES["flows.c"], pin_dir=pin)
    b = bpfload.load("flows.c", *bpfload.SOURCES["flows.c"], pin_dir=pin)
    same = bpfload.prog_id(a.progs["netmon_flow_in"]) == bpfload.prog_id(b.progs["netmon_flow_in"])
    keys, vals = bpfload.lookup_batch(a.maps["netmon_flows"], 48, 56)
    print(names, same, bpfload.prog_name(a.progs["netmon_flow_out"]).decode(), len(keys))
""")


@pytest.mark.privileged
@pytest.mark.slow
def test_init_container_pins_and_agent_opens_pinned(tmp_path):
    """`python -m node_agent.bpfload pin DIR` compiles once; load() then opens the pinned
    objects (same program ids, no compile). Runs in a private mount namespace with its own
    bpffs, so nothing is pinned on this machine."""
    pin = tmp_path / "bpf"
    pin.mkdir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f'mount -t bpf bpf "{pin}" && exec "{sys.executable}" -c "$0" "{pin}"', PINNED],
                       capture_output=True, text=True, timeout=300, cwd=root,
                       env={**os.environ, "PYTHONPATH": root})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['netmon_dns_events',", "'netmon_dns_in',", "'netmon_dstats',", "'netmon_flow_in',",
                                "'netmon_flow_out',", "'netmon_flows',", "'netmon_fstats']", "True", "netmon_flow_out", "0"]
