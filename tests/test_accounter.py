"""Accounter rules with hand-computed numbers (no kernel needed; test_conntrack_netns.py
checks the same rules against the real conntrack table)."""
from __future__ import annotations

import datetime as dt
import socket

import pyarrow as pa
import pytest

from lake.schema import FLOW_KEY, RAW_FLOWS
from node_agent.accounter import Accounter
from node_agent.collectors.base import Collector
from node_agent.flows import ConnSample

@pytest.fixture(autouse=True, params=["compact", "dict"])
def state_backend(request, monkeypatch):
    """Every rule holds with the compact state (node_agent/_cttable.c) and with the dict
    the accounter falls back to when the extension is not built."""
    import node_agent.accounter as acc

    if request.param == "dict":
        monkeypatch.setattr(acc, "CounterTable", None)
    elif acc.CounterTable is None:
        pytest.skip("node_agent._cttable is not built (pip install -e .)")
    return request.param


T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
T1 = T0 + dt.timedelta(seconds=60)
NODE_IP, POD_IP, PEER, SVC, BACKEND = "10.0.0.5", "10.1.0.7", "10.2.0.9", "10.96.0.10", "10.1.3.4"
LOCAL = {NODE_IP, POD_IP, "fd00::5"}


def ip(s: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in s else socket.AF_INET, s)


def conn(ct_id, src, dst, sport, dport, ob, op, rb, rp, *, proto=6, reply_src=None, reply_sport=None, ended=False):
    fam = 6 if ":" in src else 4
    return ConnSample(ct_id, fam, proto, ip(src), ip(dst), sport, dport, ip(reply_src or dst),
                      dport if reply_sport is None else reply_sport, ob, op, rb, rp, ended)


def ended(s: ConnSample, ob, op, rb, rp) -> ConnSample:
    return s._replace(orig_bytes=ob, orig_packets=op, reply_bytes=rb, reply_packets=rp, ended=True)


def rows(table: pa.Table) -> list[dict]:
    assert table.schema.equals(RAW_FLOWS, check_metadata=True)
    return table.to_pylist()


def key_of(r: dict) -> tuple:
    return tuple(r[k] for k in FLOW_KEY)


def totals(r: dict) -> tuple:
    return r["tx_bytes"], r["tx_packets"], r["rx_bytes"], r["rx_packets"], r["connections"]


class Scripted(Collector):
    """Replays prepared dumps and event batches through the Collector interface."""

    def __init__(self, steps):
        self.steps = list(steps)  # [(ended_before_dump, dump), ...]
        self._pending_dump = None
        self._ended_queue: list[list[ConnSample]] = []

    def drain_ended(self):
        return self._ended_queue.pop(0) if self._ended_queue else []

    def dump(self):
        return self._pending_dump

    def step(self):
        ended_list, dump = self.steps.pop(0)
        self._ended_queue = [ended_list, []]
        self._pending_dump = dump


def test_first_dump_is_a_baseline_then_exact_deltas():
    a = Accounter()
    c1 = conn(1, POD_IP, PEER, 40000, 443, 5000, 10, 90000, 70)
    a.observe_dump([c1])
    assert a.cut(T0, T1, "n1", LOCAL).num_rows == 0  # the lifetime before start is not traffic
    a.observe_dump([c1._replace(orig_bytes=5600, orig_packets=14, reply_bytes=91500, reply_packets=73)])
    a.observe_dump([c1._replace(orig_bytes=6000, orig_packets=15, reply_bytes=91500, reply_packets=73)])
    (r,) = rows(a.cut(T0, T1, "n1", LOCAL))
    assert totals(r) == (1000, 5, 1500, 3, 1)  # 6000-5000, 15-10, 91500-90000, 73-70; one connection
    assert (r["window_start"], r["window_end"], r["node"]) == (T0, T1, "n1")
    assert (r["direction"], r["src_ip"], r["dst_ip"], r["orig_dst_ip"], r["orig_dst_port"], r["dst_port"], r["proto"]) == (
        "outbound", POD_IP, PEER, PEER, 443, 443, 6)
    assert r["src_pod"] is None and r["dst_namespace"] is None
    # the next window starts from zero: idle connection -> no rows
    a.observe_dump([c1._replace(orig_bytes=6000, orig_packets=15, reply_bytes=91500, reply_packets=73)])
    assert a.cut(T1, T1 + dt.timedelta(seconds=60), "n1", LOCAL).num_rows == 0


