"""The node agent's run loop: collector -> accounter (+ attribution) -> exporter.

Every poll interval the collector's ended connections (DESTROY events, final counters) go
into the accounter; the live table is dumped only at each window's cut (and after lost
events), because the window totals are the same: an ended connection's final counters
arrive with its DESTROY, a live one's with the dump at the cut. Collectors without such
events (`events_complete = False`) are dumped at every poll. Every flush interval, on
wall-clock multiples of it (:00 each minute for 60 s, so the windows of all nodes line
up), the accounter cuts the window (pods were named when their addresses were first seen),
its state is saved next to the spool, and the exporter makes the table durable (spool,
then lake). On stop (SIGTERM/SIGINT) one last poll counts everything up to that moment and
the partial window is cut and handed over the same way.

Continuity. The accounter's state (every connection's counters as last counted) is saved
at each cut, before the window goes to the spool, so a restarted agent continues from it:
its first dump counts what the kernel counted while no agent ran, for connections still
open. A crash between the two writes loses that window, never counts it twice.

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
import os
import threading
import time
from typing import Callable

from lake.storage import one_line

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
        attribution=None,
        state_path: str | None = None,
        state_ident: dict | None = None,
        state_max_age: float = 600.0,
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
        self.attribution = attribution
        self.state_path = state_path
        self.state_ident = state_ident or {}
        self.state_max_age = state_max_age
        self.wall = wall
        self._poll_errors = 0
        from node_agent.rawmeta import WindowMeta

        self._meta = WindowMeta()       # what each raw/flows file says about its completeness
        # dump only at cuts when ended connections arrive with their final counters
        self.dump_every_poll = not getattr(collector, "events_complete", False)

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        self.load_state()
        self.poll(dump=True)                          # baseline (or the downtime's deltas)
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
                self.poll(dump=True)
                # A clock that jumped forward past several boundaries gives one longer window.
                boundary = math.floor(now / self.flush_interval) * self.flush_interval
                self.flush(window_start, boundary)
                window_start = boundary
                next_flush = aligned_next(boundary, self.flush_interval)
                next_poll = time.monotonic() + self.poll_interval
            elif time.monotonic() >= next_poll:
                self.poll()
                next_poll = time.monotonic() + self.poll_interval
        # Stop: count up to now and hand over the partial window (a last drain picks up the
        # DESTROYs of entries the final dump reaped).
        self.poll(dump=True)
        self.poll()
        end = max(self.wall(), window_start)
        log.info("stopping: flushing the partial window %s-%s",
                 _ts(window_start).strftime("%H:%M:%S"), _ts(end).strftime("%H:%M:%S"))
        self.flush(window_start, end)

    # ------------------------------------------------------------------ steps
    def poll(self, dump: bool = False) -> None:
        t0 = time.perf_counter()
        dump = dump or self.dump_every_poll or getattr(self.collector, "overrun", False)
        try:
            if dump:
                self.accounter.poll(self.collector)   # ended connections, then the live table
            else:
                self.accounter.drain(self.collector)  # ended connections only
        except Exception as exc:  # noqa: BLE001 - keep running; /healthz goes stale if this persists
            self._poll_errors += 1
            if self._poll_errors == 1 or self._poll_errors % 100 == 0:
                log.error("collector poll failed (%d so far): %s", self._poll_errors, one_line(exc))
            return
        self._poll_errors = 0
        acc = self.accounter.stats()
        if dump:
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

    def is_local(self, ip: str) -> bool:
        if self.attribution is not None:
            return self.attribution.is_local(ip)
        return ip in self.is_local_set()

    def flush(self, start: float, end: float) -> None:
        ws, we = _ts(start), _ts(end)
        if self.attribution is not None:
            table = self.accounter.cut(ws, we, self.node, self.attribution.is_local, self.attribution.lookup)
        else:
            local = self.is_local_set()
            lookup = self.pod_index.lookup if self.pod_index is not None else None
            table = self.accounter.cut(ws, we, self.node, local.__contains__, lookup)
        self.save_state()                             # before the window is durable: see the module doc
        meta = self._meta.cut(getattr(self.collector, "name", ""), self.collector.stats())
        rel = self.exporter.submit_raw("raw/flows", self.node, ws, table, metadata=meta)
        tot = self.accounter.last_cut
        tx, rx = tot.get("tx_bytes", 0), tot.get("rx_bytes", 0)
        m = self.metrics
        m.windows_cut.inc()
        m.rows.inc(table.num_rows)
        m.bytes.labels("tx").inc(tx)
        m.bytes.labels("rx").inc(rx)
        m.packets.labels("tx").inc(tot.get("tx_packets", 0))
        m.packets.labels("rx").inc(tot.get("rx_packets", 0))
        log.info("window %s: %d rows, tx %d B, rx %d B -> %s", ws.strftime("%H:%M:%S"), table.num_rows, tx, rx, rel)
        if self.dns is not None:
            dns = self.dns.cut(ws, we, self.node)
            self.exporter.submit_raw("raw/dns", self.node, ws, dns)
            log.info("window %s: %d DNS lookups", ws.strftime("%H:%M:%S"), dns.num_rows)

    # ------------------------------------------------------------------ continuity
    def load_state(self) -> None:
        """Continue from the previous process's saved state, if it is valid here."""
        if not self.state_path:
            return
        from node_agent.accounter import StateError

        try:
            n = self.accounter.load_state(self.state_path, self.state_ident, self.state_max_age, now=self.wall())
        except FileNotFoundError:
            return
        except StateError as exc:
            log.warning("saved accounter state %s discarded (%s): starting from a new baseline", self.state_path, exc)
            self._remove_state()
            return
        log.info("continuing from the saved accounter state: %d connection(s); traffic counted by the kernel "
                 "while no agent ran is reported in the first window", n)

    def save_state(self) -> None:
        if not self.state_path:
            return
        try:
            self.accounter.save_state(self.state_path, self.state_ident, now=self.wall())
        except OSError as exc:
            # A stale state would make the next process count this window again: remove it.
            removed = self._remove_state()
            log.error("cannot save the accounter state to %s (%s); %s", self.state_path, one_line(exc),
                      "the next start takes a new baseline" if removed else
                      "and the previous state could not be removed either")

    def _remove_state(self) -> bool:
        try:
            os.unlink(self.state_path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True


def state_ident(node: str, collector: str) -> dict:
    """What a saved accounter state is valid for: this boot (conntrack ids and counters
    restart with the kernel), this network namespace, node and collector."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = None
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = None
    return {"boot_id": boot, "netns": netns, "node": node, "collector": collector}


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
