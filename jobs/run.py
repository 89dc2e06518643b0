"""The cost job's driver: discover -> per-hour contexts -> cells -> tiers in time order ->
publish hours -> rollups from partials -> ledger and manifests.

- Discovery (jobs/discover.py): which hours to compute, and later hours whose tiers may move.
- Contexts (jobs/context.py, `tasks.build_context`): one task per computed hour builds the
  inventory and DNS as-of context once; it sits in the object store, shared by the hour's
  cells; the DNS state at the end of the hour is handed to the next hour's context.
- Cells (jobs/cells.py, `tasks.cost_cell`): an hour is cut into cells of about `cell_rows`
  rows; each declares the memory it needs, and as many run at once as the Ray cluster has
  CPUs (not the driver's). Each writes a staged part and returns a small summary.
- Tiers (jobs/tiers.py): in time order, the driver settles each hour's tiered egress from the
  cells' per-(pool, window) volumes; only parts whose windows' rates moved are rewritten.
- Publish (`_publish_hour`): the hour's staged parts become its visible parts, with its rollup
  partials; rollups of the touched dates are summed from hour partials (`tasks.rollup_day`).
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from jobs import cells as C
from jobs import context as cx
from jobs import load
from jobs import partials as pt
from jobs import state as st
from jobs import summary as sm
from jobs import tasks as T
from jobs import tiers
from jobs.discover import Plan, _select_snapshots, _Sorted, plan  # noqa: F401 (re-exported)
from jobs.errors import JobError  # noqa: F401 (re-exported: the CLI looks it up here)
from jobs.executors import InlineExecutor, RayExecutor
from jobs.progress import Progress
from lake import schema as S
from lake.storage import Lake, open_lake

HOUR = dt.timedelta(hours=1)
UTC = dt.timezone.utc


@dataclass
class JobOptions:
    lake_url: str
    s3_endpoint: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    ray_address: str | None = None
    config_path: str | None = None
    ip_ranges_dir: str | None = None
    #: "ray" (local Ray, or the cluster at ray_address) or "inline" (the same task functions
    #: called in this process: unit tests of the bookkeeping, profiling).
    executor: str = "ray"
    num_cpus: int = 2
    progress: TextIO | None = field(default_factory=lambda: sys.stderr)
    #: target raw rows per cell (memory per task follows from it, see jobs/cells.py)
    cell_rows: int = C.DEFAULT_CELL_ROWS


@dataclass
class RunResult:
    hours_computed: list[dt.datetime]
    hours_retiered: list[dt.datetime]
    rows_in: int
    rows_out: int
    files_read: int
    duplicates: list[str]
    quarantined: list[dict]
    seconds: float
    summary: sm.Summary
    cells: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


def _load_config(path: str | None):
    from jobs import config as CF  # noqa: PLC0415 - heavy imports stay out of the CLI's start-up
    return CF.load_config(path) if path else CF.JobConfig()


def _parse_lookback(cfg) -> dt.timedelta:
    return dt.timedelta(seconds=float(cfg.dns_lookback_s))


def run_cost_job(opts: JobOptions) -> RunResult:
    t0 = time.monotonic()
    if opts.start and opts.end and opts.end <= opts.start:
        raise JobError(f"--end {opts.end.isoformat()} is not after --start {opts.start.isoformat()}")
    if opts.cell_rows <= 0:
        raise JobError(f"--cell-rows must be positive, got {opts.cell_rows}")
    lake = open_lake(opts.lake_url, opts.s3_endpoint)
    lake.check_writable()
    cfg = _load_config(opts.config_path)
    ranges_dir = opts.ip_ranges_dir or cfg.ip_ranges_dir
    if ranges_dir and not os.path.isdir(ranges_dir):
        raise JobError(f"IP ranges directory {ranges_dir!r} does not exist")
    lookback = _parse_lookback(cfg)
    p = plan(lake, opts.start, opts.end, lookback)
    out = opts.progress
    if out is not None:
        print(f"cost: {len(p.compute)} hour(s) to compute, {len(p.retier)} to check for re-tiering, "
              f"{len(p.duplicates)} duplicate upload(s) skipped", file=out, flush=True)
    d = _Driver(lake, opts, p, cfg, ranges_dir, lookback)
    if p.compute or p.retier:
        ex = InlineExecutor() if opts.executor == "inline" else RayExecutor(opts.ray_address, opts.num_cpus)
        try:
            d.run(ex)
        finally:
            ex.shutdown()
    quarantined = list(p.quarantined)
    seen = {q["path"] for q in quarantined}
    for q in d.bad:
        if q["reason"] == load.SKIPPED_INVENTORY:
            if out is not None and q["path"] not in seen:
                print(f"cost: warning: inventory snapshot {q['path']} skipped: {q['error']}", file=out, flush=True)
        elif q["path"] not in seen:
            quarantined.append(q)
        seen.add(q["path"])
    results = [r for rs in d.results.values() for r in rs]
    return RunResult(
        hours_computed=p.compute, hours_retiered=sorted(d.retiered),
        rows_in=sum(r["rows_in"] for r in results), rows_out=sum(r["rows_out"] for r in results),
        files_read=sum(r["files_read"] for r in results), duplicates=p.duplicates, quarantined=quarantined,
        seconds=time.monotonic() - t0, summary=sm.merge([r["summary"] for r in results]), cells=len(results),
    )


# ----------------------------------------------------------------------------- publishing

def staging_dir(run_id: str) -> str:
    return f"{S.STATE_DIR}/staging/{run_id}"


def part_path(hour: dt.datetime, cell: int) -> str:
    return f"{S.TABLES['costs/flows'].partition_dir(hour)}/part-{cell}.parquet"


def _publish_hour(lake: Lake, hour: dt.datetime, staged: dict[str, str], keep: list[str],
                  partials: dict[str, Any]) -> None:
    """Make the hour's new parts the visible ones: staged parts move to their final names, the
    hour's other parts are removed, the hour's rollup partials are written. `staged`: final
    name -> staged name; `keep`: committed parts that stay as they are."""
    for final, src in sorted(staged.items()):
        lake.fs.create_dir(lake.path(final).rsplit("/", 1)[0], recursive=True)
        lake.fs.move(lake.path(src), lake.path(final))
    wanted = set(staged) | set(keep)
    for info in lake.list_files(S.TABLES["costs/flows"].partition_dir(hour)):
        if lake.rel(info.path) not in wanted:
            lake.delete(info.path)
    for name, table in partials.items():
        lake.write_table(pt.partial_path(name, hour, "partial"), table)


def _hour_parts(lake: Lake, hour: dt.datetime) -> list[str]:
    return [lake.rel(i.path) for i in lake.list_files(S.TABLES["costs/flows"].partition_dir(hour))]


def _read_partials(lake: Lake, hour: dt.datetime) -> dict[str, Any]:
    out = {}
    for name, (_, schema) in pt.ROLLUPS.items():
        rel = pt.partial_path(name, hour, "partial")
        out[name] = lake.read_table(rel) if lake.exists(rel) else schema.empty_table()
    return out


# ----------------------------------------------------------------------------- the driver

class _Driver:
    def __init__(self, lake: Lake, opts: JobOptions, p: Plan, cfg, ranges_dir, lookback):
        self.lake, self.opts, self.p, self.cfg, self.ranges_dir, self.lookback = lake, opts, p, cfg, ranges_dir, lookback
        self.url, self.ep = opts.lake_url, opts.s3_endpoint
        self.run_id = f"run-{time.time_ns():x}-{os.getpid()}"
        self.results: dict[dt.datetime, list[dict]] = {}
        self.retiered: set[dt.datetime] = set()
        self.bad: list[dict] = []
        months = {st.month_of(h) for h in p.compute + p.retier}
        self.ledgers = {m: tiers.Ledger.load(lake, m) for m in months}
        from jobs import pricing  # noqa: PLC0415
        self.cards = pricing.default_cards()

    # -- planning helpers
    def _cells(self) -> dict[dt.datetime, list[C.Cell]]:
        inputs = {}
        for h in self.p.compute:
            files = [(f, self.p.files[h][f].size if f in self.p.files[h] else 0) for f in self.p.specs[h].flows]
            inputs[h] = C.estimate_rows(self.lake, files)
        out: dict[dt.datetime, list[C.Cell]] = {}
        for c in C.make_cells(inputs, self.opts.cell_rows):
            out.setdefault(c.hour, []).append(c)
        return out

    def _digest(self, hour: dt.datetime) -> str:
        files = {}
        for h in cx.dns_hours_for(hour, self.lookback):
            files.update(self.p.dns_sigs.get(h, {}))
        return cx.inputs_digest(files, self.lookback)

    def _context_spec(self, h: dt.datetime) -> T.ContextSpec:
        p = self.p
        inv: dict[str, list[str]] = {k: [] for k in S.INVENTORY_KINDS}
        for ih in p.specs[h].inv_hours:
            for kind, files in p.inv_chunks[ih].items():
                inv[kind] += files
        cold = [p.dns_chunks.get(dh, []) for dh in cx.dns_hours_for(h - HOUR, self.lookback)]
        return T.ContextSpec(hour=h, inventory={k: sorted(v) for k, v in inv.items()},
                             dns_own=p.dns_chunks.get(h, []), dns_next=p.dns_chunks.get(h + HOUR, []),
                             cold=cold, prev_digest=self._digest(h - HOUR), digest=self._digest(h),
                             lookback=self.lookback)

    # -- the run
    def run(self, ex) -> None:
        self.ex = ex
        cells = self._cells()
        computed = set(self.p.compute)
        todo = sorted(computed | set(self.p.retier))
        progress = Progress(self.opts.progress, len(todo))
        capacity = ex.capacity()
        queue = list(self.p.compute)
        chain: dict[dt.datetime, tuple] = {}      # hour -> (ctx, state, next-hour DNS) refs
        cell_futs: dict[Any, C.Cell] = {}
        done_cells: dict[dt.datetime, list[dict]] = {}
        waiting: list[tuple[dt.datetime, list, dict]] = []  # hours settled, parts being re-tiered
        bad_refs: list = []
        settled = 0

        def submit_more():
            # keep the cluster busy: cells of at least two CPUs' worth per slot, contexts ahead
            while queue and (len(cell_futs) < 2 * capacity or len(chain) < 2):
                h = queue.pop(0)
                prev = chain.get(h - HOUR)
                handed = (ex.arg(prev[1]), ex.arg(prev[2])) if prev else (None, None)
                refs = ex.submit(T.build_context, self.url, self.ep, self._context_spec(h), self.cfg, *handed,
                                 num_returns=4)
                chain[h] = refs
                bad_refs.append(refs[3])
                est = self.ledgers[st.month_of(h)].before(h)
                for c in cells[h]:
                    staged = f"{staging_dir(self.run_id)}/{part_path(h, c.index)}"
                    f = ex.submit(T.cost_cell, self.url, self.ep, c, ex.arg(refs[0]), self.ranges_dir, staged, est,
                                  memory=c.memory)
                    cell_futs[f] = c
                done_cells[h] = []
                # the chain only needs the last hour's refs; older contexts leave the object store
                for old in [k for k in chain if k < h - HOUR]:
                    del chain[old]

        def collect(timeout):
            for f in ex.ready(list(cell_futs), timeout):
                c = cell_futs.pop(f)
                done_cells[c.hour].append(ex.get(f))

        def hour_ready(h) -> bool:
            return h not in computed or (h in done_cells and len(done_cells[h]) == len(cells[h]) and
                                         not any(c.hour == h for c in cell_futs.values()))

        try:
            while settled < len(todo) or waiting:
                submit_more()
                collect(0)
                while settled < len(todo) and hour_ready(todo[settled]):
                    h = todo[settled]
                    waiting.append(self._settle(h, done_cells.pop(h)) if h in computed else self._settle_later(h))
                    settled += 1
                    submit_more()
                for item in list(waiting):
                    if len(ex.ready(item[1], 0)) == len(item[1]):
                        waiting.remove(item)
                        progress.hour_done(self._publish(*item))
                pending = list(cell_futs) + [f for w in waiting for f in w[1]]
                if pending:
                    ex.wait_any(pending, 1.0)
        finally:
            self._cleanup_staging()
        for b in bad_refs:
            self.bad += ex.get(b)
        for r in self.results.values():
            for x in r:
                self.bad += x["quarantined"]
        self._rollups(todo)

    # -- tiers
    def _settle(self, h: dt.datetime, results: list[dict]):
        """A computed hour: exact window rates from its cells' volumes; re-tier the parts whose
        provisional rates differ. Returns (hour, re-tier futures, context for publishing)."""
        results = sorted(results, key=lambda r: r["cell"])
        ledger = self.ledgers[st.month_of(h)]
        vols: tiers.Volumes = {}
        for r in results:
            tiers.add(vols, r["volumes"])
        before = ledger.before(h)
        rates, after = tiers.window_rates(vols, before, self.cards)
        ledger.set(h, vols, before, after)
        futs, which = [], []
        for r in results:
            mine = {k: rates[k] for k in r["rates"]}
            if mine != r["rates"]:
                futs.append(self.ex.submit(T.retier_part, self.url, self.ep, r["part"], r["part"], mine))
                which.append(r)
        return h, futs, {"results": results, "which": which}

    def _settle_later(self, h: dt.datetime):
        """A committed hour after a changed one: re-tier only if the state before it moved, and
        then only the parts whose windows' rates moved."""
        ledger = self.ledgers[st.month_of(h)]
        before = ledger.before(h)
        if ledger.recorded_before(h) == before:
            return h, [], {"skip": True}
        vols = ledger.volumes(h)
        rates, after = tiers.window_rates(vols, before, self.cards)
        ledger.set(h, vols, before, after)
        futs, parts = [], []
        for rel in _hour_parts(self.lake, h):
            staged = f"{staging_dir(self.run_id)}/{rel}"
            futs.append(self.ex.submit(T.retier_part, self.url, self.ep, rel, staged, rates))
            parts.append((rel, staged))
        return h, futs, {"parts": parts}

    # -- publishing
    def _publish(self, h: dt.datetime, futs: list, info: dict) -> int:
        got = [self.ex.get(f) for f in futs]
        if info.get("skip"):
            return 0
        if "results" in info:  # a computed hour
            results = info["results"]
            parts = {r["part"]: r for r in results}
            deltas = []
            for r, g in zip(info["which"], got):
                if g is not None:
                    parts[r["part"]]["summary"] = g["summary"]
                    deltas.append(g["delta"])
            partials = {name: pt.combine([r["partials"][name] for r in results] + [d[name] for d in deltas], schema)
                        for name, (_, schema) in pt.ROLLUPS.items()}
            staged = {part_path(h, r["cell"]): r["part"] for r in results}
            _publish_hour(self.lake, h, staged, [], partials)
            self.results[h] = results
            self._commit_bookkeeping(h, results)
            return sum(r["rows_out"] for r in results)
        # a re-tiered committed hour: only the rewritten parts change
        changed = {rel: staged for (rel, staged), g in zip(info["parts"], got) if g is not None}
        if changed:
            old = _read_partials(self.lake, h)
            partials = {name: pt.combine([old[name]] + [g["delta"][name] for g in got if g is not None], schema)
                        for name, (_, schema) in pt.ROLLUPS.items()}
            keep = [rel for rel, _ in info["parts"] if rel not in changed]
            _publish_hour(self.lake, h, changed, keep, partials)
            self.retiered.add(h)
        self.ledgers[st.month_of(h)].save(self.lake)
        return 0

    def _commit_bookkeeping(self, h: dt.datetime, results: list[dict]) -> None:
        self.ledgers[st.month_of(h)].save(self.lake)
        st.write_manifest(self.lake, st.Manifest(
            hour=h, files=self.p.files[h], rows_in=sum(r["rows_in"] for r in results),
            rows_out=sum(r["rows_out"] for r in results), kept_bytes=sum(r["kept_bytes"] for r in results),
            quarantined=[q["path"] for r in results for q in r["quarantined"]]))

    def _rollups(self, hours: list[dt.datetime]) -> None:
        days = sorted({h.date() for h in self.results} | {h.date() for h in self.retiered})
        futs = []
        for day in days:
            files = {name: [self.lake.rel(i.path) for i in
                            self.lake.list_files(f"{S.STATE_DIR}/partials/{name}/date={day:%Y-%m-%d}")]
                     for name in pt.ROLLUPS}
            futs.append(self.ex.submit(T.rollup_day, self.url, self.ep, day, files))
        for f in futs:
            self.ex.get(f)

    def _cleanup_staging(self) -> None:
        root = self.lake.path(staging_dir(self.run_id))
        try:
            self.lake.fs.delete_dir(root)
        except (FileNotFoundError, OSError):
            pass