def test_new_connection_after_baseline_counts_in_full_and_reuse_is_new():
    a = Accounter()
    old = conn(7, POD_IP, PEER, 40001, 80, 1000, 5, 2000, 4)
    a.observe_dump([old])
    # same 5-tuple, new conntrack id: a new connection, counted from zero (not 300-1000)
    reused = conn(8, POD_IP, PEER, 40001, 80, 300, 3, 700, 2)
    a.observe_ended([])
    a.observe_dump([reused])
    (r,) = rows(a.cut(T0, T1, "n1", LOCAL))
    assert totals(r) == (300, 3, 700, 2, 1)
    assert a.stats()["new"] == 1


def test_counter_reset_gives_the_current_value():
    a = Accounter()
    c = conn(3, POD_IP, PEER, 40002, 53, 5000, 50, 8000, 50, proto=17)
    a.observe_dump([c])
    a.observe_dump([c._replace(orig_bytes=120, orig_packets=2, reply_bytes=8100, reply_packets=51)])
    (r,) = rows(a.cut(T0, T1, "n1", LOCAL))
    assert totals(r) == (120, 2, 100, 1, 1)  # orig went backwards -> 120/2; reply 8100-8000, 51-50
    assert a.stats()["resets"] == 1


def test_ended_connection_gives_its_final_delta_once_then_is_forgotten():
    a = Accounter()
    c = conn(11, POD_IP, PEER, 40003, 443, 100, 1, 200, 1)
    a.observe_dump([c])
    a.observe_dump([c._replace(orig_bytes=400, orig_packets=4)])
    fin = ended(c, 900, 7, 1200, 6)
    a.observe_ended([fin])
    a.observe_ended([fin])  # a duplicate event must not count again
    a.observe_dump([])
    (r,) = rows(a.cut(T0, T1, "n1", LOCAL))
    assert totals(r) == (800, 6, 1000, 5, 1)  # 900-100, 7-1, 1200-200, 6-1
    a.observe_dump([])
    assert a.cut(T0, T1, "n1", LOCAL).num_rows == 0


def test_connection_seen_only_through_its_destroy_counts_in_full_but_not_before_start():
    a = Accounter()
    pre = ended(conn(20, POD_IP, PEER, 40010, 80, 0, 0, 0, 0), 5000, 9, 7000, 8)
    a.observe_ended([pre])  # ended before the baseline: its bytes predate the agent
    a.observe_dump([])
    a.observe_ended([])  # the drain after the baseline: from now on unseen connections count
    short = ended(conn(21, POD_IP, PEER, 40011, 80, 0, 0, 0, 0), 640, 6, 1280, 5)
    a.observe_ended([short])
    (r,) = rows(a.cut(T0, T1, "n1", LOCAL))
    assert totals(r) == (640, 6, 1280, 5, 1)
    assert a.stats()["ended_before_start"] == 1 and a.stats()["ended_unseen"] == 1


def test_missing_from_dump_then_destroy_counts_from_last_seen_not_from_zero():
    """The race that would double count: an entry vanishes from a dump and its DESTROY is
    drained only at the next poll. The tombstone keeps its last counters for that drain."""
    a = Accounter()
    c = conn(30, POD_IP, PEER, 40020, 443, 1000, 10, 2000, 10)
    a.observe_dump([c])
    a.observe_ended([])
    a.observe_dump([])  # ended during this dump: not in it
    a.observe_ended([ended(c, 1500, 13, 2600, 12)])
    (r,) = rows(a.cut(T0, T1, "n1", LOCAL))
    assert totals(r) == (500, 3, 600, 2, 1)
    # without a DESTROY a tombstone stays in limbo one more poll, then is forgotten
    d = conn(31, POD_IP, PEER, 40021, 443, 10, 1, 10, 1)
    a.observe_dump([d])
    a.observe_dump([])
    a.observe_ended([])
    assert a.stats()["forgotten"] == 0
    a.observe_dump([])
    a.observe_ended([])
    assert a.stats()["forgotten"] == 1


def test_entry_skipped_by_one_dump_continues_from_its_last_counters():
    """A dump that misses a live entry must not make the next dump count it as new."""
    a = Accounter()
    c = conn(32, POD_IP, PEER, 40022, 443, 1000, 10, 1000, 10)
    a.observe_dump([c])
    a.observe_ended([])
    a.observe_dump([])     # skipped (not ended): tombstone
    a.observe_ended([])    # no DESTROY: limbo
    a.observe_dump([c._replace(orig_bytes=1200, orig_packets=12)])
    (r,) = rows(a.cut(T0, T1, "n1", LOCAL))
    assert totals(r) == (200, 2, 0, 0, 1)
    assert a.stats()["new"] == 0 and a.stats()["forgotten"] == 0


