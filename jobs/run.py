"""The cost job around the stages: discover -> per-hour Ray tasks -> egress tiers in time order
-> cost partitions -> rollups -> egress ledger -> manifests.

Work unit: one hour of `raw/flows` (all nodes' windows whose window_start is in the hour).
- Discovery (driver): list raw flows, DNS and inventory files; drop duplicate uploads (same
  node and window_start, newest wins); pick the hours whose files changed since their manifest
  (or, with --start/--end, every hour in range).
- Wave 1 (one task per hour): load + check the hour's raw files (quarantining bad ones), the
  inventory snapshots as of the hour's windows and the DNS answers within the lookback, build
  the context, `cost_flows`. Returns the cost table (kept in the object store) and a small info
  dict with the hour's internet-egress volume.
- Tiering (driver, in time order): month-to-date offsets come from the egress ledger
  (`_state/egress/<month>.json`); when an hour changes, every later processed hour of its month
  is re-tiered from its stored partition so monthly totals stay exact.
- Wave 2 (one task per hour): `apply_egress_tiers`, write `costs/flows/date=/hour=/part-0`.
- Rollups (one task per affected date) from that date's cost partitions.
- Then the ledger, then the manifests: a crash before the manifests re-does the hours.
"""
from __future__ import annotations

import bisect
import datetime as dt
import json
import logging
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import load
from jobs import state as st
from jobs import summary as sm
from lake import schema as S
from lake.storage import Lake, open_lake

HOUR = dt.timedelta(hours=1)
#: Parquet metadata key of a cost partition: the month-to-date egress offsets it was tiered from.
OFFSETS_META = b"netmon.egress_offsets"
UTC = dt.timezone.utc
_INV_NAME_RE = re.compile(r"^(?P<kind>pods|services|nodes|endpoints)-(?P<stamp>\d{8}T\d{6}Z)\.parquet$")


class JobError(Exception):
    """A problem the user can fix (bad option, unreachable lake); printed as one line."""


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


@dataclass
class HourSpec:
    """Everything one wave-1 task needs to cost one hour (paths and chunk names, no data)."""
    hour: dt.datetime
    flows: list[str]                 # raw flow files to cost (duplicates already dropped)
    dns_hours: list[dt.datetime]     # DNS chunks (hours) covering the hour and its lookback
    inv_hours: list[dt.datetime]     # inventory chunks (hours) holding the snapshots it may use


@dataclass
class Plan:
    compute: list[dt.datetime]                       # hours to (re)compute, in time order
    retier: list[dt.datetime]                        # later hours whose egress tiers change
    files: dict[dt.datetime, dict[str, st.FileSig]]  # per computed hour: its manifest files
    specs: dict[dt.datetime, HourSpec]
    dns_chunks: dict[dt.datetime, list[str]]             # hour -> raw DNS files (loaded once each)
    inv_chunks: dict[dt.datetime, dict[str, list[str]]]  # hour -> kind -> snapshot files
    duplicates: list[str]                            # superseded uploads (not costed)
    quarantined: list[dict]                          # files quarantined during discovery
    ledgers: dict[str, st.EgressLedger]


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

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------- stages
# The pure stages (jobs/pipeline.py and friends) are imported here only, so the rest of this
# module depends on nothing but their documented entry points.

def _load_config(path: str | None):
    from jobs import config as C  # noqa: PLC0415 - heavy imports stay out of the CLI's start-up
    return C.load_config(path) if path else C.JobConfig()


def _ranges_dir(opts_dir: str | None, cfg) -> str | None:
    return opts_dir or cfg.ip_ranges_dir


_RANGES_CACHE: dict[str | None, Any] = {}


def _ip_ranges(directory: str | None):
    """Published cloud IP ranges, loaded once per worker process (None: no cloud tagging)."""
    if directory is None:
        return None
    if directory not in _RANGES_CACHE:
        from jobs.ipranges import CloudRanges  # noqa: PLC0415
        _RANGES_CACHE[directory] = CloudRanges.load_dir(directory)
    return _RANGES_CACHE[directory]


def _build_context(inv: dict[str, pa.Table], dns: pa.Table, cfg, ranges_dir: str | None):
    from jobs import pipeline  # noqa: PLC0415
    return pipeline.build_context(inv, dns, cfg, _ip_ranges(ranges_dir))


