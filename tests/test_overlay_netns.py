"""A real VXLAN overlay between two "nodes" (network namespaces on an underlay veth), with a
"pod" namespace behind each: the agent's conntrack collector on node 1 must count the pod
flow exactly once (bytes == nft counters of the inner packets) and report the outer UDP
entries of the node's own tunnel only as excluded bytes (== nft counters of the outer
packets). The tunnel port is read from the device over netlink: one run uses the IANA port
4789, one the Linux default 8472 (Flannel)."""
from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import time

import pytest

from node_agent.accounter import Accounter
from node_agent.collectors.conntrack import ConntrackCollector
from node_agent.tunnels import detect
from tests.netns import counting_table
from tests.topo import Sink, link, new_ns, nft_counter, router, tcp_transfer

pytestmark = pytest.mark.privileged
POD1, POD2 = "10.244.1.2", "10.244.2.2"
UNDER1, UNDER2 = "192.168.77.1", "192.168.77.2"
T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def overlay(port: int | None, up_preexec=None):
    """The four namespaces; `up_preexec` runs before node 1's `ip link set vxlan0 up` (the
    kernel creates the device's UDP socket then, in that process's cgroup)."""
    p1, n1, n2, p2 = new_ns("dpo-p1"), new_ns("dpo-n1"), new_ns("dpo-n2"), new_ns("dpo-p2")
    nss = (p1, n1, n2, p2)
    try:
        for ns in nss:   # no IPv6 neighbour/router chatter in the tunnel at random moments
            for k in ("all", "default"):
                ns.run("sysctl", "-qw", f"net.ipv6.conf.{k}.disable_ipv6=1")
        link(n1, "eth0", f"{UNDER1}/24", n2, "eth0", f"{UNDER2}/24")
        link(p1, "eth0", f"{POD1}/24", n1, "vpod", "10.244.1.1/24")
        link(p2, "eth0", f"{POD2}/24", n2, "vpod", "10.244.2.1/24")
        for pod, n in ((p1, n1), (p2, n2)):   # pods get the overlay's MTU, as CNIs set it (no PMTU drops)
            pod.run("ip", "link", "set", "eth0", "mtu", "1450")
            n.run("ip", "link", "set", "vpod", "mtu", "1450")
        p1.run("ip", "route", "add", "default", "via", "10.244.1.1")
        p2.run("ip", "route", "add", "default", "via", "10.244.2.1")
        for n, local, remote, ov, peer_ov, peer_cidr in (
                (n1, UNDER1, UNDER2, "10.244.0.1", "10.244.0.2", "10.244.2.0/24"),
                (n2, UNDER2, UNDER1, "10.244.0.2", "10.244.0.1", "10.244.1.0/24")):
            router(n)
            n.run("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
            args = ["ip", "link", "add", "vxlan0", "type", "vxlan", "id", "42", "local", local,
                    "remote", remote, "dev", "eth0"]
            if port is not None:
                args += ["dstport", str(port)]
            n.run(*args)
            n.run("ip", "addr", "add", f"{ov}/24", "dev", "vxlan0")
            if n is n1 and up_preexec is not None:
                subprocess.run(n.cmd("ip", "link", "set", "vxlan0", "up"), preexec_fn=up_preexec, check=True)
            else:
                n.run("ip", "link", "set", "vxlan0", "up")
            n.run("ip", "route", "add", peer_cidr, "via", peer_ov, "dev", "vxlan0")
        udp = port or 8472
        n1.nft(counting_table("dpo", {
            "forward": [(f"ip saddr {POD1} ip daddr {POD2}", "inner_tx"), (f"ip saddr {POD2} ip daddr {POD1}", "inner_rx")],
            "output": [(f"udp dport {udp}", "outer")],
            "input": [(f"udp dport {udp}", "outer")]}))
        return nss
    except Exception:
        for ns in nss:
            ns.delete()
        raise


@pytest.mark.parametrize("port", [4789, None], ids=["vxlan-4789", "vxlan-default-8472"])
def test_pod_traffic_inside_the_overlay_is_counted_once(port):
    p1, n1, n2, p2 = nss = overlay(port)
    sink = Sink(p2, POD2, 9000)
    coll = ConntrackCollector(netns=n1.name)
    try:
        t = detect(n1.name)
        assert t.udp_ports == {port or 8472} and ("vxlan0", "vxlan", port or 8472) in t.devices
        tcp_transfer(p1, POD2, 9000, 20_000)   # before the agent: the tunnel entries exist already
        time.sleep(0.3)                         # its close handshake is over
        _p, outer_base = nft_counter(n1, "dpo", "outer")
        coll.open()                             # the tunnel filter's baseline: its first dump
        acc = Accounter()
        acc.poll(coll)                          # the accounter's baseline
        _p, tx_base = nft_counter(n1, "dpo", "inner_tx")
        _p, rx_base = nft_counter(n1, "dpo", "inner_rx")
        tcp_transfer(p1, POD2, 9000, 300_000)
        acc.poll(coll)
        tcp_transfer(p1, POD2, 9000, 100_000)
        time.sleep(0.2)
        acc.poll(coll)
        rows = acc.cut(T0, T0 + dt.timedelta(seconds=60), "node-1", {POD1, UNDER1, "10.244.0.1"}.__contains__).to_pylist()
        _p, tx = nft_counter(n1, "dpo", "inner_tx")
        _p, rx = nft_counter(n1, "dpo", "inner_rx")
        _p, outer = nft_counter(n1, "dpo", "outer")
        pod_rows = [r for r in rows if r["src_ip"] == POD1]
        assert [(r["dst_ip"], r["dst_port"], r["connections"]) for r in pod_rows] == [(POD2, 9000, 2)]
        (r,) = pod_rows
        assert rows == pod_rows, rows           # no node-to-node row for the encapsulation
        st = coll.stats()
        assert st["tunnel_excluded_bytes"] == outer - outer_base, (st, outer, outer_base)
        assert st["entries_without_counters"] == 0
        assert st["tunnel_entries"] >= 1 and st["tunnel_excluded_bytes"] > r["tx_bytes"]
        assert (r["tx_bytes"], r["rx_bytes"]) == (tx - tx_base, rx - rx_base)   # inner bytes, once
    finally:
        coll.close()
        sink.close()
        for ns in nss:
            ns.delete()


def test_ebpf_mode_never_sees_the_encapsulation():
    """cgroup_skb programs see sockets' packets: the pod's flow (and a node process's flow
    over the overlay), never the outer VXLAN datagrams, even with the kernel's VXLAN socket in
    the cgroup the programs are attached to (as on a node, where the CNI's process brings the
    device up under the cgroup root). Egress: the program runs only when the packet belongs
    to the socket sending it (the outer packet carries the inner packet's socket, or none
    when forwarded); ingress: the VXLAN socket's encap_rcv takes the datagram before the
    socket filter where cgroup ingress programs run. So eBPF mode needs no tunnel filter."""
    import socket
    import sys

    from node_agent.collectors.ebpf import EbpfCollector
    from tests.netns import TestCgroup

    cg = TestCgroup()
    p1, n1, n2, p2 = nss = overlay(4789, up_preexec=cg.enter)
    sink = Sink(p2, POD2, 9000)
    eb = EbpfCollector(cgroup_path=cg.path, conntrack_netns=n1.name, nat_source=lambda: [])
    code = (f"import socket; s = socket.create_connection(('{POD2}', 9000)); s.sendall(b'x' * 200000); "
            "s.shutdown(1)\nwhile s.recv(65536): pass")
    try:
        # the device's kernel socket is in our cgroup (ss prints the cgroup id, the directory's
        # inode, in hex when it cannot find the path)
        ss = n1.run("ss", "-uan", "--cgroup", "sport", "=", ":4789").stdout
        ino = os.stat(cg.path).st_ino
        assert re.search(rf":4789\s.*cgroup:(\S*:{ino:x}\b|\S*/{os.path.basename(cg.path)}\b)", ss), ss
        eb.open()
        _p, tx0 = nft_counter(n1, "dpo", "inner_tx")
        _p, rx0 = nft_counter(n1, "dpo", "inner_rx")
        _p, outer0 = nft_counter(n1, "dpo", "outer")
        for ns in (p1, n1):       # from a pod, and from the node itself (over the overlay)
            subprocess.run(ns.cmd(sys.executable, "-c", code), preexec_fn=cg.enter, check=True, timeout=30)
        time.sleep(0.3)
        _p, tx1 = nft_counter(n1, "dpo", "inner_tx")
        _p, rx1 = nft_counter(n1, "dpo", "inner_rx")
        _p, outer1 = nft_counter(n1, "dpo", "outer")
        assert outer1 - outer0 > 2 * 200_000      # the outer datagrams did pass node 1's stack
        flows = {(socket.inet_ntop(socket.AF_INET, s.src), socket.inet_ntop(socket.AF_INET, s.dst), s.proto, s.dport): s
                 for s in eb.dump()}
        assert set(flows) == {(POD1, POD2, 6, 9000), ("10.244.0.1", POD2, 6, 9000)}, flows   # no UDP 4789
        pod = flows[(POD1, POD2, 6, 9000)]
        assert (pod.orig_bytes, pod.reply_bytes) == (tx1 - tx0, rx1 - rx0)   # the pod's bytes, as forwarded
    finally:
        eb.close()
        sink.close()
        for ns in nss:
            ns.delete()
        cg.remove()