def test_dying_entry_dumped_after_its_destroy_is_not_counted_again():
    a = Accounter()
    c = conn(40, POD_IP, PEER, 40030, 443, 10, 1, 10, 1)
    a.observe_dump([c])
    a.observe_ended([])
    fin = ended(c, 50, 2, 60, 2)
    a.observe_ended([fin])
    a.observe_dump([fin._replace(ended=False)])  # same counters: the entry was still unlinking
    (r,) = rows(a.cut(T0, T1, "n1", LOCAL))
    assert totals(r) == (40, 1, 50, 1, 1)
    assert a.stats()["dying_skipped"] == 1


def test_window_cut_aggregates_by_flow_key_and_counts_connections():
    a = Accounter()
    # two connections to one ClusterIP DNAT'ed to the same backend: one row, two connections
    c1 = conn(50, POD_IP, SVC, 41000, 80, 0, 0, 0, 0, reply_src=BACKEND, reply_sport=8080)
    c2 = conn(51, POD_IP, SVC, 41001, 80, 0, 0, 0, 0, reply_src=BACKEND, reply_sport=8080)
    # a third to another backend: its own row
    c3 = conn(52, POD_IP, SVC, 41002, 80, 0, 0, 0, 0, reply_src="10.1.3.5", reply_sport=8080)
    a.observe_dump([])
    a.observe_dump([c1._replace(orig_bytes=100, orig_packets=2, reply_bytes=1000, reply_packets=2),
                    c2._replace(orig_bytes=200, orig_packets=3, reply_bytes=2000, reply_packets=3),
                    c3._replace(orig_bytes=7, orig_packets=1)])
    a.observe_dump([c1._replace(orig_bytes=150, orig_packets=3, reply_bytes=1500, reply_packets=3),
                    c2._replace(orig_bytes=200, orig_packets=3, reply_bytes=2000, reply_packets=3),
                    c3._replace(orig_bytes=7, orig_packets=1)])
    got = {r["dst_ip"]: r for r in rows(a.cut(T0, T1, "n1", LOCAL))}
    assert totals(got[BACKEND]) == (150 + 200, 3 + 3, 1500 + 2000, 3 + 3, 2)  # c1 seen in two polls: one connection
    assert totals(got["10.1.3.5"]) == (7, 1, 0, 0, 1)
    r = got[BACKEND]
    assert (r["orig_dst_ip"], r["orig_dst_port"], r["dst_port"]) == (SVC, 80, 8080)
    assert len({key_of(r) for r in got.values()}) == 2


def test_direction_transit_and_ipv6():
    a = Accounter()
    out6 = conn(60, "fd00::5", "2001:db8::1", 50000, 443, 0, 0, 0, 0)
    inbound = conn(61, PEER, NODE_IP, 33000, 30080, 0, 0, 0, 0, reply_src=POD_IP, reply_sport=8080)  # NodePort
    inbound_direct = conn(62, PEER, POD_IP, 33001, 8080, 0, 0, 0, 0)
    transit = conn(63, "192.168.1.1", "192.168.1.2", 1000, 2000, 0, 0, 0, 0)
    a.observe_dump([])
    a.observe_dump([s._replace(orig_bytes=100, orig_packets=1, reply_bytes=10, reply_packets=1)
                    for s in (out6, inbound, inbound_direct, transit)])
    got = {(r["direction"], r["src_ip"], r["orig_dst_ip"]): r for r in rows(a.cut(T0, T1, "n1", lambda s: s in LOCAL))}
    assert set(got) == {("outbound", "fd00::5", "2001:db8::1"), ("inbound", PEER, NODE_IP), ("inbound", PEER, POD_IP)}
    assert got[("inbound", PEER, NODE_IP)]["dst_ip"] == POD_IP
    assert a.stats()["transit_flows"] == 1 and a.stats()["transit_bytes"] == 110


