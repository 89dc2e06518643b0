"""The node agent's run loop: collector -> accounter -> enricher -> exporter.

Every poll interval the collector's live table and its ended connections go into the
accounter. Every flush interval, on wall-clock multiples of it (:00 each minute for 60 s,
so the windows of all nodes line up), the accounter cuts the window, the pod index fills
the pod columns, and the exporter makes the table durable (spool, then lake). On stop
(SIGTERM/SIGINT) one last poll counts everything up to that moment and the partial window
is cut and handed over the same way.

Window identity. A window file is named by node + window start (seconds), so a restarted
agent must never reuse the start of a window its predecessor wrote: the first window after
start begins at the next whole second after the baseline dump, later than any window the
previous process could have started. Traffic between the baseline and that second lands in
the first window, which is what it is for.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from typing import Callable

import pyarrow.compute as pc

from lake.storage import one_line
from node_agent.enrich import enrich

log = logging.getLogger("netmon.agent")
UTC = dt.timezone.utc


def aligned_next(t: float, interval: float) -> float:
    """The first wall-clock multiple of `interval` strictly after `t`."""
    return (math.floor(t / interval) + 1) * interval


def _ts(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, UTC)


class Agent:
    def __init__(
        self,
        *,
        collector,
        accounter,
        exporter,
        node: str,
        poll_interval: float,
        flush_interval: float,
        metrics,
        health,
        local_addrs: Callable[[], set[str]],
        pod_index=None,
        dns=None,
        wall: Callable[[], float] = time.time,
    ):
        self.collector = collector
        self.accounter = accounter
        self.exporter = exporter
        self.node = node
        self.poll_interval = poll_interval
        self.flush_interval = flush_interval
        self.metrics = metrics
        self.health = health
        self.local_addrs = local_addrs
        self.pod_index = pod_index
        self.dns = dns
        self.wall = wall
        self._poll_errors = 0

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        self.poll()                                   # baseline: counts nothing, sees everything
        window_start = float(math.ceil(self.wall()))
        next_flush = aligned_next(window_start, self.flush_interval)
        next_poll = time.monotonic() + self.poll_interval
        log.info("agent running on node %s: first window from %s, flush every %gs, poll every %gs",
                 self.node, _ts(window_start).strftime("%H:%M:%S"), self.flush_interval, self.poll_interval)
        while True:
            wait = min(next_flush - self.wall(), next_poll - time.monotonic())
            if stop.wait(max(0.0, wait)):
                break
            now = self.wall()
            if now >= next_flush:
                self.poll()
                # A clock that jumped forward past several boundaries gives one longer window.
                boundary = math.floor(now / self.flush_interval) * self.flush_interval
                self.flush(window_start, boundary)
                window_start = boundary
                next_flush = aligned_next(boundary, self.flush_interval)
                next_poll = time.monotonic() + self.poll_interval
            elif time.monotonic() >= next_poll:
                self.poll()
                next_poll = time.monotonic() + self.poll_interval
        # Stop: count up to now and hand over the partial window.
        self.poll()
        end = max(self.wall(), window_start)
        log.info("stopping: flushing the partial window %s-%s",
                 _ts(window_start).strftime("%H:%M:%S"), _ts(end).strftime("%H:%M:%S"))
        self.flush(window_start, end)

    # ------------------------------------------------------------------ steps
    def poll(self) -> None:
        t0 = time.perf_counter()
        try:
            self.accounter.poll(self.collector)      # ended connections, then the live table
        except Exception as exc:  # noqa: BLE001 - keep running; /healthz goes stale if this persists
            self._poll_errors += 1
            if self._poll_errors == 1 or self._poll_errors % 100 == 0:
                log.error("collector poll failed (%d so far): %s", self._poll_errors, one_line(exc))
            return
        self._poll_errors = 0
        acc = self.accounter.stats()
        self.metrics.dump_seconds.observe(time.perf_counter() - t0)
        self.metrics.entries.set(acc.get("entries", 0))
        stats = self.collector.stats()
        stats.update({f"accounter_{k}": v for k, v in acc.items()})
        if self.dns is not None:
            stats.update(self.dns.stats())
        self.metrics.publish_collector_stats(stats)
        if self.pod_index is not None:
            self.metrics.publish_informer_stats(self.pod_index.stats())
        self.health.tick()

    def is_local_set(self) -> set[str]:
        local = set(self.local_addrs())
        if self.pod_index is not None:
            local |= self.pod_index.local_ips()
        return local

    def flush(self, start: float, end: float) -> None:
        ws, we = _ts(start), _ts(end)
        local = self.is_local_set()
        table = self.accounter.cut(ws, we, self.node, local.__contains__)
        table = enrich(table, self.pod_index.lookup if self.pod_index is not None else None)
        rel = self.exporter.submit_raw("raw/flows", self.node, ws, table)
        tx = pc.sum(table["tx_bytes"]).as_py() or 0
        rx = pc.sum(table["rx_bytes"]).as_py() or 0
        m = self.metrics
        m.windows_cut.inc()
        m.rows.inc(table.num_rows)
        m.bytes.labels("tx").inc(tx)
        m.bytes.labels("rx").inc(rx)
        m.packets.labels("tx").inc(pc.sum(table["tx_packets"]).as_py() or 0)
        m.packets.labels("rx").inc(pc.sum(table["rx_packets"]).as_py() or 0)
        log.info("window %s: %d rows, tx %d B, rx %d B -> %s", ws.strftime("%H:%M:%S"), table.num_rows, tx, rx, rel)
        if self.dns is not None:
            dns = self.dns.cut(ws, we, self.node)
            self.exporter.submit_raw("raw/dns", self.node, ws, dns)
            log.info("window %s: %d DNS lookups", ws.strftime("%H:%M:%S"), dns.num_rows)


class DnsFeed:
    """raw/dns per window: the eBPF DNS tracer (node_agent/dns/) observes DNS answers into a
    TTL-capped cache; each window's lookups become one RAW_DNS table."""

    def __init__(self, tracer):
        self.tracer = tracer

    @classmethod
    def start(cls, cgroup_path: str | None, ttl_cap: float) -> "DnsFeed":
        from node_agent.dns.tracer import DnsTracer

        return cls(DnsTracer(cgroup_path=cgroup_path, ttl_cap=ttl_cap).start())

    def cut(self, ws: dt.datetime, we: dt.datetime, node: str):
        from node_agent.dns.exporter import dns_table

        return dns_table(self.tracer.take_window(), ws, we, node)

    def stats(self) -> dict[str, int]:
        return self.tracer.stats()

    def close(self) -> None:
        self.tracer.close()
