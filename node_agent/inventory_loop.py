"""`netmon-agent inventory`: cluster-wide inventory snapshots into the lake.

The informers (node_agent/inventory.py) keep pods, services, nodes and endpoint slices
current; once all have listed, a snapshot is taken at start and then on every wall-clock
multiple of the interval (the same boundaries as the agents' windows), and handed to the
exporter, which gives it the agent's spool-and-retry behaviour. A snapshot is never taken
before the first full list: an empty inventory would read as "the cluster had no pods".
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from typing import Callable

from node_agent.agent import aligned_next

log = logging.getLogger("netmon.inventory")
UTC = dt.timezone.utc


def informer_stats(watcher) -> dict[str, int]:
    """Flatten {kind: stats} for /metrics; `relists` is the sum over kinds."""
    out: dict[str, int] = {"relists": 0}
    for kind, st in watcher.stats().items():
        out["relists"] += int(st.get("relists", 0))
        for k, v in st.items():
            out[f"{kind}_{k}"] = v
    return out


def take_snapshot(watcher, exporter, metrics, when: float) -> None:
    now = dt.datetime.fromtimestamp(math.floor(when), UTC)
    tables = watcher.snapshot(now)
    rows = {}
    for kind, table in tables.items():
        exporter.submit_inventory(kind, now, table)
        rows[kind] = table.num_rows
    metrics.snapshots.inc()
    log.info("snapshot %s: %s", now.strftime("%H:%M:%S"), ", ".join(f"{n} {k}" for k, n in rows.items()))


def run_inventory(api, exporter, interval: float, metrics, health, stop: threading.Event,
                  wall: Callable[[], float] = time.time, sync_log_every: float = 30.0) -> None:
    from node_agent.inventory import InventoryWatcher, NotSyncedError

    watcher = InventoryWatcher(api)
    try:
        waited = 0.0
        while not watcher.wait_synced(1.0):
            metrics.publish_informer_stats(informer_stats(watcher))
            if stop.is_set():
                return
            waited += 1.0
            if waited % sync_log_every == 0:
                log.warning("still waiting for the first full list of the cluster (%.0fs)", waited)
        log.info("inventory informers synced; snapshot every %gs", interval)
        next_at = wall()
        while True:
            metrics.publish_informer_stats(informer_stats(watcher))
            if wall() >= next_at:
                try:
                    take_snapshot(watcher, exporter, metrics, wall())
                    health.tick()
                except NotSyncedError as exc:
                    log.warning("%s; skipping this snapshot", exc)
                except Exception as exc:  # noqa: BLE001 - keep serving; /healthz goes stale if it persists
                    log.error("snapshot failed: %s", " ".join(str(exc).split())[:300] or type(exc).__name__)
                next_at = aligned_next(wall(), interval)
            if stop.wait(max(0.0, min(next_at - wall(), 5.0))):
                break
    finally:
        watcher.stop()