def _egress_volumes(costs: pa.Table) -> dict[str, int]:
    from jobs import pipeline  # noqa: PLC0415
    return {_key(k): int(v) for k, v in pipeline.egress_bytes(costs).items()}


def _tier_amounts(costs: pa.Table, offsets: dict[str, int]) -> np.ndarray:
    """The tiered internet-egress cost of each row given month-to-date `offsets` (0 elsewhere)."""
    from jobs import pipeline  # noqa: PLC0415
    i = costs.schema.get_field_index("cost_usd")
    zero = costs.set_column(i, costs.schema.field(i), pa.array(np.zeros(costs.num_rows), pa.float64()))
    tiered, _ = pipeline.apply_egress_tiers(zero, {_unkey(k): v for k, v in offsets.items()})
    return tiered.column("cost_usd").to_numpy()


def _apply_tiers(costs: pa.Table, offsets: dict[str, int], old_offsets: dict[str, int] | None) -> pa.Table:
    """Add the tiered egress cost to pre-tier `costs`; with `old_offsets`, `costs` were already
    tiered from those offsets (a stored partition): swap the old tier amounts for the new."""
    cost = costs.column("cost_usd").to_numpy().astype(np.float64)
    if old_offsets is not None:
        old = _tier_amounts(costs, old_offsets)
        cost = np.where(old != 0, cost - old, cost)
    new = _tier_amounts(costs, offsets)
    cost = np.where(new != 0, cost + new, cost)
    i = costs.schema.get_field_index("cost_usd")
    return costs.set_column(i, costs.schema.field(i), pa.array(cost, pa.float64()))


def _key(k) -> str:
    """Ledger key of a tier key: the stages use (provider, region) tuples."""
    return "/".join(k) if isinstance(k, tuple) else str(k)


def _unkey(k: str) -> tuple[str, ...]:
    return tuple(k.split("/", 1))


# ----------------------------------------------------------------------------- discovery

def _identity_winners(lake: Lake, table: str, quarantined: list[dict]):
    """List a raw table; quarantine badly named files; keep the newest upload per
    (node, window_start). Returns ({hour: {path: sig}} of all files, {hour: [winners]}, losers)."""
    by_id: dict[tuple[str, dt.datetime], list[tuple[int, str, st.FileSig]]] = {}
    for info in lake.list_files(table):
        rel = lake.rel(info.path)
        parsed = S.parse_raw_file_name(rel)
        if parsed is None:
            try:
                load.file_hour(rel)
            except load.InvalidFile as exc:
                load.quarantine(lake, rel, exc.reason, str(exc))
                quarantined.append({"path": rel, "reason": exc.reason, "error": str(exc)})
            continue
        _, node, start = parsed
        sig = st.sig_of(info)
        by_id.setdefault((node, start), []).append((sig.mtime_ns, rel, sig))
    all_files: dict[dt.datetime, dict[str, st.FileSig]] = {}
    winners: dict[dt.datetime, list[str]] = {}
    losers: list[str] = []
    for (_, start), versions in by_id.items():
        hour = st.hour_of(start)
        versions.sort()
        for _, rel, sig in versions:
            all_files.setdefault(hour, {})[rel] = sig
        winners.setdefault(hour, []).append(versions[-1][1])
        losers.extend(rel for _, rel, _ in versions[:-1])
    for w in winners.values():
        w.sort()
    return all_files, winners, sorted(losers)


