"""The exporter: every cut window goes to the spool first (fsync), then an uploader thread
moves the spool into the lake in order.

Why spool first rather than only on failure: the window is durable the moment `submit`
returns, so the run loop can forget it and keep polling while a slow or dead object store
is retried in the background, and a crash mid-upload loses nothing (the file is still in
the spool; the retried upload goes to the same deterministic lake path and replaces).
Under normal operation the spool holds at most a window or two for a few milliseconds.

If the spool disk itself refuses a write (full, read-only), the window is kept in memory
(bounded by the same byte limit) and retried; that is the only state not on disk, and
`/metrics` shows it (`netmon_memory_windows`, `netmon_memory_bytes`). On stop, windows
held in memory are retried until the shutdown grace runs out; what is then still
unwritten is logged with its rows and bytes.
"""
from __future__ import annotations

import collections
import datetime as dt
import logging
import random
import threading
import time

import pyarrow as pa

from lake import schema as S

log = logging.getLogger("netmon.exporter")


class Exporter:
    def __init__(self, lake, spool, metrics=None, backoff_initial: float = 1.0, backoff_max: float = 60.0):
        self.lake = lake
        self.spool = spool
        self.metrics = metrics
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._unsaved: collections.deque[tuple[str, pa.Table]] = collections.deque()
        self._failures = 0          # consecutive failed drain attempts (drives the backoff)
        self._outage_logged = False
        self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)

    # ------------------------------------------------------------------ producer side
    def start(self) -> "Exporter":
        self._wake.set()               # upload what an earlier run left in the spool right away
        self._thread.start()
        return self

    def submit_raw(self, table_name: str, node: str, window_start: dt.datetime, table: pa.Table,
                   metadata: dict[str, str] | None = None) -> str:
        """Hand over one node window of raw/flows or raw/dns. Same path as lake.writer.write_raw.
        `metadata`: extra Parquet key/value metadata for the file (node_agent/rawmeta.py)."""
        rel = S.raw_file_path(table_name, node, window_start)
        table = S.conform(table, S.TABLES[table_name].schema)
        if metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        self.submit(rel, table)
        return rel

    def submit_inventory(self, kind: str, snapshot_time: dt.datetime, table: pa.Table) -> str:
        """Hand over one inventory snapshot table. Same path as lake.writer.write_inventory."""
        rel = S.inventory_file_path(kind, snapshot_time)
        self.submit(rel, S.conform(table, S.TABLES[f"inventory/{kind}"].schema))
        return rel

    def submit(self, rel: str, table: pa.Table) -> None:
        """Make `table` durable in the spool (or, if the disk refuses, in memory) and wake the uploader."""
        with self._lock:
            backlog = bool(self._unsaved)
        if backlog:
            self._keep_in_memory(rel, table)  # keep the order behind what the disk refused before
        else:
            try:
                self.spool.put(rel, table)
            except OSError as exc:
                log.error("spool write failed (%s); keeping %s in memory until the disk recovers", exc.strerror or exc, rel)
                self._keep_in_memory(rel, table)
        self._wake.set()

    def _keep_in_memory(self, rel: str, table: pa.Table) -> None:
        with self._lock:
            self._unsaved.append((rel, table))
            total = sum(t.nbytes for _, t in self._unsaved)
            while total > self.spool.max_bytes and len(self._unsaved) > 1:
                old_rel, old = self._unsaved.popleft()
                total -= old.nbytes
                log.warning("in-memory backlog over %d bytes: dropped the oldest window %s", self.spool.max_bytes, old_rel)
                if self.metrics:
                    self.metrics.spool_dropped.inc()
                    self.metrics.spool_dropped_bytes.inc(old.nbytes)
        self._report_memory()

    def _report_memory(self) -> None:
        if self.metrics is not None and hasattr(self.metrics, "memory_windows"):
            with self._lock:
                n, size = len(self._unsaved), sum(t.nbytes for _, t in self._unsaved)
            self.metrics.memory_windows.set(n)
            self.metrics.memory_bytes.set(size)

    def in_memory(self) -> tuple[int, int, int]:
        """Windows held in memory (neither spool nor lake took them): (windows, rows, bytes)."""
        with self._lock:
            return (len(self._unsaved), sum(t.num_rows for _, t in self._unsaved),
                    sum(t.nbytes for _, t in self._unsaved))

    # ------------------------------------------------------------------ uploader thread
    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            if delay:
                # Backing off: a new window does not cut the wait short (it is safe in the spool).
                self._stop.wait(delay)
            else:
                self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            delay = self._attempt()

    def _attempt(self, stop=None) -> float:
        """One drain of the backlog; returns the delay before the next attempt (0 = wait for work)."""
        try:
            uploaded = self.drain(stop)
        except Exception as exc:  # noqa: BLE001 - storage errors come in many types
            self._failures += 1
            if self.metrics:
                self.metrics.upload_failures.inc()
            files, size = self.spool.depth()
            delay = min(self.backoff_max, self.backoff_initial * 2 ** min(self._failures - 1, 20))
            delay *= random.uniform(0.5, 1.0)
            msg = " ".join(str(exc).split())[:200] or type(exc).__name__
            if not self._outage_logged:
                log.warning("upload to the lake failed (%s); %d file(s), %d bytes spooled; retrying with backoff", msg, files, size)
                self._outage_logged = True
            else:
                log.debug("upload retry %d failed (%s); next in %.1fs", self._failures, msg, delay)
            return delay
        if self._outage_logged and uploaded:
            log.info("lake reachable again: uploaded %d spooled file(s) after %d failed attempt(s)", uploaded, self._failures)
        self._failures = 0
        self._outage_logged = False
        return 0.0

    def drain(self, stop=None) -> int:
        """Save what the disk refused earlier, then upload the spool in order. Raises on failure."""
        self._save_unsaved()
        uploaded = self.spool.upload(self.lake, write=self._write, stop=stop)
        uploaded += self._upload_unsaved()
        return uploaded

    def _save_unsaved(self) -> None:
        while True:
            with self._lock:
                if not self._unsaved:
                    return
                rel, table = self._unsaved[0]
            try:
                self.spool.put(rel, table)
            except OSError:
                return  # still refused: upload straight from memory below
            with self._lock:
                if self._unsaved and self._unsaved[0][0] == rel:
                    self._unsaved.popleft()
            self._report_memory()

    def _upload_unsaved(self) -> int:
        done = 0
        while True:
            with self._lock:
                if not self._unsaved:
                    return done
                rel, table = self._unsaved[0]
            self._write(self.lake, rel, table)
            with self._lock:
                if self._unsaved and self._unsaved[0][0] == rel:
                    self._unsaved.popleft()
            self._report_memory()
            done += 1

    def _write(self, lake, rel: str, table: pa.Table) -> None:
        lake.write_table(rel, table)
        log.info("uploaded %s (%d rows)", rel, table.num_rows)
        if self.metrics:
            self.metrics.uploads.inc()
            self.metrics.last_flush.set(time.time())

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout: float = 10.0, memory_timeout: float | None = None) -> int:
        """Stop the uploader, then try to empty the backlog: spooled files get `timeout`
        seconds (what is left uploads at the next start); windows held only in memory are
        retried (spool, then lake) for `memory_timeout` seconds (default `timeout`), then
        given up with one line saying how much was lost. Returns the windows left behind."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        t0 = time.monotonic()
        deadline = t0 + timeout
        mem_deadline = t0 + (timeout if memory_timeout is None else max(timeout, memory_timeout))
        attempts = 0
        while True:
            # spooled files are safe on disk: one attempt; windows only in memory: retried
            attempts += 1
            limit = mem_deadline if self._unsaved else deadline
            final = threading.Thread(target=self._attempt, args=(lambda d=limit: time.monotonic() > d,), daemon=True)
            final.start()
            final.join(max(0.0, limit - time.monotonic()))
            if final.is_alive():
                break  # an upload hangs past the deadline: give up on it
            with self._lock:
                in_memory = len(self._unsaved)
            if not in_memory or time.monotonic() >= mem_deadline:
                break
            time.sleep(min(1.0, max(0.0, mem_deadline - time.monotonic())))
        files, size = self.spool.depth()
        windows, rows, nbytes = self.in_memory()
        if files:
            log.warning("%d file(s), %d bytes stay in the spool %s; they upload at the next start", files, size, self.spool.dir)
        if windows:
            log.error("dropped %d window(s) (%d rows, %d bytes in memory): neither the spool nor the lake took them "
                      "in %.0f s and %d attempt(s)", windows, rows, nbytes, time.monotonic() - t0, attempts)
        return files + windows
