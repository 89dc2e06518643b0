"""The DNS tracer against a real DNS server from Debian's packages (BIND's `named`) in a
network namespace, queried with `dig` from a client namespace whose process is in the traced
cgroup: EDNS answers beyond 512 bytes (40 A records behind a CNAME chain, 200 A records in a
4096-byte answer), AAAA, DNS over TCP (one segment and a response spanning segments), and
NXDOMAIN / empty answers filtered in the kernel. Every record must arrive."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import pytest

from tests.netns import TestCgroup, make_pair

pytestmark = pytest.mark.privileged

SERVER4, SERVER6, CLIENT4 = "10.77.0.2", "fd77::2", "10.77.0.1"
POOL_A = [f"198.51.100.{i}" for i in range(1, 41)]
POOL_AAAA = [f"2001:db8::{i:x}" for i in range(1, 21)]
BIG_A = [f"203.0.{113 + i // 250}.{i % 250 + 1}" for i in range(200)]
CHAIN = ("edge.cdn.shop.test", "pool.cdn.shop.test")


def zone_file() -> str:
    lines = ["$TTL 300", "@ IN SOA ns.shop.test. admin.shop.test. 1 3600 600 86400 60", "@ IN NS ns.shop.test.",
             f"ns IN A {SERVER4}", "www IN CNAME edge.cdn.shop.test.", "edge.cdn 60 IN CNAME pool.cdn.shop.test."]
    lines += [f"pool.cdn 120 IN A {ip}" for ip in POOL_A]
    lines += [f"pool.cdn 120 IN AAAA {ip}" for ip in POOL_AAAA]
    lines += [f"big IN A {ip}" for ip in BIG_A]
    lines += ["txt IN TXT \"no addresses here\""]
    return "\n".join(lines) + "\n"


def named_conf(d: str) -> str:
    return f"""