def _inventory_index(lake: Lake) -> dict[str, list[tuple[dt.datetime, str]]]:
    out: dict[str, list[tuple[dt.datetime, str]]] = {}
    for kind in S.INVENTORY_KINDS:
        items = []
        for info in lake.list_files(f"inventory/{kind}"):
            rel = lake.rel(info.path)
            m = _INV_NAME_RE.match(rel.rsplit("/", 1)[-1])
            if m:
                t = dt.datetime.strptime(m["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                items.append((t, rel))
        out[kind] = _Sorted(items)
    return out


def plan(lake: Lake, start: dt.datetime | None = None, end: dt.datetime | None = None,
         dns_lookback: dt.timedelta = dt.timedelta(hours=24)) -> Plan:
    """Decide which hours to compute and which to re-tier. Reads listings and small JSON only."""
    quarantined: list[dict] = []
    flow_files, flow_winners, dup_flows = _identity_winners(lake, "raw/flows", quarantined)
    dns_files, dns_winners, dup_dns = _identity_winners(lake, "raw/dns", quarantined)
    manifests = st.read_manifests(lake)

    if start is not None or end is not None:
        lo = start or dt.datetime.min.replace(tzinfo=UTC)
        hi = end or dt.datetime.max.replace(tzinfo=UTC)
        compute = sorted(h for h in flow_winners if h < hi and h + HOUR > lo)
    else:
        compute = []
        for h in sorted(flow_winners):
            current = {**flow_files.get(h, {}), **dns_files.get(h, {})}
            m = manifests.get(h)
            if m is None or m.changed_files(current):
                compute.append(h)

    inv = _inventory_index(lake)
    specs, files = {}, {}
    dns_chunks: dict[dt.datetime, list[str]] = {}
    inv_chunks: dict[dt.datetime, dict[str, list[str]]] = {}
    inv_hour_of = {p: st.hour_of(t) for items in inv.values() for t, p in items}
    inv_by_hour: dict[dt.datetime, dict[str, list[str]]] = {}
    for kind, items in inv.items():
        for t, p_ in items:
            inv_by_hour.setdefault(st.hour_of(t), {k: [] for k in inv})[kind].append(p_)
    dns_sorted = sorted(dns_winners)
    for h in compute:
        lo_dns = h - dns_lookback - HOUR
        dns_hours = dns_sorted[bisect.bisect_left(dns_sorted, lo_dns):bisect.bisect_right(dns_sorted, h + HOUR)]
        for dh in dns_hours:
            dns_chunks[dh] = dns_winners[dh]
        # snapshots for windows ending in (h, h + 1h + one window]; two hours is a safe bound
        needed = {inv_hour_of[p] for items in inv.values() for p in _select_snapshots(items, h, h + 2 * HOUR)}
        for ih in needed:
            inv_chunks.setdefault(ih, inv_by_hour[ih])
        specs[h] = HourSpec(hour=h, flows=flow_winners[h], dns_hours=dns_hours, inv_hours=sorted(needed))
        files[h] = {**flow_files.get(h, {}), **dns_files.get(h, {})}

    # Re-tier: processed hours after the earliest changed hour of each month.
    ledgers: dict[str, st.EgressLedger] = {}
    retier: set[dt.datetime] = set()
    computed = set(compute)
    for h in compute:
        month = st.month_of(h)
        if month not in ledgers:
            ledgers[month] = st.EgressLedger.load(lake, month)
    for month, ledger in ledgers.items():
        first = min(h for h in compute if st.month_of(h) == month)
        for later in ledger.hours_after(first):
            if later not in computed and ledger.hours.get(st.hour_id(later)):
                retier.add(later)
    return Plan(compute=compute, retier=sorted(retier), files=files, specs=specs,
                dns_chunks=dns_chunks, inv_chunks=inv_chunks,
                duplicates=dup_flows + dup_dns, quarantined=quarantined, ledgers=ledgers)


# ------------------------------------------------------------------------- task bodies

_LAKES: dict[tuple[str, str | None], Lake] = {}


def _lake(url: str, endpoint: str | None) -> Lake:
    key = (url, endpoint)
    if key not in _LAKES:
        _LAKES[key] = open_lake(url, endpoint, create_bucket=False)
    return _LAKES[key]


def _select_snapshots(items: list[tuple[dt.datetime, str]], lo: dt.datetime, hi: dt.datetime) -> list[str]:
    """Snapshots an as-of join over windows ending in [lo, hi] can pick: the latest at or before
    `lo` (plus one earlier, since names carry whole seconds), every one up to `hi`; the earliest
    if none precedes `hi` (the lake starts mid-stream). `items` sorted by time."""
    if not items:
        return []
    times = [t for t, _ in items] if not isinstance(items, _Sorted) else items.times
    last = bisect.bisect_right(times, hi) - 1
    if last < 0:
        return [items[0][1]]
    before = bisect.bisect_right(times, lo) - 1
    first = max(before - 1, 0) if before >= 0 else 0
    return [p for _, p in items[first:last + 1]]


class _Sorted(list):
    """(time, path) items sorted by time, with the times kept for bisection."""

    def __init__(self, items):
        super().__init__(sorted(items))
        self.times = [t for t, _ in self]


def load_dns_chunk(lake_url: str, endpoint: str | None, files: list[str]):
    """Wave 0: one hour of raw DNS files, checked (bad ones quarantined). Shared by every hour
    whose lookback covers it, so each file is read once per run."""
    return load.load_files(_lake(lake_url, endpoint), files, "raw/dns")


def load_inventory_chunk(lake_url: str, endpoint: str | None, files: dict[str, list[str]]):
    """Wave 0: the inventory snapshots taken in one hour, per kind."""
    lake = _lake(lake_url, endpoint)
    out, bad = {}, []
    for kind in S.INVENTORY_KINDS:
        out[kind], b = load.read_inventory(lake, files.get(kind, []), kind)
        bad += b
    return out, bad


def compute_hour(lake_url: str, endpoint: str | None, spec: HourSpec, cfg, ranges_dir: str | None,
                 n_dns: int, *chunks):
    """Wave 1: the hour's pre-tier cost table and an info dict (rows, egress, quarantined).
    `chunks`: the DNS tables of spec.dns_hours (n_dns of them), then the inventory dicts of
    spec.inv_hours (wave-0 results; Ray resolves them to values before the call)."""
    lake = _lake(lake_url, endpoint)
    flows, bad = load.load_files(lake, spec.flows, "raw/flows")
    flows = flows.combine_chunks()  # one chunk per file otherwise; the stages work on whole columns
    dns_parts, inv_parts = chunks[:n_dns], chunks[n_dns:]
    dns = pa.concat_tables(dns_parts) if dns_parts else S.RAW_DNS.empty_table()
    inv = {k: pa.concat_tables([c[k] for c in inv_parts]) if inv_parts else None for k in S.INVENTORY_KINDS}
    if flows.num_rows:
        from jobs import pipeline  # noqa: PLC0415
        ctx = _build_context({k: v for k, v in inv.items() if v is not None}, dns, cfg, ranges_dir)
        stats: dict = {}
        costs = S.conform(pipeline.cost_flows(flows, ctx, stats), S.COST_FLOWS)
        _gate_costs(spec.hour, costs, stats["kept_bytes"])
    else:
        costs, stats = S.COST_FLOWS.empty_table(), {"kept_bytes": 0}
    info = {
        "hour": spec.hour,
        "rows_in": flows.num_rows,
        "rows_out": costs.num_rows,
        "files_read": len(spec.flows) - len(bad),
        "egress": _egress_volumes(costs) if costs.num_rows else {},
        "quarantined": bad,
        "kept_bytes": stats["kept_bytes"],
    }
    return costs, info


def _gate_costs(hour: dt.datetime, costs: pa.Table, kept_bytes: int) -> None:
    """A cost partition is published only if it passes its data-quality rules and its bytes
    equal the kept raw rows' bytes; otherwise the run fails, saying why."""
    from jobs import quality  # noqa: PLC0415

    fails = quality.critical(quality.check_costs(costs, raw_bytes=kept_bytes))
    if fails:
        raise JobError(f"cost partition {hour:%Y-%m-%dT%H}:00Z failed its checks and was not published: "
                       + "; ".join(f.describe() for f in fails))


def finish_hour(lake_url: str, endpoint: str | None, hour: dt.datetime, costs: pa.Table | None,
                offsets: dict[str, int], old_offsets: dict[str, int] | None) -> dict:
    """Wave 2: tier the hour's internet egress from month-to-date `offsets`, write its partition.
    `costs` None means re-tier the stored partition (an earlier hour of the month changed): its
    old tier amounts are recomputed from the offsets recorded in its metadata (`old_offsets`,
    the ledger's, if absent) and swapped for the new ones.

    The offsets a partition was tiered from are kept in its Parquet metadata, so re-tiering is
    exact even if a crash left the ledger behind the partitions."""
    lake = _lake(lake_url, endpoint)
    rel = S.cost_file_path("costs/flows", hour)
    if costs is None:
        stored = lake.read_table(rel)
        meta = (stored.schema.metadata or {}).get(OFFSETS_META)
        if meta is not None:
            old_offsets = json.loads(meta)
        costs = S.conform(stored, S.COST_FLOWS)
    else:
        old_offsets = None
    if costs.num_rows:
        costs = S.conform(_apply_tiers(costs, offsets, old_offsets), S.COST_FLOWS)
    meta = dict(S.COST_FLOWS.metadata or {})
    meta[OFFSETS_META] = json.dumps(dict(sorted(offsets.items()))).encode()
    lake.write_table(rel, costs.replace_schema_metadata(meta))
    return {"hour": hour, "rows": costs.num_rows, "partial": sm.partial(costs)}


#: cost columns the rollups and the FOCUS export read (a fraction of the partition)
from jobs.rollup import ROLLUP_COLUMNS  # noqa: E402


def rollup_date(lake_url: str, endpoint: str | None, day: dt.date) -> int:
    """Rebuild the date's rollups from its cost partitions; returns the cost rows read."""
    from jobs import rollup  # noqa: PLC0415
    lake = _lake(lake_url, endpoint)
    when = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
    parts = [lake.rel(i.path) for i in lake.list_files(f"costs/flows/date={day:%Y-%m-%d}")]
    tables = []
    for rel in parts:
        with lake.fs.open_input_file(lake.path(rel)) as f:
            pf = pq.ParquetFile(f)  # partitions written before a column existed lack it
            tables.append(pf.read(columns=[c for c in ROLLUP_COLUMNS if c in pf.schema_arrow.names]))
    tables = [S.conform(t, S.COST_FLOWS).select(ROLLUP_COLUMNS) for t in tables]
    costs = pa.concat_tables(tables) if tables else S.COST_FLOWS.empty_table().select(ROLLUP_COLUMNS)
    lake.write_table(S.cost_file_path("costs/namespace_hourly", when),
                     S.conform(rollup.rollup_namespace_hourly(costs), S.COST_NAMESPACE_HOURLY))
    lake.write_table(S.cost_file_path("costs/workload_daily", when),
                     S.conform(rollup.rollup_workload_daily(costs), S.COST_WORKLOAD_DAILY))
    from jobs.focus import focus_rows  # noqa: PLC0415
    lake.write_table(S.cost_file_path("costs/focus", when), focus_rows(costs))
    return costs.num_rows


# ----------------------------------------------------------------------------- executors

class _Done:
    """A finished 'future' for the inline executor."""
    def __init__(self, value):
        self.value = value


class InlineExecutor:
    def submit(self, fn: Callable, *args, num_returns: int = 1):
        out = fn(*args)
        return tuple(_Done(v) for v in out) if num_returns > 1 else _Done(out)

    def get(self, fut):
        return fut.value

    def put(self, value):
        return value

    def arg(self, fut):
        return fut.value

    def ready(self, futs: list, timeout: float | None = 0) -> list:
        return list(futs)

    def shutdown(self) -> None:
        pass


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a `host:port` (or `ray://host:port`) nobody listens on: Ray itself retries
    connecting to a missing GCS for minutes. `auto` and other forms are left to Ray."""
    import socket  # noqa: PLC0415
    hostport = address.split("://", 1)[-1]
    if address == "auto" or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise JobError(f"cannot start or reach Ray at {address}: {exc}") from None


class RayExecutor:
    def __init__(self, address: str | None, num_cpus: int):
        # Must be set before Ray starts: keeps every listener on 127.0.0.1, no token auth locally.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ["RAY_AUTH_MODE"] = "disabled"
        import ray  # noqa: PLC0415
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                      "log_to_driver": True}
            if address:
                _check_reachable(address)
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=num_cpus, **kwargs)
            except Exception as exc:  # noqa: BLE001 - connection problems are the user's to fix
                raise JobError(f"cannot start or reach Ray{' at ' + address if address else ''}: "
                               f"{' '.join(str(exc).split())[:300]}") from exc
            self.started = True
        self._remote: dict[Callable, Any] = {}

    def submit(self, fn: Callable, *args, num_returns: int = 1):
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(fn)
        return self._remote[fn].options(num_returns=num_returns).remote(*args)

    def get(self, fut):
        try:
            return self.ray.get(fut)
        except self.ray.exceptions.RayTaskError as exc:
            # A JobError raised in a task is the user's message: give it without Ray's wrapping.
            if isinstance(getattr(exc, "cause", None), JobError):
                raise JobError(str(exc.cause)) from None
            raise

    def put(self, value):
        return self.ray.put(value)  # shipped once, resolved in each task that takes it

    def arg(self, fut):
        return fut  # an ObjectRef passed to a task resolves there, without a trip to the driver

    def ready(self, futs: list, timeout: float | None = 0) -> list:
        if not futs:
            return []
        done, _ = self.ray.wait(futs, num_returns=len(futs), timeout=timeout)
        return done

    def shutdown(self) -> None:
        if self.started:
            self.ray.shutdown()


# ------------------------------------------------------------------------------- driver

class _Progress:
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


def _parse_lookback(cfg) -> dt.timedelta:
    return dt.timedelta(seconds=float(cfg.dns_lookback_s))


def run_cost_job(opts: JobOptions) -> RunResult:
    t0 = time.monotonic()
    if opts.start and opts.end and opts.end <= opts.start:
        raise JobError(f"--end {opts.end.isoformat()} is not after --start {opts.start.isoformat()}")
    lake = open_lake(opts.lake_url, opts.s3_endpoint)
    lake.check_writable()
    cfg = _load_config(opts.config_path)
    ranges_dir = _ranges_dir(opts.ip_ranges_dir, cfg)
    if ranges_dir and not os.path.isdir(ranges_dir):
        raise JobError(f"IP ranges directory {ranges_dir!r} does not exist")
    p = plan(lake, opts.start, opts.end, _parse_lookback(cfg))
    todo = sorted(set(p.compute) | set(p.retier))
    out = opts.progress
    if out is not None:
        print(f"cost: {len(p.compute)} hour(s) to compute, {len(p.retier)} to re-tier, "
              f"{len(p.duplicates)} duplicate upload(s) skipped", file=out, flush=True)
    infos: dict[dt.datetime, dict] = {}
    partials: list[dict] = []
    chunk_bad: list[dict] = []
    if todo:
        ex = InlineExecutor() if opts.executor == "inline" else RayExecutor(opts.ray_address, opts.num_cpus)
        try:
            infos, partials, chunk_bad = _execute(ex, opts, p, cfg, ranges_dir, todo, _Progress(out, len(todo)))
        finally:
            ex.shutdown()
        for ledger in p.ledgers.values():
            ledger.save(lake)
        for h in p.compute:
            info = infos[h]
            st.write_manifest(lake, st.Manifest(
                hour=h, files=p.files[h], rows_in=info["rows_in"], rows_out=info["rows_out"],
                kept_bytes=info["kept_bytes"], quarantined=[q["path"] for q in info["quarantined"]]))
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
    )


def _execute(ex, opts: JobOptions, p: Plan, cfg, ranges_dir, todo, progress: _Progress):
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
                t, b = ex.submit(load_dns_chunk, url, ep, p.dns_chunks[hour], num_returns=2)
            else:
                t, b = ex.submit(load_inventory_chunk, url, ep, p.inv_chunks[hour], num_returns=2)
            refs[hour] = t
            bad_refs.append(b)
        return ex.arg(refs[hour])

    def top_up():
        while pending and len(wave1) < ahead:
            h = pending.popleft()
            spec = p.specs[h]
            parts = [chunk("dns", dh) for dh in spec.dns_hours] + [chunk("inv", ih) for ih in spec.inv_hours]
            wave1[h] = ex.submit(compute_hour, url, ep, spec, cfg, ranges_dir, len(spec.dns_hours), *parts,
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
            finals.append(ex.submit(finish_hour, url, ep, h, ex.arg(table_ref), ledger.offsets_before(h), None))
            del table_ref
            top_up()
        else:
            finals.append(ex.submit(finish_hour, url, ep, h, None, ledger.offsets_before(h), old[h]))
        collect(0)
    while finals:
        collect(None)
    days = sorted({h.date() for h in todo})
    for d in [ex.submit(rollup_date, url, ep, day) for day in days]:
        ex.get(d)
    # files quarantined while loading DNS chunks belong to the run (reported in the summary)
    chunk_bad = [q for b in bad_refs for q in ex.get(b)]
    return infos, partials, chunk_bad
