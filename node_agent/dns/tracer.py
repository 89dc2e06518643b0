"""DNS tracer: bpf/dns.c on cgroup ingress copies every DNS answer with records a local socket
receives (UDP or TCP source port 53, IPv4 and IPv6, up to 4096 bytes per packet) into a ring
buffer; a thread here parses them (dns/parser.py; TCP segments through dns/tcpstream.py)
into the IP -> domain cache (dns/cache.py) and the window's lookups. Works with either flow
collector.

Usage: `t = DnsTracer(cgroup_path, ttl_cap=120); t.open()` (or `start()`), then every
window `t.take_window()` (or `t.cache.take_window()`) -> lookups for dns/exporter.py,
`t.lookup(ip)` -> domain; `t.close()` detaches (also at interpreter exit). Raises
bpfload.BpfError when BPF cannot run here.
"""
from __future__ import annotations

import atexit
import logging
import socket
import struct
import threading
import time

from node_agent import bpfload
from node_agent.dns.cache import DEFAULT_TTL_CAP, DnsCache, Lookup
from node_agent.dns.parser import ParseStats, parse_answers
from node_agent.dns.tcpstream import TcpReassembler

EVENT_HDR = struct.Struct("=BBHHHI16s16s")   # struct dns_event before data[]
S_LOST, S_COPY, S_FILTERED, S_TRUNCATED = range(4)   # netmon_dstats slots
PROG_NAMES = (b"netmon_dns_in",)
log = logging.getLogger("netmon.dns")


class DnsTracer:
    def __init__(self, cgroup_path: str | None = None, ttl_cap: float = DEFAULT_TTL_CAP,
                 max_entries: int = 100_000, poll_ms: int = 200, cache: DnsCache | None = None):
        self.cgroup_path = cgroup_path
        self.cache = cache if cache is not None else DnsCache(ttl_cap, max_entries)
        self.parse_stats = ParseStats()
        self.poll_ms = poll_ms
        self._loaded: bpfload.Loaded | None = None
        self._rb: bpfload.RingBuffer | None = None
        self._att: bpfload.Attachments | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._events = 0
        self._stale = 0
        self._tcp = TcpReassembler()

    def open(self) -> None:
        try:
            cgroup = bpfload.find_cgroup2(self.cgroup_path)
            self._loaded = bpfload.load("dns.c", ["netmon_dns_in"], ["netmon_dns_events", "netmon_dstats"])
            self._stale = bpfload.remove_stale(cgroup, PROG_NAMES)
            self._rb = bpfload.RingBuffer(self._loaded.maps["netmon_dns_events"], self._on_event)
            self._att = bpfload.Attachments(cgroup)
            atexit.register(self.close)
            self._att.attach(self._loaded.progs["netmon_dns_in"], bpfload.CGROUP_INET_INGRESS, "netmon_dns_in")
        except OSError as e:    # the cgroup queries: one clear line
            self.close()
            raise bpfload.BpfError(f"dns tracer: {self.cgroup_path or 'cgroup'}: {e.strerror or e}") from None
        except Exception:
            self.close()
            raise
        self.cgroup_path = cgroup
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="netmon-dns", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rb = self._rb
        while not self._stop.is_set():
            rb.poll(self.poll_ms)

    def _on_event(self, raw: bytes) -> None:
        if len(raw) < EVENT_HDR.size:
            return
        family, proto, n, orig, cport, seq, client, server = EVENT_HDR.unpack_from(raw)
        payload = raw[EVENT_HDR.size: EVENT_HDR.size + n]
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        client_ip = socket.inet_ntop(af, client[: 4 if family == 4 else 16])
        self._events += 1      # only this thread writes these counters
        if proto == 6:         # DNS over TCP: whole messages out of the stream
            messages = self._tcp.feed((family, client, server, cport), seq, payload, orig)
        else:
            messages = (payload,)
        for msg in messages:
            answers = parse_answers(msg, self.parse_stats)
            if answers:
                self.cache.observe(client_ip, answers, time.time())

    def start(self) -> "DnsTracer":
        self.open()
        return self

    def take_window(self) -> list[Lookup]:
        self.cache.expire(time.time())
        return self.cache.take_window()

    def lookup(self, ip: str) -> str | None:
        return self.cache.lookup(ip, time.time())

    def stats(self) -> dict[str, int]:
        out = {"dns_events": self._events, "dns_cache_entries": len(self.cache),
               "dns_cache_evicted": self.cache.evicted, "dns_stale_detached": self._stale,
               **self.parse_stats.as_dict(), **self._tcp.stats}
        if self._loaded is not None:
            st = self._loaded.maps["netmon_dstats"]
            out["dns_events_lost"] = bpfload.percpu_u64_sum(st, S_LOST)          # ring buffer full
            out["dns_copy_failed"] = bpfload.percpu_u64_sum(st, S_COPY)
            out["dns_filtered"] = bpfload.percpu_u64_sum(st, S_FILTERED)         # no records: not sent
            out["dns_payload_truncated"] = bpfload.percpu_u64_sum(st, S_TRUNCATED)  # > 4096 bytes
        return out

    def close(self) -> None:
        self._stop.set()
        th, self._thread = self._thread, None
        if th is not None and th is not threading.current_thread():
            th.join(timeout=5)
        att, self._att = self._att, None
        try:
            if att is not None:
                att.close()
        except bpfload.BpfError as e:   # never raise from close(): it runs in finally blocks
            log.warning("dns tracer: %s", e)
        finally:
            if self._rb is not None:
                self._rb.consume()    # responses seen before the detach
                self._rb.close()
                self._rb = None
            if self._loaded is not None:
                self._loaded.close()
                self._loaded = None
            atexit.unregister(self.close)
