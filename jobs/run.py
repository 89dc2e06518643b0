"""The cost job's driver, under the run lease (jobs/lock.py): recover -> discover -> per-hour
contexts -> cells -> tiers in time order -> one commit per hour (jobs/commit.py) -> rollups
from partials -> ledger.

- Discovery (jobs/discover.py): which hours to compute, and later hours whose tiers may move.
- Contexts (jobs/context.py, `tasks.build_context`): one task per computed hour builds the
  inventory and DNS as-of context once; it sits in the object store, shared by the hour's
  cells; the DNS state at the end of the hour is handed to the next hour's context.
- Cells (jobs/cells.py, `tasks.cost_cell`): an hour is cut into cells of about `cell_rows`
  rows; each declares the memory it needs, and as many run at once as the Ray cluster has
  CPUs (not the driver's). Each writes a staged part and returns a small summary.
- Tiers (jobs/tiers.py): in time order, the driver settles each hour's tiered egress from the
  cells' per-(pool, window) volumes; only parts whose windows' rates moved are rewritten.
- Commit (`_publish_hour`): the hour's record, listing its parts and rollup partials, is the
  commit point (jobs/commit.py); rollups of the touched dates are summed from the hours'
  partials (`tasks.rollup_day`), never from cost rows.
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from jobs import cells as CL
from jobs import commit as C
from jobs import context as cx
from jobs import faults, identity, load, lock
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
from lake.storage import Lake, RetryPolicy, open_lake

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
    #: wait up to this many seconds for another run's lease (0: fail at once, one line)
    wait_s: float = 0.0
    #: an incremental run looks for new or changed raw files in the hours from this long
    #: before the newest committed hour on (older ones: run with start/end)
    lateness: dt.timedelta = dt.timedelta(hours=48)
    lease_ttl_s: float = 600.0
    progress: TextIO | None = field(default_factory=lambda: sys.stderr)
    #: target raw rows per cell (memory per task follows from it, see jobs/cells.py)
    cell_rows: int = CL.DEFAULT_CELL_ROWS


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
    #: tasks per Ray node ("ip node-id" -> count); empty for the inline executor
    task_nodes: dict[str, int] = field(default_factory=dict)
    #: computed hours costed with an inventory gap -> the inventory kinds missing
    inventory_gaps: dict[dt.datetime, list[str]] = field(default_factory=dict)
    #: committed hours whose cost rows took new DNS names (a late raw/dns file before them)
    hours_renamed: list[dt.datetime] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


def _load_config(path: str | None):
    from jobs import config as CF  # noqa: PLC0415 - heavy imports stay out of the CLI's start-up
    return CF.load_config(path) if path else CF.JobConfig()


def _parse_lookback(cfg) -> dt.timedelta:
    return dt.timedelta(seconds=float(cfg.dns_lookback_s))


def _tier_starts(cfg) -> dict[str, dict]:
    """{month: tier state} of the config's egress baselines (the months' chains start there)."""
    from jobs import pricing  # noqa: PLC0415
    cards = pricing.RateCards.for_config(cfg)
    return {m: cfg.tier_start(m, cards) for m in sorted(cfg.egress_baseline)}


def run_cost_job(opts: JobOptions) -> RunResult:
    t0 = time.monotonic()
    if opts.start and opts.end and opts.end <= opts.start:
        raise JobError(f"--end {opts.end.isoformat()} is not after --start {opts.start.isoformat()}")
    if opts.cell_rows <= 0:
        raise JobError(f"--cell-rows must be positive, got {opts.cell_rows}")
    lake = open_lake(opts.lake_url, opts.s3_endpoint, retry=RetryPolicy.for_job())
    lake.check_writable()
    cfg = _load_config(opts.config_path)
    ranges_dir = opts.ip_ranges_dir or cfg.ip_ranges_dir
    if ranges_dir and not os.path.isdir(ranges_dir):
        raise JobError(f"IP ranges directory {ranges_dir!r} does not exist")
    lease = lock.acquire(lake, ttl_s=opts.lease_ttl_s, wait_s=opts.wait_s)
    try:
        return _run_leased(opts, lake, lease, cfg, ranges_dir, t0)
    finally:
        lease.release()


def _run_leased(opts: JobOptions, lake: Lake, lease, cfg, ranges_dir, t0) -> RunResult:
    recovered = C.recover(lake, lease)
    starts = _tier_starts(cfg)
    # the ledger must agree with the hours the dead run committed before anything is planned
    for month in sorted({st.month_of(h) for h in recovered.hours}):
        st.EgressLedger.load(lake, month, C.read_records(lake, recovered.hours), recovered.hours,
                             start=starts.get(month, {}))
    lookback = _parse_lookback(cfg)
    p = plan(lake, opts.start, opts.end, lookback, opts.lateness,
             also_months={st.month_of(h) for h in recovered.hours}, bounds=identity.Bounds.of(cfg),
             tier_starts=starts)
    out = opts.progress
    if out is not None:
        print(f"cost: {len(p.compute)} hour(s) to compute, {len(p.retier)} to check for re-tiering, "
              f"{len(p.duplicates)} duplicate upload(s) skipped", file=out, flush=True)
    d = _Driver(lake, lease, opts, p, cfg, ranges_dir, lookback)
    task_nodes: dict[str, int] = {}
    todo = sorted(set(p.compute) | set(p.retier) | set(p.roll))
    if todo or recovered.committed:
        lease.publishing(sorted(set(todo) | set(recovered.hours)))
        ex = InlineExecutor() if opts.executor == "inline" else RayExecutor(opts.ray_address, opts.num_cpus)
        try:
            d.run(ex, extra_days={h.date() for h in recovered.committed})
            task_nodes = ex.placement()
            if out is not None and task_nodes:
                print("cost: tasks per Ray node: " + ", ".join(f"{k} {v}" for k, v in sorted(task_nodes.items())),
                      file=out, flush=True)
        finally:
            ex.shutdown()
    for ledger in p.ledgers.values():
        ledger.save(lake)
    if todo or recovered.hours:
        C.clean_staging(lake, lease.token)
        lease.publishing([])
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
        hours_computed=p.compute, hours_retiered=sorted(d.retiered), hours_renamed=sorted(d.renamed),
        rows_in=sum(r["rows_in"] for r in results), rows_out=sum(r["rows_out"] for r in results),
        files_read=sum(r["files_read"] for r in results), duplicates=p.duplicates, quarantined=quarantined,
        seconds=time.monotonic() - t0, summary=sm.merge([r["summary"] for r in results]), cells=len(results),
        task_nodes=task_nodes,
        inventory_gaps={h: _gaps(rs) for h, rs in sorted(d.results.items()) if _gaps(rs)},
    )


# ----------------------------------------------------------------------------- publishing

def _gaps(results: list[dict]) -> list[str]:
    """Inventory kinds missing for part of the hour (any of its cells saw the gap)."""
    return sorted({k for r in results for k in r.get("inventory_gap", [])})


def _snapshot_hour(rel: str) -> dt.datetime:
    """The hour an inventory snapshot file is named in (its snapshot_time's hour)."""
    stamp = rel.rsplit("-", 1)[-1].split(".", 1)[0]
    return st.hour_of(dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC))


