"""Failpoints for the fault-injection tests: `point(name)` kills this process with SIGKILL when
the environment variable NETMON_FAULT_POINT equals `name`.

SIGKILL, not an exception: nothing runs after it (no `finally`, no atexit), exactly like the
OOM killer or a node going away, so the tests see what a real crash leaves in the lake.
Names (where the driver calls them, see docs/publishing.md):
- `after-cells`: every cell of the run has written its staged parts, nothing committed;
- `during-commit`: an hour's record is written, its parts not yet rolled forward;
- `during-ledger`: the hours are committed, the month's ledger cache not yet written;
- `during-rollups`: the hours are committed, a day's rollups not yet written;
- `mid-write:<prefix>` (lake/storage.py): any local write under the lake path <prefix>, after
  its temporary is written and before it is renamed (`MID_WRITE` lists the ones tested).
Unset (production), `point` is one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "NETMON_FAULT_POINT"
NAMES = ("after-cells", "during-commit", "during-ledger", "during-rollups")
#: the writes a kill lands in the middle of in the tests: a cell's staged part, an hour's record
#: (the commit point), the month's ledger, a day's rollup
MID_WRITE = ("mid-write:_state/staging/", "mid-write:_state/hours/", "mid-write:_state/egress/",
             "mid-write:costs/namespace_hourly/")


def point(name: str) -> None:
    """Die here, at once, if the tests asked for it."""
    if name not in NAMES:
        raise ValueError(f"unknown fault point {name!r}")
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
