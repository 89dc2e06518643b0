"""node_agent/netlink/rtnl.py: the agent's own rtnetlink link and address dumps.

Against iproute2's view (`ip -j`) of a namespace we build with veths, VXLAN devices (IANA
port, kernel default port) and a point-to-point address; malformed input never raises."""
from __future__ import annotations

import json
import os
import random

import pytest

from node_agent.netlink import rtnl
from tests.netns import sh


def test_attrs_survive_garbage():
    rnd = random.Random(12)
    for _ in range(3000):
        buf = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 64)))
        for typ, val in rtnl.attrs(buf, 0, len(buf)):
            assert 0 <= typ < 0x4000 and len(val) <= len(buf)


@pytest.mark.privileged
def test_links_and_addresses_match_iproute2():
    ns = f"adp-rtnl-{os.urandom(3).hex()}"
    sh("ip", "netns", "add", ns)
    try:
        def ip(*a):
            return sh("ip", "-n", ns, *a)

        ip("link", "add", "vx4789", "type", "vxlan", "id", "7", "dstport", "4789")
        ip("link", "add", "vxdef", "type", "vxlan", "id", "8", "dstport", "0")   # kernel default
        ip("link", "add", "va", "type", "veth", "peer", "name", "vb")
        ip("addr", "add", "10.91.0.1/24", "dev", "va")
        ip("addr", "add", "10.91.0.5", "peer", "10.91.0.6", "dev", "vb")   # IFA_LOCAL != IFA_ADDRESS
        ip("-6", "addr", "add", "fd91::1/64", "dev", "va", "nodad")
        for dev in ("lo", "va", "vb"):
            ip("link", "set", dev, "up")
        sh("ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-q", "10.91.0.5")

        before = json.loads(ip("-j", "-s", "-d", "link", "show").stdout)
        links = {link.name: link for link in rtnl.links(ns)}
        after = {d["ifname"]: d for d in json.loads(ip("-j", "-s", "-d", "link", "show").stdout)}
        assert set(links) == {d["ifname"] for d in before} == set(after)
        for d in before:   # counters between iproute2's two dumps (IPv6 chatter may move them)
            got, d2 = links[d["ifname"]], after[d["ifname"]]
            assert got.index == d["ifindex"]
            assert got.kind == d.get("linkinfo", {}).get("info_kind")
            for k, v in (("rx", got.rx_bytes), ("tx", got.tx_bytes)):
                assert d["stats64"][k]["bytes"] <= v <= d2["stats64"][k]["bytes"]
        assert (links["vx4789"].port, links["vxdef"].port) == (4789, 8472)
        assert links["va"].port is None and links["va"].rx_bytes > 0

        addrs = rtnl.addresses(ns)
        want = {a.get("local") for d in json.loads(ip("-j", "addr", "show").stdout) for a in d["addr_info"]}
        assert addrs == want
        assert {"10.91.0.1", "10.91.0.5", "fd91::1", "127.0.0.1", "::1"} <= addrs and "10.91.0.6" not in addrs
    finally:
        sh("ip", "netns", "delete", ns, check=False)
