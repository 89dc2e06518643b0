"""IP -> domain cache fed by observed DNS answers, plus the current window's lookups.

An entry lives for the record's TTL capped at `ttl_cap` seconds (default 120: a long TTL must
not pin an IP to a domain after the IP moved to another tenant); every new answer for the IP
refreshes it and the latest answer wins. The cache is bounded (`max_entries`): when full,
the entries closest to expiry go first. Times are seconds (time.time()).

`take_window()` hands over the lookups observed since the last call, one per
(client, domain, ip) with the latest sighting, for the raw/dns table (dns/exporter.py).
Thread-safe: the tracer's thread observes while the agent's loop expires and takes windows.
"""
from __future__ import annotations

import heapq
import threading
from typing import Iterable, NamedTuple

DEFAULT_TTL_CAP = 120.0


class Lookup(NamedTuple):
    client_ip: str
    domain: str
    ip: str
    ttl_s: int        # as answered, before the cap
    seen_at: float    # unix seconds
    chain: tuple[str, ...] = ()  # CNAME targets from domain to the record's owner (raw/dns cname_chain)


class DnsCache:
    def __init__(self, ttl_cap: float = DEFAULT_TTL_CAP, max_entries: int = 100_000):
        if ttl_cap <= 0:
            raise ValueError("dns ttl cap must be positive")
        self.ttl_cap = float(ttl_cap)
        self.max_entries = int(max_entries)
        self._entries: dict[str, tuple[str, float]] = {}     # ip -> (domain, expires_at)
        self._window: dict[tuple[str, str, str], Lookup] = {}
        self.evicted = 0
        self._lock = threading.Lock()

    def observe(self, client_ip: str, answers: Iterable[tuple], seen_at: float) -> None:
        """Record one response's answers [(domain asked, ip, ttl[, CNAME chain])] seen by `client_ip`."""
        with self._lock:
            self._observe(client_ip, answers, seen_at)

    def _observe(self, client_ip: str, answers: Iterable[tuple], seen_at: float) -> None:
        for a in answers:
            domain, ip, ttl = a[0], a[1], a[2]
            chain = tuple(a[3]) if len(a) > 3 else ()
            self._entries[ip] = (domain, seen_at + min(float(ttl), self.ttl_cap))
            self._window[(client_ip, domain, ip)] = Lookup(client_ip, domain, ip, int(ttl), seen_at, chain)
        if len(self._entries) > self.max_entries:
            self._evict(len(self._entries) - self.max_entries)

    def lookup(self, ip: str, now: float) -> str | None:
        with self._lock:
            hit = self._entries.get(ip)
        if hit is None or hit[1] <= now:
            return None
        return hit[0]

    def expire(self, now: float) -> int:
        """Drop expired entries; returns how many."""
        with self._lock:
            dead = [ip for ip, (_d, exp) in self._entries.items() if exp <= now]
            for ip in dead:
                del self._entries[ip]
            return len(dead)

    def take_window(self) -> list[Lookup]:
        with self._lock:
            window, self._window = self._window, {}
        return sorted(window.values(), key=lambda x: (x.seen_at, x.client_ip, x.domain, x.ip))

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self, n: int) -> None:
        for ip, _ in heapq.nsmallest(n, self._entries.items(), key=lambda kv: kv[1][1]):
            del self._entries[ip]
        self.evicted += n
