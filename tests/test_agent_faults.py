"""Faults of the agent process under traffic: kill -9 and SIGTERM of a real `netmon-agent run`
in a network namespace, restarted while its connections stay open.

The truth is the kernel's nft counters on the test traffic (every packet to and from the
server port, IP bytes as conntrack counts them). Connections are long-lived and keep sending
while the agent is down: the restarted agent continues from the state the killed one saved
at its last window, so the lake must hold exactly the nft bytes and packets, nothing lost
for the downtime or the killed process's partial window, nothing counted twice.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from lake_totals import flow_files, flow_rows, sum_counters
from netns import counting_table, nft_counters
from test_agent_e2e import PY, SERVER, AgentProc, setup_namespaces

pytestmark = pytest.mark.slow

PORT = 8080
NFT_COUNT = counting_table("netmon_fault_count", {
    "output": [(f"ip daddr 10.77.0.2 tcp dport {PORT}", "tx")],
    "input": [(f"ip saddr 10.77.0.2 tcp sport {PORT}", "rx")]}, priority=10)

# Long connections: each sends a chunk every `every` seconds for `n` chunks, then closes.
LONG_CLIENT = r"""
import socket, sys, threading, time
conns, n, every, size = (int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
def run(i):
    s = socket.create_connection(("10.77.0.2", 8080))
    for j in range(n):
        s.sendall(b"x" * (size + 7 * i))
        time.sleep(every)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
ts = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
for t in ts:
    t.start()
    time.sleep(0.05)
print("started", flush=True)
for t in ts:
    t.join()
print("done", flush=True)
"""


def lake_totals(lake) -> tuple[int, int, int, int, list[str]]:
    """(tx bytes, tx packets, rx bytes, rx packets) of the test connections, and the file names."""
    rows = [r for r in flow_rows(lake, "node-a")
            if r["proto"] == 6 and r["dst_ip"] == "10.77.0.2" and r["dst_port"] == PORT]
    assert all(r["direction"] == "outbound" and r["src_ip"] == "10.77.0.1" for r in rows)
    txb, txp, rxb, rxp = sum_counters(rows, lambda r: 0).get(0, (0, 0, 0, 0))
    return txb, txp, rxb, rxp, [f.name for f in flow_files(lake, "node-a")]


def wait_no_entries(ns, timeout=30.0) -> None:
    """Until the kernel has reaped every test connection (a listing reaps expired ones, which
    sends their DESTROY events)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = ns.run("conntrack", "-L", "-p", "tcp", "--dport", str(PORT), check=False).stdout
        if "dport=%d" % PORT not in live:
            return
        time.sleep(0.5)
    raise AssertionError(f"test connections still in the table:\n{live}")


@pytest.mark.privileged
@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_restart_under_traffic_loses_nothing_and_counts_nothing_twice(tmp_path, how):
    a, b = setup_namespaces()
    procs = []
    agent = None
    try:
        a.nft(NFT_COUNT)
        server = b.popen(PY, "-c", SERVER, stdout=subprocess.PIPE, text=True)
        procs.append(server)
        assert server.stdout.readline().strip() == "ready"
        lake, spool, log = tmp_path / "lake", tmp_path / "spool", str(tmp_path / "agent.log")
        args = ["run", "--standalone", "--lake", str(lake), "--spool", str(spool), "--node", "node-a",
                "--poll-interval", "1s", "--flush-interval", "2s", "--listen", "off", "--no-dns"]
        env = dict(os.environ)
        agent = AgentProc(a, args, log, env)
        agent.wait_for("agent running")
        # 6 connections, 1 chunk every 0.25 s for ~15 s: they span the kill, the downtime and the
        # restarted agent's start-up (imports, the 2 s datapath sample), so they end under it
        client = a.popen(PY, "-c", LONG_CLIENT, "6", "60", "0.25", "1400", stdout=subprocess.PIPE, text=True)
        procs.append(client)
        assert client.stdout.readline().strip() == "started"
        agent.wait_for(r"window \S+: [1-9]\d* rows", timeout=20, count=2)   # windows with traffic, state saved
        time.sleep(0.7)                                                      # mid-window
        if how == "sigkill":
            agent.kill()
        else:
            assert agent.terminate() == 0
        assert os.path.exists(spool / "accounter.state")
        time.sleep(2.0)                                                      # downtime: traffic goes on
        # a connection opened while no agent runs, still open when it is back
        late = a.popen(PY, "-c", LONG_CLIENT, "1", "24", "0.25", "900", stdout=subprocess.PIPE, text=True)
        procs.append(late)
        assert late.stdout.readline().strip() == "started"
        agent = AgentProc(a, args, log, env)
        agent.wait_for("continuing from the saved accounter state", timeout=30)
        assert client.wait(60) == 0 and late.wait(60) == 0
        wait_no_entries(a)
        time.sleep(2.5)                                                      # their DESTROYs are drained
        assert agent.terminate() == 0
        counters = nft_counters(a, "netmon_fault_count")
    finally:
        if agent is not None:
            agent.kill()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        a.delete()
        b.delete()
    text = open(log).read()
    assert "discarded" not in text, text
    txb, txp, rxb, rxp, names = lake_totals(lake)
    assert len(names) == len(set(names))
    assert (txp, txb) == counters["tx"], text
    assert (rxp, rxb) == counters["rx"], text
    # 7 connections of at least 60 * 1400 (or 24 * 900) payload bytes each went through
    assert txb > 6 * 60 * 1400 + 24 * 900


@pytest.mark.privileged
def test_a_state_from_another_namespace_is_discarded(tmp_path):
    """A saved state is only valid for the network namespace (and boot) it was saved in: a
    spool moved to another node's agent starts from a new baseline, with one log line."""
    a, b = setup_namespaces()
    agent = None
    try:
        lake, spool, log = tmp_path / "lake", tmp_path / "spool", str(tmp_path / "agent.log")
        args = ["run", "--standalone", "--lake", str(lake), "--spool", str(spool), "--node", "node-a",
                "--poll-interval", "1s", "--flush-interval", "2s", "--listen", "off", "--no-dns"]
        agent = AgentProc(a, args, log, dict(os.environ))
        agent.wait_for(r"window \S+:", timeout=20)
        assert agent.terminate() == 0
        agent = AgentProc(b, args, log, dict(os.environ))      # same spool, another namespace
        agent.wait_for("agent running", timeout=30, count=2)
        assert agent.terminate() == 0
    finally:
        if agent is not None:
            agent.kill()
        a.delete()
        b.delete()
    text = open(log).read()
    assert re.search(r"saved accounter state \S+ discarded \(saved for netns \d+, this is \d+\): starting from a new baseline", text), text
