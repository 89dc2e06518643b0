"""Progress lines of the cost job (stderr, at most one every 2 s)."""
from __future__ import annotations

import time
from typing import TextIO


class Progress:
    def __init__(self, out: TextIO | None, total: int):
        self.out, self.total, self.t0, self.last = out, total, time.monotonic(), 0.0
        self.done = 0
        self.rows = 0

    def hour_done(self, rows: int, force: bool = False) -> None:
        self.done += 1
        self.rows += rows
        now = time.monotonic()
        if self.out is None or not (force or self.done == self.total or now - self.last >= 2.0):
            return
        self.last = now
        el = now - self.t0
        rate = self.rows / el if el > 0 else 0.0
        print(f"cost: {self.done}/{self.total} hours written, {self.rows:,} cost rows, "
              f"{rate:,.0f} rows/s, {el:.1f}s", file=self.out, flush=True)


