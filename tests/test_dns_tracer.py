"""DNS tracer end to end: a real DNS server (dnslib) in one network namespace, a client in
another resolving over UDP (IPv4 and IPv6 transport), the BCC program on the client's cgroup,
and the raw/dns rows written to a lake and read back."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import time

import pytest

from lake.storage import open_lake
from lake.writer import write_raw
from netns import TestCgroup, make_pair

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

SERVER = textwrap.dedent("""
    import socket, socketserver, sys, time
    from dnslib import RR, QTYPE, A, AAAA, CNAME, RCODE
    from dnslib.server import DNSServer, BaseResolver

    ZONE = {
        ("a.test.", "A"): [RR("a.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=300),
                          RR("a.test", QTYPE.A, rdata=A("192.0.2.2"), ttl=300)],
        ("v6.test.", "AAAA"): [RR("v6.test", QTYPE.AAAA, rdata=AAAA("2001:db8::5"), ttl=60)],
        ("www.shop.test.", "A"): [RR("www.shop.test", QTYPE.CNAME, rdata=CNAME("edge.cdn.test"), ttl=30),
                                  RR("edge.cdn.test", QTYPE.A, rdata=A("198.51.100.7"), ttl=20)],
        ("www.shop.test.", "AAAA"): [RR("www.shop.test", QTYPE.CNAME, rdata=CNAME("edge.cdn.test"), ttl=30),
                                     RR("edge.cdn.test", QTYPE.AAAA, rdata=AAAA("2001:db8::7"), ttl=20)],
    }

    class Zone(BaseResolver):
        def resolve(self, request, handler):
            reply = request.reply()
            rrs = ZONE.get((str(request.q.qname), QTYPE[request.q.qtype]))
            if rrs is None:
                reply.header.rcode = RCODE.NXDOMAIN
            for rr in rrs or []:
                reply.add_answer(rr)
            return reply

    class UDP6(socketserver.UDPServer):
        address_family = socket.AF_INET6
        allow_reuse_address = True

    DNSServer(Zone(), address="0.0.0.0", port=53).start_thread()
    DNSServer(Zone(), address="::", port=53, server=UDP6).start_thread()
    print("ready", flush=True)
    time.sleep(120)
""")

CLIENT = textwrap.dedent("""
    import sys
    from dnslib import DNSRecord
    server, ipv6 = sys.argv[1], sys.argv[2] == "6"
    for name, qtype in [("a.test", "A"), ("v6.test", "AAAA"), ("www.shop.test", "A"),
                        ("www.shop.test", "AAAA"), ("missing.test", "A")]:
        DNSRecord.parse(DNSRecord.question(name, qtype).send(server, 53, ipv6=ipv6, timeout=5))
    print("done")
""")


def test_tracer_writes_client_domain_and_every_ip(tmp_path):
    from node_agent import bpfload
    from node_agent.dns.exporter import dns_table
    from node_agent.dns.tracer import DnsTracer

    cg = TestCgroup()
    cgroup = cg.path
    client, server = make_pair("nmdns")
    tracer = DnsTracer(cgroup_path=cgroup)
    srv = None
    left = None
    try:
        srv = server.popen(sys.executable, "-c", SERVER, stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
        tracer.open()
        assert bpfload.attached_names(cgroup, bpfload.CGROUP_INET_INGRESS) == [b"netmon_dns_in"]

        ws = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        for addr, fam in (("10.77.0.2", "4"), ("fd77::2", "6")):
            r = subprocess.run(client.cmd(sys.executable, "-c", CLIENT, addr, fam), preexec_fn=cg.enter,
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10
        while tracer.stats()["dns_responses"] < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        lookups = tracer.take_window()
        assert tracer.lookup("198.51.100.7") == "www.shop.test"
        stats = tracer.stats()
        assert stats["dns_parse_errors"] == 0 and stats["dns_events_lost"] == 0
        assert stats["dns_responses"] == 8        # the answers with records
        assert stats["dns_filtered"] == 2         # the NXDOMAINs stayed in the kernel

        lake = open_lake(f"file://{tmp_path}/lake")
        rel = write_raw(lake, "raw/dns", "node-a", ws, dns_table(lookups, ws, ws + dt.timedelta(minutes=1), "node-a"))
        rows = lake.read_table(rel).to_pylist()
    finally:
        tracer.close()
        left = bpfload.attached_names(cgroup, bpfload.CGROUP_INET_INGRESS)
        if srv is not None:
            srv.kill()
            srv.wait()
        client.delete()
        server.delete()
        cg.remove()

    got = {(r["client_ip"], r["domain"], r["ip"], r["ttl_s"]) for r in rows}
    want = set()
    for cip in ("10.77.0.1", "fd77::1"):
        want |= {(cip, "a.test", "192.0.2.1", 300), (cip, "a.test", "192.0.2.2", 300),
                 (cip, "v6.test", "2001:db8::5", 60), (cip, "www.shop.test", "198.51.100.7", 20),
                 (cip, "www.shop.test", "2001:db8::7", 20)}
    assert got == want
    assert all(r["node"] == "node-a" and r["seen_at"] >= ws for r in rows)
    assert left == []   # close() detached the program