def _cell_of(part: str) -> int:
    """The cell number in a part's name (`part-<token>-<cell>.parquet`; older `part-0`: 0)."""
    stem = part.rsplit("/", 1)[-1].split(".", 1)[0]
    try:
        return int(stem.rsplit("-", 1)[-1])
    except ValueError:
        return 0


def _publish_hour(lake: Lake, lease, rec: C.HourRecord, partials: dict[str, Any] | None) -> C.HourRecord:
    """Stage the hour's rollup partials, then commit the hour: its record (listing its parts
    and partials) is the commit point, rolled forward at once (jobs/commit.py)."""
    for name, table in (partials or {}).items():
        final = C.partial_path(name, rec.hour, lease.token)
        C.write_part(lake, lease.token, final, table)
        rec.parts[f"partials/{name}"] = [final]
    return C.publish_hour(lake, lease, rec)


def _read_partials(lake: Lake, rec: C.HourRecord) -> dict[str, Any] | None:
    """The hour's committed partials, or None if its record has none (committed before them)."""
    out = {}
    for name in pt.ROLLUPS:
        files = rec.parts.get(f"partials/{name}")
        if not files:
            return None
        out[name] = pt.ROLLUPS[name].combine([lake.read_table(f) for f in files])
    return out


# ----------------------------------------------------------------------------- the driver