def test_icmp_and_zero_delta_rows():
    a = Accounter()
    ping = conn(70, POD_IP, PEER, 1234, 0, 84, 1, 84, 1, proto=1, reply_sport=0)
    idle = conn(71, POD_IP, PEER, 40100, 22, 5, 1, 5, 1)
    a.observe_dump([idle])
    a.observe_dump([ping, idle])
    (r,) = rows(a.cut(T0, T1, "n1", LOCAL))
    assert (r["proto"], r["orig_dst_port"], r["dst_port"], totals(r)) == (1, 0, 0, (84, 1, 84, 1, 1))


def test_poll_order_through_the_collector_interface():
    """poll(): drain ended, then dump; the first poll is the baseline (events before and
    during it are not counted)."""
    c = conn(80, POD_IP, PEER, 40200, 443, 1000, 10, 1000, 10)
    short_pre = ended(conn(81, POD_IP, PEER, 40201, 443, 0, 0, 0, 0), 99, 1, 99, 1)
    short = ended(conn(82, POD_IP, PEER, 40202, 443, 0, 0, 0, 0), 300, 3, 400, 2)
    coll = Scripted([
        ([short_pre], [c]),
        ([short], [c._replace(orig_bytes=1100, orig_packets=11)]),
        ([ended(c, 1150, 12, 1300, 12)], []),
    ])
    a = Accounter()
    for _ in range(3):
        coll.step()
        a.poll(coll)
    got = {r["orig_dst_port"]: totals(r) for r in rows(a.cut(T0, T1, "n1", LOCAL))}
    assert got == {443: (150 + 300, 2 + 3, 300 + 400, 2 + 2, 2)}


def test_cut_returns_empty_table_with_the_contract_schema():
    t = Accounter().cut(T0, T1, "n1", set())
    assert t.num_rows == 0 and t.schema.equals(RAW_FLOWS, check_metadata=True)


def test_naive_window_is_rejected():
    a = Accounter()
    a.observe_dump([])
    a.observe_dump([conn(90, POD_IP, PEER, 1, 2, 1, 1, 1, 1)])
    naive = dt.datetime(2026, 1, 1)
    with pytest.raises(ValueError, match="naive"):
        a.cut(naive, naive, "n1", LOCAL)


