"""An hour's shared context with the inventory as snapshots vs as validity intervals.

    python bench/context_form.py LAKE [--hour 2026-01-05T00:00Z] [--cells 2] [--repeat 3]

LAKE: a simulated lake (`netmon-jobs simulate --nodes 40 --hours 1 --flows-per-window 1500`).
Builds the hour's context as the job does (tasks.build_context, cold: the snapshots discovery
selects), both forms in one process, and prints: the pickled size of the context (what goes
into Ray's object store once per hour) and of its inventory part, the time to build it, and
per cell (the job's own cells) the time of resolution (encode, orient, resolve) and of the
whole cost_flows, best of --repeat, with the ratio after/before measured in the same run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import pickle
import time
import types

from jobs import load
from jobs import pipeline as PL
from jobs import resolve as RS
from jobs import run as R
from jobs import tasks as T
from jobs.config import JobConfig
from lake.storage import open_lake


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("lake")
    ap.add_argument("--hour")
    ap.add_argument("--cells", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    lake = open_lake(a.lake)
    cfg = JobConfig()
    lookback = dt.timedelta(seconds=float(cfg.dns_lookback_s))
    p = R.plan(lake, None, None, lookback, dt.timedelta(hours=48))
    hour = dt.datetime.fromisoformat(a.hour.replace("Z", "+00:00")) if a.hour else p.compute[0]
    opts = R.JobOptions(lake_url=lake.url, executor="inline", progress=None)
    d = R._Driver(lake, types.SimpleNamespace(token=0), opts, p, cfg, None, lookback)
    spec = d._context_spec(hour)
    spec.inv_prev_digest = ""  # cold: every selected snapshot is read, as before the carried state

    T.build_context(lake.url, None, spec, cfg, None, None)  # warm-up: both forms read warm files
    real = PL.compact
    PL.compact = lambda ctx, earlier=None: ctx
    t_before = _best(lambda: T.build_context(lake.url, None, spec, cfg, None, None), 1)
    before = T.build_context(lake.url, None, spec, cfg, None, None)[0]
    PL.compact = real
    t_after = _best(lambda: T.build_context(lake.url, None, spec, cfg, None, None), 1)
    after = T.build_context(lake.url, None, spec, cfg, None, None)[0]

    def size(x) -> int:
        return len(pickle.dumps(x, protocol=5))

    inv_b = size((before.pods, before.services, before.nodes, before.endpoints))
    inv_a = size(after.intervals)
    rows_b = sum(getattr(before, k).table.num_rows for k in ("pods", "services", "nodes", "endpoints"))
    rows_a = sum(getattr(after, k).table.num_rows for k in ("pods", "services", "nodes", "endpoints"))
    n_iv = sum(len(lk.key) for k in ("pods", "services", "nodes", "endpoints")
               for lk in getattr(after.intervals, k).lookups.values())
    print(f"hour {hour:%Y-%m-%dT%H}:00Z, {len(before.pods)} pod snapshots")
    print(f"context pickled: before {size(before):,} B, after {size(after):,} B, ratio {size(after) / size(before):.3f}")
    print(f"  inventory part: before {inv_b:,} B ({rows_b:,} snapshot rows), after {inv_a:,} B "
          f"({rows_a:,} distinct rows, {n_iv:,} intervals), ratio {inv_a / inv_b:.3f}")
    print(f"  build (one run each): before {t_before:.2f} s, after {t_after:.2f} s")
    cells = d._cells()[hour][: a.cells]
    for c in cells:
        flows, _ = load.load_files(lake, list(c.files), "raw/flows")

        def resolve(ctx):
            t = RS.orient(RS.encode(flows), ctx)
            RS.resolve(t, ctx)

        rb, ra = [], []
        fb, fa = [], []
        for _ in range(a.repeat):  # interleaved, so load changes hit both alike
            rb.append(_best(lambda: resolve(before), 1))
            ra.append(_best(lambda: resolve(after), 1))
            fb.append(_best(lambda: PL.cost_flows(flows, before), 1))
            fa.append(_best(lambda: PL.cost_flows(flows, after), 1))
        print(f"cell {c.index} ({flows.num_rows:,} rows): resolve before {min(rb):.3f} s, after {min(ra):.3f} s, "
              f"ratio {min(ra) / min(rb):.3f}; cost_flows before {min(fb):.3f} s, after {min(fa):.3f} s, "
              f"ratio {min(fa) / min(fb):.3f}")
        assert PL.cost_flows(flows, before).equals(PL.cost_flows(flows, after))
    print("rows identical in both forms for the cells measured")


if __name__ == "__main__":
    main()
