"""The collector interface the accounter and the run loop code against.

A collector reports *cumulative* per-connection counters (`ConnSample`): `dump()` gives every
live connection, `drain_ended()` the connections that ended since the last call with their
final counters. The accounter (node_agent/accounter.py) turns both into exact deltas, so a
collector never subtracts anything itself.
"""
from __future__ import annotations

from typing import Iterator

from node_agent.flows import ConnSample


class CollectorError(RuntimeError):
    """A collector cannot run here (not root, module missing, ...): one clear line."""


class Collector:
    """Base class; subclasses implement open/dump/drain_ended/stats/close."""

    name = "base"

    def open(self) -> None:
        raise NotImplementedError

    def dump(self) -> list[ConnSample]:
        """All live connections with their cumulative counters (ended=False)."""
        raise NotImplementedError

    def iter_dump(self) -> Iterator[ConnSample]:
        """Like dump() but streamed, so a big table is never held twice in memory.
        Collectors that can stream override this; the accounter prefers it."""
        return iter(self.dump())

    def drain_ended(self) -> list[ConnSample]:
        """Connections that ended since the last call, final counters, ended=True."""
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        """Counters for /metrics; always includes `resyncs` and `events_lost`."""
        return {"resyncs": 0, "events_lost": 0}

    def close(self) -> None:
        pass

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()