class _Driver:
    def __init__(self, lake: Lake, lease, opts: JobOptions, p: Plan, cfg, ranges_dir, lookback):
        self.lake, self.lease, self.opts, self.p = lake, lease, opts, p
        self.cfg, self.ranges_dir, self.lookback = cfg, ranges_dir, lookback
        self.url, self.ep = opts.lake_url, opts.s3_endpoint
        self.token = lease.token
        self.results: dict[dt.datetime, list[dict]] = {}
        self.retiered: set[dt.datetime] = set()
        self.renamed: set[dt.datetime] = set()
        self.rolled: dict[dt.datetime, list] = {}   # rolled hour -> per committed part: rename result or None
        self.committed: dict[dt.datetime, C.HourRecord] = {}
        self.bad: list[dict] = []
        self._ctx_evidence: dict[dt.datetime, Any] = {}   # hour -> its context task's evidence ref
        self._confirming: dict[dt.datetime, Any] = {}     # hour -> great-expectations' verdict (a Future)
        from jobs import pricing  # noqa: PLC0415
        self.cards = pricing.RateCards.for_config(cfg)  # the cards the cells price with
        for m in {st.month_of(h) for h in p.compute + p.retier + p.roll} - set(p.ledgers):
            p.ledgers[m] = st.EgressLedger.load(lake, m, start=cfg.tier_start(m, self.cards))

    def _ledger(self, h: dt.datetime) -> st.EgressLedger:
        return self.p.ledgers[st.month_of(h)]

    # -- planning helpers
    def _cells(self) -> dict[dt.datetime, list[CL.Cell]]:
        inputs = {}
        for h in self.p.compute:
            sigs = self.p.files[h]
            inputs[h] = CL.estimate_rows(self.lake, [(f, sigs[f].size if f in sigs else 0) for f in self.p.specs[h].flows])
        out: dict[dt.datetime, list[CL.Cell]] = {}
        for c in CL.make_cells(inputs, self.opts.cell_rows):
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
        inv_new = {k: [f for f in sorted(v) if _snapshot_hour(f) >= h] for k, v in inv.items()}
        return T.ContextSpec(hour=h, inventory={k: sorted(v) for k, v in inv.items()},
                             dns_own=p.dns_chunks.get(h, []), dns_next=p.dns_chunks.get(h + HOUR, []),
                             cold=cold, prev_digest=self._digest(h - HOUR), digest=self._digest(h),
                             lookback=self.lookback, inv_new=inv_new,
                             inv_prev_digest=cx.inventory_digest(p.inv_index, h - HOUR),
                             inv_digest=cx.inventory_digest(p.inv_index, h))

    def _roll_spec(self, h: dt.datetime) -> T.RollSpec:
        rec = self.p.records.get(h)
        parts = [(rel, C.staged(self.token, C.part_path(h, self.token, _cell_of(rel))))
                 for rel in (rec.parts.get(C.FLOWS, []) if rec else [])]
        return T.RollSpec(hour=h, dns_own=self.p.dns_chunks.get(h, []), dns_next=self.p.dns_chunks.get(h + HOUR, []),
                          digest=self._digest(h), lookback=self.lookback, parts=parts)

    def _submit_rolls(self, h: dt.datetime, state_ref, info_ref, roll_futs: dict) -> None:
        """After computed hour `h`: roll its DNS state through the following hours that are not
        computed (each task returns at once when the state before it came out unchanged)."""
        roll = set(self.p.roll)
        nxt = h + HOUR
        while nxt in roll:
            refs = self.ex.submit(T.roll_dns, self.url, self.ep, self._roll_spec(nxt), self.cfg, self.ranges_dir,
                                  self.ex.arg(state_ref), self.ex.arg(info_ref), num_returns=2,
                                  memory=CL.memory_for(self.opts.cell_rows))
            roll_futs[nxt] = refs[1]
            state_ref, info_ref = refs
            nxt += HOUR

    # -- the run
    def run(self, ex, extra_days=()) -> None:
        # great-expectations confirms each hour's data-quality evidence in a driver thread, while
        # the cluster works on the next hours (jobs/quality.py, "deferred"). It is imported in
        # this thread, once the first tasks run (_run): importing it in the other thread while
        # this one imports too raced (KeyError: 'pydantic.v1').
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
        self._gx = ThreadPoolExecutor(1, thread_name_prefix="netmon-quality")
        try:
            self._run(ex, extra_days)
        finally:
            self._gx.shutdown(wait=True, cancel_futures=True)

    def _run(self, ex, extra_days=()) -> None:
        self.ex = ex
        cells = self._cells()
        computed = set(self.p.compute)
        roll = set(self.p.roll)
        # rolled hours with a record may need a new commit (their names); the others only a state
        todo = sorted(computed | set(self.p.retier) | {h for h in roll if h in self.p.records})
        progress = Progress(self.opts.progress, len(todo))
        capacity = ex.capacity()
        queue = list(self.p.compute)
        chain: dict[dt.datetime, tuple] = {}      # hour -> (ctx, state, next-hour DNS) refs
        cell_futs: dict[Any, CL.Cell] = {}
        done_cells: dict[dt.datetime, list[dict]] = {}
        waiting: list[tuple[dt.datetime, list, dict]] = []  # settled hours whose parts are being re-tiered
        bad_refs: list = []
        roll_futs: dict[dt.datetime, Any] = {}   # rolled hour -> its info future
        settled = 0

        def submit_more():
            # keep the whole cluster busy (two cells per CPU queued), contexts built ahead
            while queue and len(cell_futs) < 2 * capacity:
                h = queue.pop(0)
                prev = chain.get(h - HOUR)
                handed = (ex.arg(prev[1]), ex.arg(prev[2]), ex.arg(prev[5])) if prev else (None, None, None)
                refs = ex.submit(T.build_context, self.url, self.ep, self._context_spec(h), self.cfg, *handed,
                                 num_returns=7, memory=CL.BASE_BYTES)
                chain[h] = refs[:6]
                bad_refs.append(refs[3])
                self._ctx_evidence[h] = refs[6]
                self._submit_rolls(h, refs[1], refs[4], roll_futs)
                est = self._ledger(h).state_before(h)  # exact once the previous hour is settled
                # a window larger than a cell: each of its cells gets the others' outside clients
                clients = [(c, ex.submit(T.relay_clients, self.url, self.ep, c.files, ex.arg(refs[0]),
                                         memory=CL.memory_for(c.rows)))
                           for c in cells[h] if c.window is not None]
                for c in cells[h]:
                    staged = C.staged(self.token, C.part_path(h, self.token, c.index))
                    others = [ex.arg(f) for d, f in clients if d.window == c.window and d.index != c.index]
                    f = ex.submit(T.cost_cell, self.url, self.ep, c, ex.arg(refs[0]), self.ranges_dir, staged, est,
                                  *others, memory=c.memory)
                    cell_futs[f] = c
                done_cells[h] = []
                for old in [k for k in chain if k < h]:  # only the last hour's state is handed on
                    del chain[old]

        def hour_ready(h) -> bool:
            if h in roll:  # its roll must be submitted (with its computed hour) and done
                if h not in roll_futs or not ex.ready([roll_futs[h]], 0):
                    return False
                if h not in self.rolled:
                    info = ex.get(roll_futs[h])
                    self.rolled[h] = info["parts"]
                    self.bad += info["quarantined"]
                return True
            return h not in computed or (h in done_cells and len(done_cells[h]) == len(cells[h]))

        from jobs import quality  # noqa: PLC0415
        warmed = False
        while settled < len(todo) or waiting:
            submit_more()
            if not warmed:  # the cluster has work now: GX's import (seconds) overlaps it
                quality.warm_up()
                warmed = True
            for f in ex.ready(list(cell_futs), 0):
                c = cell_futs.pop(f)
                done_cells[c.hour].append(ex.get(f))
            while settled < len(todo) and hour_ready(todo[settled]):
                h = todo[settled]
                waiting.append(self._settle(h, done_cells.pop(h)) if h in computed else self._settle_later(h))
                settled += 1
            not_ready = []  # only futures still running: waiting on a finished one would spin
            for item in list(waiting):
                done = ex.ready(item[1], 0)
                if len(done) == len(item[1]):
                    waiting.remove(item)
                    progress.hour_done(self._commit(*item))
                else:
                    finished = {id(f) for f in done}
                    not_ready += [f for f in item[1] if id(f) not in finished]
            rolls = [f for h, f in roll_futs.items() if h not in self.rolled]
            pending = list(cell_futs) + not_ready + [f for f in rolls if not ex.ready([f], 0)]
            if pending:
                ex.wait_any(pending, 1.0)
            elif settled < len(todo) or waiting:
                time.sleep(0.05)  # everything finished is being consumed above: no hot loop
        for h, f in roll_futs.items():  # rolls through hours without a record: their states only
            if h not in self.rolled:
                info = ex.get(f)
                self.rolled[h] = info["parts"]
                self.bad += info["quarantined"]
        for b in bad_refs:
            self.bad += ex.get(b)
        for r in self.results.values():
            for x in r:
                self.bad += x["quarantined"]
        faults.point("after-cells")
        self._rollups(set(extra_days))

    # -- tiers
    def _settle(self, h: dt.datetime, results: list[dict]):
        """A computed hour: exact window rates from its cells' volumes; re-tier the parts whose
        provisional rates differ. Returns (hour, re-tier futures, what committing needs)."""
        results = sorted(results, key=lambda r: r["cell"])
        from jobs import quality  # noqa: PLC0415
        evidence = [e for r in results for e in r.pop("quality", [])]
        evidence += self.ex.get(self._ctx_evidence.pop(h))
        self._confirming[h] = self._gx.submit(quality.confirm, evidence)
        ledger = self._ledger(h)
        vols: tiers.Volumes = {}
        for r in results:
            tiers.add(vols, r["volumes"])
        before = ledger.state_before(h)
        rates, after = tiers.window_rates(vols, before, self.cards)
        tiers.set_pending(ledger, h, vols, before, after)
        futs, which = [], []
        for r in results:
            mine = {k: rates[k] for k in r["rates"]}
            if mine != r["rates"]:
                futs.append(self.ex.submit(T.retier_part, self.url, self.ep, r["part"], r["part"], mine,
                                           memory=CL.memory_for(r["rows_out"])))
                which.append(r)
        return h, futs, {"results": results, "which": which}

    def _settle_later(self, h: dt.datetime):
        """A committed hour after a changed one: re-tier only if the state before it moved, and
        then only the parts whose windows' rates moved."""
        ledger = self._ledger(h)
        rec = self.p.records[h]
        before = ledger.state_before(h)
        rels = rec.parts.get(C.FLOWS, [])
        renamed = self.rolled.get(h) or [None] * len(rels)  # parts re-named by a DNS roll (staged)
        parts = [(rel, C.part_path(h, self.token, _cell_of(rel))) for rel in rels]
        if tiers.same_state(rec.tier_state_before, before):
            if not any(renamed):
                return h, [], {"skip": True}
            return h, [], {"parts": parts, "renamed": renamed}
        vols = tiers.from_list(rec.tier_volumes)
        rates, after = tiers.window_rates(vols, before, self.cards)
        tiers.set_pending(ledger, h, vols, before, after)
        futs = []
        for (rel, final), rn in zip(parts, renamed):
            src = rn["part"] if rn else rel   # a re-named part is re-tiered in place, in staging
            futs.append(self.ex.submit(T.retier_part, self.url, self.ep, src, C.staged(self.token, final), rates,
                                       memory=CL.memory_for(self.opts.cell_rows)))
        return h, futs, {"parts": parts, "renamed": renamed, "before": before, "after": after, "vols": vols}

    # -- committing
    def _commit(self, h: dt.datetime, futs: list, info: dict) -> int:
        got = [self.ex.get(f) for f in futs]
        if info.get("skip"):
            return 0
        ledger = self._ledger(h)
        e = ledger.entries[st.hour_id(h)]
        if "results" in info:  # a computed hour
            from jobs import quality  # noqa: PLC0415
            try:
                self._confirming.pop(h).result()  # nothing is published that great-expectations did not pass
            except quality.QualityDisagreement as exc:
                raise JobError(str(exc)) from None
            results = info["results"]
            deltas = []
            for r, g in zip(info["which"], got):
                if g is not None:
                    r["summary"] = g["summary"]
                    deltas.append(g["delta"])
            partials = {name: ru.combine([r["partials"][name] for r in results] + [d[name] for d in deltas])
                        for name, ru in pt.ROLLUPS.items()}
            rec = C.HourRecord(
                hour=h, inputs=self.p.files[h], parts={C.FLOWS: [C.part_path(h, self.token, r["cell"]) for r in results]},
                rows_in=sum(r["rows_in"] for r in results), rows_out=sum(r["rows_out"] for r in results),
                kept_bytes=sum(r["kept_bytes"] for r in results),
                quarantined=[q["path"] for r in results for q in r["quarantined"]],
                flags={"inventory_gap": _gaps(results)},
                tier_volumes=e["tier_volumes"], tier_state_before=e["tier_state_before"],
                tier_state_after=e["tier_state_after"])
            self.results[h] = results
            rows = rec.rows_out
        else:  # a committed hour re-tiered or re-named: only its rewritten parts change
            old = self.p.records[h]
            retiered = got or [None] * len(info["parts"])
            changed, deltas = {}, []
            for (rel, final), rn, g in zip(info["parts"], info["renamed"], retiered):
                deltas += [x["delta"] for x in (rn, g) if x is not None]
                if rn is not None or g is not None:
                    changed[rel] = final
            oldp = _read_partials(self.lake, old)
            partials = None
            if oldp is not None:
                partials = {name: ru.combine([oldp[name]] + [d[name] for d in deltas])
                            for name, ru in pt.ROLLUPS.items()}
            rec = C.HourRecord(
                hour=h, inputs=old.inputs, rows_in=old.rows_in, rows_out=old.rows_out, kept_bytes=old.kept_bytes,
                quarantined=old.quarantined, flags=old.flags,
                parts={C.FLOWS: sorted(changed.get(rel, rel) for rel, _ in info["parts"])},
                tier_volumes=e["tier_volumes"], tier_state_before=e["tier_state_before"],
                tier_state_after=e["tier_state_after"])
            if any(g is not None for g in retiered):
                self.retiered.add(h)
            if any(info["renamed"]):
                self.renamed.add(h)
            rows = 0
        rec = _publish_hour(self.lake, self.lease, rec, partials)
        ledger.set_record(rec)
        self.committed[h] = rec
        return rows

    def _rollups(self, extra_days: set) -> None:
        """Each touched date's rollups, summed from its hours' partials (named by their records)."""
        days = sorted({h.date() for h in self.committed} | extra_days)
        futs = []
        for day in days:
            recs = C.read_records(self.lake, C.recorded_hours(self.lake, day))
            recs.update({h: r for h, r in self.committed.items() if h.date() == day})
            files: dict[str, list[str]] = {name: [] for name in pt.ROLLUPS}
            legacy: list[str] = []  # hours committed before partials existed: read their parts
            for h, r in sorted(recs.items()):
                if all(r.parts.get(f"partials/{name}") for name in pt.ROLLUPS):
                    for name in pt.ROLLUPS:
                        files[name] += r.parts[f"partials/{name}"]
                else:
                    legacy += r.parts.get(C.FLOWS, [])
            futs.append(self.ex.submit(T.rollup_day, self.url, self.ep, day, files, legacy))
        for f in futs:
            self.ex.get(f)
            faults.point("during-rollups")