options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key";
  listen-on port 53 {{ {SERVER4}; }};
  listen-on-v6 port 53 {{ {SERVER6}; }};
  recursion no;
  dnssec-validation no;
  edns-udp-size 4096;
  max-udp-size 4096;
  minimal-responses yes;
  max-records-per-type 0;     # the zone has a 200-record RRset (BIND limits RRsets to 100 by default)
}};
controls {{ }};
zone "shop.test" {{ type primary; file "{d}/shop.test.zone"; }};
"""


@pytest.fixture
def bind_server():
    if not shutil.which("named") or not shutil.which("dig"):
        pytest.fail("bind9 and bind9-dnsutils are needed (scripts/setup.sh installs them)")
    client, server = make_pair("dpdns")
    d = tempfile.mkdtemp(prefix="dp-named-")
    os.chmod(d, 0o755)
    with open(f"{d}/shop.test.zone", "w") as f:
        f.write(zone_file())
    with open(f"{d}/named.conf", "w") as f:
        f.write(named_conf(d))
    proc = server.popen("named", "-g", "-u", "root", "-c", f"{d}/named.conf",
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:   # ready when it answers
            r = client.run("dig", "+short", "+time=1", "+tries=1", f"@{SERVER4}", "ns.shop.test", check=False)
            if r.stdout.strip() == SERVER4:
                break
            if proc.poll() is not None:
                pytest.fail("named exited: " + proc.stdout.read()[-2000:])
            time.sleep(0.2)
        else:
            pytest.fail("named did not answer within 30 s")
        yield client, server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        client.delete()
        server.delete()
        shutil.rmtree(d, ignore_errors=True)


def dig(client, cg, *args: str) -> str:
    r = subprocess.run(client.cmd("dig", "+time=3", "+tries=1", *args), preexec_fn=cg.enter,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def wait_for(tracer, key: str, n: int) -> None:
    deadline = time.monotonic() + 10
    while tracer.stats().get(key, 0) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def by_domain(lookups, client_ip: str) -> dict:
    out: dict = {}
    for x in lookups:
        assert x.client_ip == client_ip
        out.setdefault(x.domain, {})[x.ip] = (x.ttl_s, x.chain)
    return out


def test_bind_answers_arrive_whole_over_udp_edns_and_tcp(bind_server):
    from node_agent.dns.tracer import DnsTracer

    client, _server = bind_server
    cg = TestCgroup()
    tracer = DnsTracer(cgroup_path=cg.path)
    try:
        tracer.open()
        # --- EDNS over UDP (dig's default 1232-byte buffer): 40 A behind a two-CNAME chain
        out = dig(client, cg, f"@{SERVER4}", "www.shop.test", "A")
        assert out.count("\tA\t") == 40 and "MSG SIZE  rcvd: " in out
        assert int(out.split("MSG SIZE  rcvd: ")[1].split()[0]) > 512      # past the classic limit
        dig(client, cg, f"@{SERVER6}", "www.shop.test", "AAAA")             # IPv6 transport, AAAA
        wait_for(tracer, "dns_answers", 60)
        lookups = tracer.take_window()
        v4 = by_domain([x for x in lookups if x.client_ip == CLIENT4], CLIENT4)
        v6 = by_domain([x for x in lookups if x.client_ip == "fd77::1"], "fd77::1")
        assert v4 == {"www.shop.test": {ip: (120, CHAIN) for ip in POOL_A}}
        assert v6 == {"www.shop.test": {ip: (120, CHAIN) for ip in POOL_AAAA}}

        # --- a 4096-byte EDNS buffer: 200 A records (~3.3 kB) in one UDP datagram
        out = dig(client, cg, "+bufsize=4096", "+ignore", f"@{SERVER4}", "big.shop.test", "A")
        assert out.count("\tA\t") == 200 and " tc" not in out.split("flags:")[1].split(";")[0]
        wait_for(tracer, "dns_answers", 260)
        assert by_domain(tracer.take_window(), CLIENT4) == {"big.shop.test": {ip: (300, ()) for ip in BIG_A}}

        # --- DNS over TCP: one segment (40 records), then a response spanning segments (200):
        # the server's link sends no TCP segment larger than its MTU (no GSO/TSO super-packets)
        _server.run("ip", "link", "set", "dev", _server.dev, "gso_max_size", "1400")
        _server.run("ip", "link", "set", "dev", _server.dev, "gso_max_segs", "1")
        tcp_before = tracer.stats()["dns_tcp_messages"]
        dig(client, cg, "+tcp", f"@{SERVER4}", "www.shop.test", "A")
        out = dig(client, cg, "+tcp", f"@{SERVER4}", "big.shop.test", "A")
        assert out.count("\tA\t") == 200
        wait_for(tracer, "dns_tcp_messages", tcp_before + 2)
        assert tracer.stats()["dns_tcp_reassembled"] >= 1      # the 3.3 kB answer came in pieces
        got = by_domain(tracer.take_window(), CLIENT4)
        assert got == {"www.shop.test": {ip: (120, CHAIN) for ip in POOL_A},
                       "big.shop.test": {ip: (300, ()) for ip in BIG_A}}

        # --- NXDOMAIN and answers without addresses stay in the kernel
        before = tracer.stats()
        dig(client, cg, f"@{SERVER4}", "missing.shop.test", "A")
        dig(client, cg, f"@{SERVER4}", "txt.shop.test", "A")      # NOERROR, no records (NODATA)
        dig(client, cg, "+tcp", f"@{SERVER4}", "missing.shop.test", "A")
        deadline = time.monotonic() + 5
        while tracer.stats()["dns_filtered"] < before["dns_filtered"] + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = tracer.stats()
        assert after["dns_filtered"] == before["dns_filtered"] + 3
        assert after["dns_events"] == before["dns_events"] and tracer.take_window() == []
        assert after["dns_events_lost"] == 0 and after["dns_payload_truncated"] == 0
        assert after["dns_parse_errors"] == 0 and after["dns_tcp_gaps"] == 0
    finally:
        tracer.close()
        cg.remove()