def test_cut_does_not_import_pandas():
    """pa.array(list) imports pandas (~55 MiB); the agent's 128 MiB budget cannot carry it."""
    import subprocess
    import sys

    code = (
        "import sys, datetime as dt, socket\n"
        "from node_agent.accounter import Accounter\n"
        "from node_agent.flows import ConnSample\n"
        "a = Accounter(); a.observe_dump([])\n"
        "ip = lambda s: socket.inet_pton(socket.AF_INET, s)\n"
        "a.observe_dump([ConnSample(1, 4, 6, ip('10.0.0.1'), ip('10.0.0.2'), 1, 2, ip('10.0.0.2'), 2, 5, 1, 6, 1, False)])\n"
        "t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)\n"
        "assert a.cut(t, t, 'n1', {'10.0.0.1'}).num_rows == 1\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=__file__.rsplit("/tests/", 1)[0])
    assert out.stdout.strip() == "False"


def test_connection_count_restarts_every_window():
    a = Accounter()
    c = conn(95, POD_IP, PEER, 40300, 443, 0, 0, 0, 0)
    a.observe_dump([c])
    for b in (100, 200):                       # window 1: two polls with traffic
        a.observe_dump([c._replace(orig_bytes=b, orig_packets=b // 100)])
    (r1,) = rows(a.cut(T0, T1, "n1", LOCAL))
    a.observe_dump([c._replace(orig_bytes=200, orig_packets=2)])   # idle poll
    a.observe_dump([c._replace(orig_bytes=350, orig_packets=3)])   # window 2
    a.observe_ended([ended(c, 400, 4, 10, 1)])                      # and its end
    (r2,) = rows(a.cut(T1, T1 + dt.timedelta(seconds=60), "n1", LOCAL))
    assert totals(r1) == (200, 2, 0, 0, 1)
    assert totals(r2) == (200, 2, 10, 1, 1)


def test_loopback_flows_never_leave_the_node_and_are_not_reported():
    a = Accounter()
    probe = conn(80, "127.0.0.1", "127.0.0.1", 40000, 9808, 0, 0, 0, 0)
    probe6 = conn(81, "::1", "::1", 40001, 9808, 0, 0, 0, 0)
    # a local proxy DNAT'ing a pod's request to loopback is loopback too: its peer is 127.0.0.53
    dns = conn(82, POD_IP, "10.96.0.10", 40002, 53, 0, 0, 0, 0, proto=17, reply_src="127.0.0.53")
    real = conn(83, POD_IP, PEER, 40003, 443, 0, 0, 0, 0)
    a.observe_dump([])
    a.observe_dump([s._replace(orig_bytes=100, orig_packets=1, reply_bytes=20, reply_packets=1)
                    for s in (probe, probe6, dns, real)])
    got = rows(a.cut(T0, T1, "n1", LOCAL | {"127.0.0.1", "::1"}))
    assert [(r["src_ip"], r["dst_ip"]) for r in got] == [(POD_IP, PEER)]
    assert a.stats()["loopback_flows"] == 3 and a.stats()["loopback_bytes"] == 3 * 120


# ------------------------------------------------------------------ continuity across restarts

IDENT = {"boot_id": "b-1", "netns": 4026531840, "node": "n1", "collector": "conntrack"}


def test_a_restarted_accounter_continues_from_the_saved_state(tmp_path):
    """The second process reports what the kernel counted while no agent ran (for
    connections still open), counts connections born meanwhile in full, and never counts
    what the first process already reported."""
    path = str(tmp_path / "accounter.state")
    a = Accounter()
    c1 = conn(1, POD_IP, PEER, 40000, 443, 5000, 10, 9000, 10)
    c2 = conn(2, POD_IP, PEER, 40001, 443, 100, 1, 100, 1)
    gone = conn(3, POD_IP, PEER, 40002, 443, 70, 1, 70, 1)
    a.observe_dump([c1, c2, gone])
    a.observe_dump([c1._replace(orig_bytes=6000, orig_packets=12), c2, gone])
    (r,) = rows(a.cut(T0, T1, "n1", LOCAL))
    assert totals(r) == (1000, 2, 0, 0, 1)
    assert a.save_state(path, IDENT, now=1000.0) == 3

    b = Accounter()
    assert b.load_state(path, IDENT, max_age=600, now=1030.0) == 3
    born = conn(4, POD_IP, PEER, 40003, 443, 400, 4, 800, 4)        # opened while no agent ran
    short = ended(conn(5, POD_IP, PEER, 40004, 443, 0, 0, 0, 0), 50, 1, 60, 1)
    b.observe_ended([short])                                         # born and gone after the restart
    b.observe_dump([c1._replace(orig_bytes=6500, orig_packets=13, reply_bytes=9100, reply_packets=11), c2, born])
    b.observe_ended([ended(c2, 150, 2, 100, 1)])
    b.observe_dump([c1._replace(orig_bytes=6500, orig_packets=13, reply_bytes=9100, reply_packets=11)])
    (r,) = rows(b.cut(T1, T1 + dt.timedelta(seconds=60), "n1", LOCAL))
    # c1: 500/1/100/1 since the save; c2: 50/1 at its end; born 400/4/800/4 in full; short in full
    assert totals(r) == (500 + 50 + 400 + 50, 1 + 1 + 4 + 1, 100 + 800 + 60, 1 + 4 + 1, 4)
    st = b.stats()
    assert st["state_loaded"] == 3 and st["new"] == 1 and st["ended_unseen"] == 1 and st["forgotten"] == 1  # `gone`


def test_saved_state_keys_do_not_depend_on_the_process_hash_seed(tmp_path):
    """bytes hash differently in every process; the keys must not, or a restart would count
    every connection again."""
    import subprocess
    import sys

    path = str(tmp_path / "accounter.state")
    code = (
        "import sys, socket, json, datetime as dt\n"
        "from node_agent.accounter import Accounter\n"
        "from node_agent.flows import ConnSample\n"
        "ip = lambda s: socket.inet_pton(socket.AF_INET6 if ':' in s else socket.AF_INET, s)\n"
        "def c(b): return [ConnSample(7, 4, 6, ip('10.1.0.7'), ip('10.2.0.9'), 4000, 443, ip('10.2.0.9'), 443, b, 5, b, 5, False),\n"
        "                  ConnSample(8, 6, 17, ip('fd00::5'), ip('fd00::9'), 53, 53, ip('fd00::9'), 53, b, 5, b, 5, False)]\n"
        "ident = {'boot_id': 'x'}\n"
        "a = Accounter()\n"
        "if sys.argv[1] == 'save':\n"
        "    a.observe_dump(c(1000)); a.save_state(sys.argv[2], ident)\n"
        "else:\n"
        "    a.load_state(sys.argv[2], ident, 600); a.observe_dump(c(1300))\n"
        "    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)\n"
        "    print(sorted(r['tx_bytes'] for r in a.cut(t, t, 'n1', {'10.1.0.7', 'fd00::5'}).to_pylist()))\n"
    )
    root = __file__.rsplit("/tests/", 1)[0]
    env = dict(__import__("os").environ, PYTHONPATH=root)
    subprocess.run([sys.executable, "-c", code, "save", path], check=True, cwd=root, env={**env, "PYTHONHASHSEED": "1"})
    out = subprocess.run([sys.executable, "-c", code, "load", path], check=True, capture_output=True, text=True,
                         cwd=root, env={**env, "PYTHONHASHSEED": "2"})
    assert out.stdout.strip() == "[300, 300]"


def test_a_state_for_another_boot_too_old_or_damaged_is_refused(tmp_path):
    from node_agent.accounter import StateError

    path = str(tmp_path / "accounter.state")
    a = Accounter()
    a.observe_dump([conn(1, POD_IP, PEER, 40000, 443, 5, 1, 5, 1)])
    a.save_state(path, IDENT, now=1000.0)
    with pytest.raises(StateError, match="boot_id 'b-1', this is 'b-2'"):
        Accounter().load_state(path, {**IDENT, "boot_id": "b-2"}, max_age=600, now=1001.0)
    with pytest.raises(StateError, match="saved 601 s ago"):
        Accounter().load_state(path, IDENT, max_age=600, now=1601.0)
    data = bytearray(open(path, "rb").read())
    data[-20] ^= 0xFF
    open(path, "wb").write(bytes(data))
    fresh = Accounter()
    with pytest.raises(StateError, match="checksum"):
        fresh.load_state(path, IDENT, max_age=600, now=1001.0)
    # nothing was loaded: the refused accounter takes a normal baseline
    fresh.observe_dump([conn(1, POD_IP, PEER, 40000, 443, 50, 2, 5, 1)])
    assert fresh.cut(T0, T1, "n1", LOCAL).num_rows == 0


def test_an_address_is_attributed_when_first_seen_not_at_the_cut():
    """A pod deleted mid-window keeps the bytes it moved: its locality and name were decided
    when its address entered the window."""
    pods = {POD_IP: ("web-0", "shop")}
    resolved = []

    def resolve(packed):
        name = socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed)
        resolved.append(name)
        hit = pods.get(name)
        return (True, *hit) if hit else (name in LOCAL, None, None)

    a = Accounter(resolve=resolve)
    c = conn(1, POD_IP, PEER, 40000, 443, 0, 0, 0, 0)
    a.observe_dump([])
    a.observe_dump([c._replace(orig_bytes=100, orig_packets=1)])
    pods.clear()                                    # the pod is deleted; its IP is no longer local
    a.observe_ended([ended(c, 300, 3, 50, 1)])
    (r,) = rows(a.cut(T0, T1, "n1", {NODE_IP}, lambda ip: None))
    assert (r["direction"], r["src_pod"], r["src_namespace"], totals(r)) == ("outbound", "web-0", "shop", (300, 3, 50, 1, 1))
    assert resolved.count(POD_IP) == 1              # once per address per window


def test_flows_whose_index_hashes_collide_stay_apart(monkeypatch):
    """The window's index is keyed by a 64-bit hash of the flow identity: flows that collide
    (forced here: every hash equal) get rows of their own, and each row still sums right."""
    import builtins

    import node_agent.accounter as acc

    real = builtins.hash
    monkeypatch.setattr(acc, "hash", lambda v: 7 if isinstance(v, tuple) and len(v) == 5 else real(v), raising=False)
    a = Accounter()
    cs = [conn(100 + i, POD_IP, PEER, 41000 + i, 80 + i % 3, 0, 0, 0, 0) for i in range(9)]
    a.observe_dump(cs)
    a.observe_dump([c._replace(orig_bytes=10 * (i + 1), orig_packets=1) for i, c in enumerate(cs)])
    a.observe_ended([ended(c, 10 * (i + 1) + 5, 2, 0, 0) for i, c in enumerate(cs)])
    got = {r["orig_dst_port"]: totals(r) for r in rows(a.cut(T0, T1, "n1", LOCAL))}
    # ports 80, 81, 82: connections i = 0,3,6 / 1,4,7 / 2,5,8, each 10*(i+1) + 5 bytes, 2 packets
    assert got == {80 + k: (sum(10 * (i + 1) + 5 for i in range(k, 9, 3)), 6, 0, 0, 3) for k in range(3)}
