"""The local spool: windows that are not yet in the lake, as Parquet files on local disk.

The directory is the whole state, so a restarted agent uploads what its predecessor left.
Layout: `<dir>/<seq>.parquet`, `seq` a zero-padded counter (the upload order); the file's
lake path is kept in its Parquet key-value metadata, so one file is one entry and the
atomic rename that publishes it is the commit point (a crash leaves either the whole entry
or a `.tmp-*` file that the next start removes). Files are fsynced before the rename and
the directory after it.

The spool is bounded by `max_bytes`: when a new entry pushes it over, the oldest entries
are dropped, each with a warning and a metric (losing the oldest keeps the most recent
picture of the node, which is what an operator looks at after an outage).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from lake.storage import one_line

log = logging.getLogger("netmon.spool")

REL_KEY = b"netmon.spool.rel_path"
_ENTRY_RE = re.compile(r"^(\d{12})\.parquet$")


class SpoolError(Exception):
    """The spool directory cannot be used (missing permissions, not a directory, ...)."""


@dataclass(frozen=True)
class Entry:
    seq: int
    path: str      # absolute path of the spool file
    rel: str       # where it goes in the lake
    size: int      # bytes on disk


class Spool:
    def __init__(self, directory: str, max_bytes: int, metrics=None):
        self.dir = os.path.abspath(directory)
        self.max_bytes = max_bytes
        self.metrics = metrics
        self._lock = threading.Lock()
        try:
            os.makedirs(self.dir, exist_ok=True)
            probe = os.path.join(self.dir, f".tmp-probe-{os.getpid()}")
            with open(probe, "wb") as f:
                f.write(b"ok")
                f.flush()
                os.fsync(f.fileno())
            os.unlink(probe)
        except OSError as exc:
            raise SpoolError(f"spool directory {self.dir!r} is not writable: {exc.strerror or one_line(exc)}") from exc
        self._entries: list[Entry] = self._scan()
        self._next = (self._entries[-1].seq + 1) if self._entries else 1
        self._report()
        if self._entries:
            log.info("spool holds %d file(s), %d bytes from an earlier run", *self.depth())

    # ------------------------------------------------------------------ recovery
    def _scan(self) -> list[Entry]:
        entries = []
        for name in sorted(os.listdir(self.dir)):
            full = os.path.join(self.dir, name)
            if name.startswith(".tmp-"):
                # An interrupted put: it was never committed, so it is not a window we owe.
                try:
                    os.unlink(full)
                except OSError:
                    pass
                continue
            m = _ENTRY_RE.match(name)
            if not m:
                continue
            try:
                meta = pq.read_schema(full).metadata or {}
                rel = meta[REL_KEY].decode()
            except Exception as exc:  # noqa: BLE001 - any unreadable file is set aside
                log.warning("spool file %s is unreadable (%s); moved aside as %s.corrupt", name, one_line(exc), name)
                try:
                    os.replace(full, full + ".corrupt")
                except OSError:
                    pass
                continue
            entries.append(Entry(int(m[1]), full, rel, os.path.getsize(full)))
        return entries

    # ------------------------------------------------------------------ writing
    def put(self, rel_path: str, table: pa.Table) -> Entry:
        """Store `table` (destined for `rel_path` in the lake) durably; returns its entry.
        Raises OSError if the disk refuses (the caller keeps the window in memory)."""
        meta = dict(table.schema.metadata or {})
        meta[REL_KEY] = rel_path.encode()
        table = table.replace_schema_metadata(meta)
        with self._lock:
            seq = self._next
            self._next += 1
        final = os.path.join(self.dir, f"{seq:012d}.parquet")
        tmp = os.path.join(self.dir, f".tmp-{seq:012d}-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.dir)
        except BaseException:
            if self.metrics:
                self.metrics.spool_errors.inc()
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        entry = Entry(seq, final, rel_path, os.path.getsize(final))
        with self._lock:
            self._entries.append(entry)
            self._enforce_bound()
        self._report()
        return entry

    def _enforce_bound(self) -> None:
        """Drop the oldest entries until under max_bytes (the newest always stays). Lock held."""
        total = sum(e.size for e in self._entries)
        while total > self.max_bytes and len(self._entries) > 1:
            old = self._entries.pop(0)
            total -= old.size
            try:
                os.unlink(old.path)
            except FileNotFoundError:
                pass
            log.warning(
                "spool over %d bytes: dropped the oldest window %s (%d bytes); it will not reach the lake",
                self.max_bytes, old.rel, old.size,
            )
            if self.metrics:
                self.metrics.spool_dropped.inc()
                self.metrics.spool_dropped_bytes.inc(old.size)

    # ------------------------------------------------------------------ reading
    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries)

    def pending(self) -> list[str]:
        """Lake paths of the spooled windows, oldest first."""
        return [e.rel for e in self.entries()]

    def depth(self) -> tuple[int, int]:
        with self._lock:
            return len(self._entries), sum(e.size for e in self._entries)

    def read(self, entry: Entry) -> pa.Table:
        # ParquetFile, not pq.read_table: read_table goes through pyarrow.dataset, whose import
        # (with pyarrow.compute and acero) costs the agent ~17 MiB of RSS
        with pq.ParquetFile(entry.path) as f:
            table = f.read()
        meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != REL_KEY}
        return table.replace_schema_metadata(meta or None)

    # ------------------------------------------------------------------ uploading
    def upload(self, lake, write: Callable | None = None, stop: Callable[[], bool] | None = None) -> int:
        """Upload entries oldest first, removing each after its upload succeeded. Stops at the
        first failure (re-raised) so the order holds. Returns how many were uploaded."""
        write = write or (lambda lk, rel, table: lk.write_table(rel, table))
        done = 0
        while True:
            if stop is not None and stop():
                return done
            with self._lock:
                if not self._entries:
                    return done
                entry = self._entries[0]
            try:
                table = self.read(entry)
            except FileNotFoundError:
                # Dropped by the bound while we were about to read it.
                self._forget(entry)
                continue
            write(lake, entry.rel, table)
            self.remove(entry)
            done += 1

    def remove(self, entry: Entry) -> None:
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            pass
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        with self._lock:
            self._entries = [e for e in self._entries if e.seq != entry.seq]
        self._report()

    def _report(self) -> None:
        if self.metrics:
            files, size = self.depth()
            self.metrics.spool_files.set(files)
            self.metrics.spool_bytes.set(size)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
