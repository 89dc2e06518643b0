"""The cost job's driver: discover -> per-hour Ray tasks -> egress tiers in time order
-> staged parts -> one commit per hour (jobs/commit.py) -> rollups -> egress ledger, under the
run lease (jobs/lock.py).

Work unit: one hour of `raw/flows` (all nodes' windows whose window_start is in the hour).
- Discovery (jobs/discover.py): which hours to compute and re-tier.
- Wave 1 (jobs/tasks.py, one task per hour): load + check the hour's raw files (quarantining
  bad ones), the inventory snapshots and DNS answers its as-of joins need, `cost_flows`.
- Tiering (here, in time order): month-to-date offsets come from the egress ledger
  (`_state/egress/<month>.json`); when an hour changes, every later processed hour of its month
  is re-tiered from its stored partition so monthly totals stay exact.
- Wave 2 (one task per hour): `T.finish_hour` stages the hour's part; the driver commits the
  hour (its record is the commit point) as each one finishes.
- Rollups (one task per affected date) from that date's committed parts, then the ledger (a
  cache of the records: a crash before it is repaired from them).
Executors (local Ray, a cluster, inline) are in jobs/executors.py.
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from jobs import commit as C
from jobs import faults, identity, load
from jobs import lock
from jobs import state as st
from jobs import summary as sm
from jobs import tasks as T
from jobs.discover import Plan, _select_snapshots, _Sorted, plan  # noqa: F401 (re-exported)
from jobs.errors import JobError  # noqa: F401 (re-exported: the CLI looks it up here)
from jobs.executors import InlineExecutor, RayExecutor
from jobs.progress import Progress
from lake.storage import RetryPolicy, open_lake

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
    #: computed hours costed with an inventory gap -> the inventory kinds missing
    inventory_gaps: dict[dt.datetime, list[str]] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


def _load_config(path: str | None):
    from jobs import config as C  # noqa: PLC0415 - heavy imports stay out of the CLI's start-up
    return C.load_config(path) if path else C.JobConfig()


def _ranges_dir(opts_dir: str | None, cfg) -> str | None:
    return opts_dir or cfg.ip_ranges_dir



def _parse_lookback(cfg) -> dt.timedelta:
    return dt.timedelta(seconds=float(cfg.dns_lookback_s))


def run_cost_job(opts: JobOptions) -> RunResult:
    t0 = time.monotonic()
    if opts.start and opts.end and opts.end <= opts.start:
        raise JobError(f"--end {opts.end.isoformat()} is not after --start {opts.start.isoformat()}")
    lake = open_lake(opts.lake_url, opts.s3_endpoint, retry=RetryPolicy.for_job())
    lake.check_writable()
    cfg = _load_config(opts.config_path)
    ranges_dir = _ranges_dir(opts.ip_ranges_dir, cfg)
    if ranges_dir and not os.path.isdir(ranges_dir):
        raise JobError(f"IP ranges directory {ranges_dir!r} does not exist")
    lease = lock.acquire(lake, ttl_s=opts.lease_ttl_s, wait_s=opts.wait_s)
    try:
        return _run_leased(opts, lake, lease, cfg, ranges_dir, t0)
    finally:
        lease.release()


def _run_leased(opts: JobOptions, lake, lease, cfg, ranges_dir, t0) -> RunResult:
    recovered = C.recover(lake, lease)
    # the ledger must agree with the hours the dead run committed before anything is planned
    for month in sorted({st.month_of(h) for h in recovered.hours}):
        st.EgressLedger.load(lake, month, C.read_records(lake, recovered.hours), recovered.hours)
    p = plan(lake, opts.start, opts.end, _parse_lookback(cfg), opts.lateness,
             also_months={st.month_of(h) for h in recovered.hours}, bounds=identity.Bounds.of(cfg))
    todo = sorted(set(p.compute) | set(p.retier))
    out = opts.progress
    if out is not None:
        print(f"cost: {len(p.compute)} hour(s) to compute, {len(p.retier)} to re-tier, "
              f"{len(p.duplicates)} duplicate upload(s) skipped", file=out, flush=True)
    infos: dict[dt.datetime, dict] = {}
    partials: list[dict] = []
    chunk_bad: list[dict] = []
    if todo:
        lease.publishing(sorted(set(todo) | set(recovered.hours)))
        ex = InlineExecutor() if opts.executor == "inline" else RayExecutor(opts.ray_address, opts.num_cpus)
        try:
            infos, partials, chunk_bad = _execute(ex, opts, p, cfg, ranges_dir, todo, Progress(out, len(todo)),
                                                  _publisher(lake, lease, p), lease.token)
        finally:
            ex.shutdown()
    rolled = {h.date() for h in todo}
    for day in sorted({h.date() for h in recovered.committed} - rolled):
        T.rollup_date(opts.lake_url, opts.s3_endpoint, day)  # the dead run's days
    for ledger in p.ledgers.values():
        ledger.save(lake)
    if todo or recovered.hours:
        C.clean_staging(lake, lease.token)
        lease.publishing([])
    quarantined = list(p.quarantined)
    seen = {q["path"] for q in quarantined}
    skipped = [q for q in chunk_bad if q["reason"] == load.SKIPPED_INVENTORY]
    for q in [q for info in infos.values() for q in info["quarantined"]] + chunk_bad:
        if q["path"] not in seen and q["reason"] != load.SKIPPED_INVENTORY:
            seen.add(q["path"])
            quarantined.append(q)
    if out is not None:
        for q in skipped:
            print(f"cost: warning: inventory snapshot {q['path']} skipped: {q['error']}", file=out, flush=True)
    return RunResult(
        hours_computed=p.compute, hours_retiered=p.retier,
        rows_in=sum(i["rows_in"] for i in infos.values()),
        rows_out=sum(i["rows_out"] for i in infos.values()),
        files_read=sum(i["files_read"] for i in infos.values()),
        duplicates=p.duplicates, quarantined=quarantined,
        seconds=time.monotonic() - t0, summary=sm.merge(partials),
        inventory_gaps={h: i["inventory_gap"] for h, i in sorted(infos.items()) if i.get("inventory_gap")},
    )


def _publisher(lake, lease, p: Plan):
    """Commit one finished hour (jobs/commit.py): its record says what is published."""
    def publish(res: dict, info: dict | None) -> None:
        h = res["hour"]
        ledger = p.ledgers[st.month_of(h)]
        old = p.records.get(h)
        if info is not None:
            rec = C.HourRecord(hour=h, inputs=p.files[h], rows_in=info["rows_in"], rows_out=info["rows_out"],
                               kept_bytes=info["kept_bytes"], quarantined=[q["path"] for q in info["quarantined"]],
                               flags={"inventory_gap": list(info.get("inventory_gap", []))})
        else:  # re-tiered: same inputs and counts, new parts and tier state
            rec = C.HourRecord(hour=h, inputs=old.inputs, rows_in=old.rows_in, rows_out=old.rows_out,
                               kept_bytes=old.kept_bytes, quarantined=old.quarantined, flags=old.flags)
        rec.parts = res["parts"]
        rec.tier_volumes = ledger.entries[st.hour_id(h)]["tier_volumes"]
        rec.tier_state_before = ledger.offsets_before(h)
        rec.tier_state_after = st.advance_state(rec.tier_state_before, rec.tier_volumes)
        ledger.set_record(C.publish_hour(lake, lease, rec))
    return publish


def _execute(ex, opts: JobOptions, p: Plan, cfg, ranges_dir, todo, progress: Progress, publish,
             token: int):
    url, ep = opts.lake_url, opts.s3_endpoint
    computed = set(p.compute)
    pending = deque(p.compute)
    wave1: dict[dt.datetime, tuple] = {}
    ahead = max(2, opts.num_cpus + 1)  # bounded look-ahead keeps the object store small
    # wave 0: DNS and inventory chunks, loaded once each, on first need; the driver drops its
    # reference after the last hour that needs a chunk has been submitted
    dns_refs: dict[dt.datetime, Any] = {}
    inv_refs: dict[dt.datetime, Any] = {}
    bad_refs: list = []
    last_use: dict[tuple[str, dt.datetime], dt.datetime] = {}
    for h in p.compute:
        for dh in p.specs[h].dns_hours:
            last_use[("dns", dh)] = h
        for ih in p.specs[h].inv_hours:
            last_use[("inv", ih)] = h

    def chunk(kind: str, hour: dt.datetime):
        refs = dns_refs if kind == "dns" else inv_refs
        if hour not in refs:
            if kind == "dns":
                t, b = ex.submit(T.load_dns_chunk, url, ep, p.dns_chunks[hour], num_returns=2)
            else:
                t, b = ex.submit(T.load_inventory_chunk, url, ep, p.inv_chunks[hour], num_returns=2)
            refs[hour] = t
            bad_refs.append(b)
        return ex.arg(refs[hour])

    def top_up():
        while pending and len(wave1) < ahead:
            h = pending.popleft()
            spec = p.specs[h]
            parts = [chunk("dns", dh) for dh in spec.dns_hours] + [chunk("inv", ih) for ih in spec.inv_hours]
            wave1[h] = ex.submit(T.compute_hour, url, ep, spec, cfg, ranges_dir, len(spec.dns_hours), *parts,
                                 num_returns=2)
            for key in [("dns", dh) for dh in spec.dns_hours] + [("inv", ih) for ih in spec.inv_hours]:
                if last_use[key] == h:
                    (dns_refs if key[0] == "dns" else inv_refs).pop(key[1], None)

    # offsets the stored partitions of re-tiered hours were priced with (before this run)
    old = {h: p.ledgers[st.month_of(h)].offsets_before(h) for h in p.retier}
    infos: dict[dt.datetime, dict] = {}
    finals: list = []
    partials: list[dict] = []

    def collect(timeout):
        for f in ex.ready(finals, timeout):
            finals.remove(f)
            res = ex.get(f)
            publish(res, infos.get(res["hour"]))
            partials.append(res["partial"])
            progress.hour_done(res["rows"])

    for h in todo:
        ledger = p.ledgers[st.month_of(h)]
        if h in computed:
            top_up()
            table_ref, info_ref = wave1.pop(h)
            info = ex.get(info_ref)
            infos[h] = info
            ledger.set(h, info["egress"])
            finals.append(ex.submit(T.finish_hour, url, ep, h, ex.arg(table_ref), ledger.offsets_before(h), None,
                                    token))
            del table_ref
            top_up()
        else:
            finals.append(ex.submit(T.finish_hour, url, ep, h, None, ledger.offsets_before(h), old[h], token,
                                    p.records[h].parts.get(C.FLOWS, [])))
        collect(0)
    while finals:
        collect(None)
    faults.point("after-cells")
    days = sorted({h.date() for h in todo})
    for d in [ex.submit(T.rollup_date, url, ep, day) for day in days]:
        ex.get(d)
        faults.point("during-rollups")
    # files quarantined while loading DNS chunks belong to the run (reported in the summary)
    chunk_bad = [q for b in bad_refs for q in ex.get(b)]
    return infos, partials, chunk_bad
