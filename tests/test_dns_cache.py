"""IP -> domain cache: TTL cap, refresh by new lookups, expiry, window lookups, raw/dns table."""
from __future__ import annotations

import datetime as dt

import pytest

from lake.schema import RAW_DNS
from node_agent.dns.cache import DnsCache
from node_agent.dns.exporter import dns_table

T0 = 1_700_000_000.0


def test_ttl_capped_at_two_minutes_by_default():
    c = DnsCache()
    c.observe("10.0.0.5", [("long.example", "192.0.2.1", 86400)], T0)
    assert c.lookup("192.0.2.1", T0 + 119) == "long.example"
    assert c.lookup("192.0.2.1", T0 + 120) is None


def test_short_ttl_respected_and_cap_configurable():
    c = DnsCache(ttl_cap=30)
    c.observe("10.0.0.5", [("s.example", "192.0.2.2", 10), ("l.example", "192.0.2.3", 3600)], T0)
    assert c.lookup("192.0.2.2", T0 + 9.9) == "s.example"
    assert c.lookup("192.0.2.2", T0 + 10) is None
    assert c.lookup("192.0.2.3", T0 + 29) == "l.example"
    assert c.lookup("192.0.2.3", T0 + 30) is None
    with pytest.raises(ValueError):
        DnsCache(ttl_cap=0)


def test_new_lookup_refreshes_and_latest_domain_wins():
    c = DnsCache()
    c.observe("10.0.0.5", [("a.example", "192.0.2.9", 60)], T0)
    c.observe("10.0.0.6", [("a.example", "192.0.2.9", 60)], T0 + 50)
    assert c.lookup("192.0.2.9", T0 + 100) == "a.example"       # refreshed at T0+50
    c.observe("10.0.0.6", [("b.example", "192.0.2.9", 60)], T0 + 105)
    assert c.lookup("192.0.2.9", T0 + 106) == "b.example"
    assert c.lookup("192.0.2.9", T0 + 165) is None


def test_expire_and_bound():
    c = DnsCache(max_entries=2)
    c.observe("c", [("x", "192.0.2.1", 5), ("y", "192.0.2.2", 50), ("z", "192.0.2.3", 100)], T0)
    assert len(c) == 2 and c.evicted == 1 and c.lookup("192.0.2.1", T0) is None
    assert c.expire(T0 + 60) == 1 and len(c) == 1 and c.lookup("192.0.2.3", T0 + 60) == "z"


def test_window_lookups_dedup_and_reset():
    c = DnsCache()
    c.observe("10.0.0.5", [("a.example", "192.0.2.1", 300)], T0)
    c.observe("10.0.0.5", [("a.example", "192.0.2.1", 290)], T0 + 10)
    c.observe("10.0.0.7", [("a.example", "192.0.2.1", 280)], T0 + 20)
    w = c.take_window()
    assert [(x.client_ip, x.ttl_s, x.seen_at) for x in w] == [("10.0.0.5", 290, T0 + 10), ("10.0.0.7", 280, T0 + 20)]
    assert c.take_window() == []
    assert c.lookup("192.0.2.1", T0 + 30) == "a.example"   # the cache outlives the window


def test_dns_table_matches_contract():
    c = DnsCache()
    c.observe("fd00::5", [("a.example", "2001:db8::1", 3000000000)], T0)
    ws = dt.datetime(2023, 11, 14, 22, 13, tzinfo=dt.timezone.utc)
    t = dns_table(c.take_window(), ws, ws + dt.timedelta(minutes=1), "node-1")
    assert t.schema.equals(RAW_DNS, check_metadata=True)
    row = t.to_pylist()[0]
    assert row["client_ip"] == "fd00::5" and row["ip"] == "2001:db8::1" and row["domain"] == "a.example"
    assert row["ttl_s"] == 2**31 - 1
    assert row["seen_at"] == dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    assert dns_table([], ws, ws, "node-1").num_rows == 0
