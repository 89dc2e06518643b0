"""Discovery: which hours to (re)compute and which to re-tier, listing only candidate hours.

Work does not grow with the lake's age:
- Candidate hours: with --start/--end, the hours of the range; otherwise the hours from
  `lateness` (default 48 h) before the newest committed hour onwards (every hour on a lake's
  first run). Found from the date partitions of `raw/flows` and `raw/dns` (one listing of
  each table's top level), then only the candidate dates are listed.
- Only the candidate hours' commit records are read (jobs/commit.py). An hour is computed when
  it has no record or a raw file is new or changed since its record (with --start/--end: every
  hour of the range that has flow files). Badly named files are quarantined; duplicate uploads
  (same node and window_start) keep the newest.
- Re-tier: committed hours of a changed month after its first changed hour, and hours after a
  break in the month's chain of tier states (a run that died between re-tiered hours), from
  the month's ledger (one small read; rebuilt from the records when it is unsound). A month
  whose ledger was built from another egress baseline than the config's (`tier_starts`) is
  re-tiered from its first hour: every stored month's ledger is checked for that.
- Each computed hour gets an `HourSpec`: its flow files and the DNS and inventory chunks
  (hours) its as-of joins need; only the dates those cover are listed.
Files that arrive later than the lateness window are found by a run with --start/--end;
`netmon-jobs validate` reports raw files no record took as input.
"""
from __future__ import annotations

import bisect
import datetime as dt
import re
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from jobs import commit as C
from jobs import identity, load
from jobs import state as st
from lake import schema as S
from lake.storage import Lake

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
UTC = dt.timezone.utc
DEFAULT_LATENESS = dt.timedelta(hours=48)
_INV_NAME_RE = re.compile(r"^(?P<kind>pods|services|nodes|endpoints)-(?P<stamp>\d{8}T\d{6}Z)\.parquet$")


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
    files: dict[dt.datetime, dict[str, st.FileSig]]  # per computed hour: its inputs (for its record)
    specs: dict[dt.datetime, HourSpec]
    dns_chunks: dict[dt.datetime, list[str]]             # hour -> raw DNS files (loaded once each)
    inv_chunks: dict[dt.datetime, dict[str, list[str]]]  # hour -> kind -> snapshot files
    duplicates: list[str]                            # superseded uploads (not costed)
    quarantined: list[dict]                          # files quarantined during discovery
    ledgers: dict[str, st.EgressLedger]
    records: dict[dt.datetime, "C.HourRecord"]      # current records of the computed and re-tiered hours
    #: hour -> the DNS files (winners) and their signatures: what a carried DNS state depends on
    dns_sigs: dict[dt.datetime, dict[str, st.FileSig]] = field(default_factory=dict)
    #: hours after a computed hour, up to the DNS lookback, that are not computed themselves: a
    #: changed DNS state of the computed hour is rolled through them (jobs/context.py); those
    #: with a record have it in `records`
    roll: list[dt.datetime] = field(default_factory=list)
    #: kind -> (snapshot time from the name, path) of the listed inventory snapshots, by time
    inv_index: dict[str, list[tuple[dt.datetime, str]]] = field(default_factory=dict)


def _date_dirs(lake: Lake, rel: str) -> list[dt.date]:
    """The `date=` partitions directly under `rel` (one listing, never recursive)."""
    out = []
    sel = pafs.FileSelector(lake.path(rel), recursive=False, allow_not_found=True)
    for info in lake.call(lambda: lake.fs.get_file_info(sel), f"listing {rel}/"):  # retried like every call
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and name.startswith("date="):
            try:
                out.append(dt.date.fromisoformat(name[5:]))
            except ValueError:
                continue
    return sorted(out)


def _list_dates(lake: Lake, table: str, days) -> list:
    return [i for d in sorted(set(days)) for i in lake.list_files(f"{table}/date={d:%Y-%m-%d}")]


def _identity_winners(infos, lake: Lake, quarantined: list[dict] | None, keep=lambda hour: True,
                      now: dt.datetime | None = None, bounds: identity.Bounds = identity.Bounds()):
    """Of listed raw files: quarantine those whose name is bad, disagrees with its partition or
    is dated beyond the clock's bounds (jobs/identity.py); keep the newest upload per (node,
    window_start). Returns ({hour: {path: sig}} of all files, {hour: [winners]}, losers),
    limited to hours `keep` accepts. `quarantined` None: look only, quarantine nothing."""
    now = now or dt.datetime.now(UTC)
    by_id: dict[tuple[str, dt.datetime], list[tuple[int, str, st.FileSig]]] = {}
    for info in infos:
        rel = lake.rel(info.path)
        try:
            identity.check_listed(rel, now, bounds)
        except load.InvalidFile as exc:
            if quarantined is not None:
                load.quarantine(lake, rel, exc.reason, str(exc))
                quarantined.append({"path": rel, "reason": exc.reason, "error": str(exc)})
            continue
        _, node, start = S.parse_raw_file_name(rel)
        if not keep(st.hour_of(start)):
            continue
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


def _inventory_index(lake: Lake, days: set[dt.date]) -> dict[str, list[tuple[dt.datetime, str]]]:
    """Snapshots of the given dates per kind; if a kind has none before the first of them, the
    latest earlier date that has one is listed too (a snapshotter that was down for days)."""
    out: dict[str, list[tuple[dt.datetime, str]]] = {}
    first = min(days) if days else None
    for kind in S.INVENTORY_KINDS:
        table = f"inventory/{kind}"
        items = _snapshots(lake, _list_dates(lake, table, days))
        if first is not None and not any(t.date() <= first for t, _ in items):
            earlier = [d for d in _date_dirs(lake, table) if d < first]
            if earlier:
                items += _snapshots(lake, _list_dates(lake, table, [earlier[-1]]))
        out[kind] = _Sorted(items)
    return out


def _snapshots(lake: Lake, infos) -> list[tuple[dt.datetime, str]]:
    items = []
    for info in infos:
        rel = lake.rel(info.path)
        m = _INV_NAME_RE.match(rel.rsplit("/", 1)[-1])
        if m:
            t = dt.datetime.strptime(m["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            items.append((t, rel))
    return items


def _days(lo: dt.datetime, hi: dt.datetime) -> set[dt.date]:
    """Dates of the hours in [lo, hi]."""
    out, d = set(), lo.date()
    while d <= hi.date():
        out.add(d)
        d += DAY
    return out


def plan(lake: Lake, start: dt.datetime | None = None, end: dt.datetime | None = None,
         dns_lookback: dt.timedelta = dt.timedelta(hours=24), lateness: dt.timedelta = DEFAULT_LATENESS,
         also_months=(), bounds: identity.Bounds = identity.Bounds(), now: dt.datetime | None = None,
         tier_starts: dict[str, dict] | None = None) -> Plan:
    """Decide which hours to compute and which to re-tier. Lists candidate dates only and
    reads small JSON; `also_months`: months whose tier chain must be checked too (those of a
    recovered run); `bounds`, `now`: the clock bounds of raw windows (jobs/identity.py);
    `tier_starts`: {month: tier state} of the config's egress baselines."""
    tier_starts = tier_starts or {}
    quarantined: list[dict] = []
    ident = {"now": now or dt.datetime.now(UTC), "bounds": bounds}
    ranged = start is not None or end is not None
    if ranged:
        lo = st.hour_of(start) if start is not None else None
        hi = end  # exclusive
    else:
        newest = C.newest_recorded_hour(lake)
        lo = st.hour_of(newest - lateness) if newest is not None else None
        hi = None
    in_window = lambda h: (lo is None or h >= lo) and (hi is None or h < hi)  # noqa: E731
    raw_days = sorted(set(_date_dirs(lake, "raw/flows")) | set(_date_dirs(lake, "raw/dns")))
    cand_days = [d for d in raw_days if (lo is None or d >= lo.date()) and (hi is None or
                 dt.datetime(d.year, d.month, d.day, tzinfo=UTC) < hi)]
    flow_files, flow_winners, dup_flows = _identity_winners(
        _list_dates(lake, "raw/flows", cand_days), lake, quarantined, in_window, **ident)
    dns_infos = _list_dates(lake, "raw/dns", cand_days)
    candidates = sorted(flow_winners)
    records = C.read_records(lake, candidates)

    if ranged:
        compute = candidates
    else:
        dns_cand, _, _ = _identity_winners(dns_infos, lake, None, in_window, **ident)
        compute = []
        for h in candidates:
            current = {**flow_files.get(h, {}), **dns_cand.get(h, {})}
            r = records.get(h)
            if r is None or r.changed_inputs(current):
                compute.append(h)

    # DNS for the computed hours' lookback: the candidate dates' listing plus earlier dates
    dns_days = set()
    for h in compute:
        dns_days |= _days(h - dns_lookback - HOUR, h + dns_lookback + 2 * HOUR)
    extra = [d for d in dns_days if d not in set(cand_days)]
    dns_files, dns_winners, dup_dns = _identity_winners(
        dns_infos + _list_dates(lake, "raw/dns", [d for d in extra if d in set(raw_days)]), lake, quarantined,
        **ident)
    inv_days = set()
    for h in compute:
        inv_days |= _days(h - DAY, h + 2 * HOUR)
    inv = _inventory_index(lake, inv_days) if compute else {k: _Sorted([]) for k in S.INVENTORY_KINDS}

    specs, files = {}, {}
    dns_chunks: dict[dt.datetime, list[str]] = {}
    inv_chunks: dict[dt.datetime, dict[str, list[str]]] = {}
    inv_hour_of = {p: st.hour_of(t) for items in inv.values() for t, p in items}
    inv_by_hour: dict[dt.datetime, dict[str, list[str]]] = {}
    for kind, items in inv.items():
        for t, p_ in items:
            inv_by_hour.setdefault(st.hour_of(t), {k: [] for k in inv})[kind].append(p_)
    dns_sorted = sorted(dns_winners)
    computed = set(compute)
    # a computed hour's DNS state may change the names of the later hours within the lookback:
    # the DNS files those hours' states and lookups read (rolled by the driver, jobs/run.py)
    lb_h = _lookback_hours(dns_lookback)
    last = max([*records, *dns_winners], default=None)  # nothing to roll into beyond it
    roll = sorted(x for x in {h + k * HOUR for h in compute for k in range(1, lb_h + 2)} - computed
                  if last is not None and x <= last)
    for rh in roll:
        for dh in dns_sorted[bisect.bisect_left(dns_sorted, rh - lb_h * HOUR):bisect.bisect_right(dns_sorted, rh + HOUR)]:
            dns_chunks[dh] = dns_winners[dh]
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

    # Re-tier: committed hours after the earliest changed hour of each month, and after any
    # break in a month's chain of tier states.
    ledgers: dict[str, st.EgressLedger] = {}
    retier: set[dt.datetime] = set()
    months = {st.month_of(h) for h in compute} | set(also_months)
    if not ranged and candidates:
        months.add(st.month_of(candidates[-1]))
    months |= _baseline_changed(lake, tier_starts, months)
    for month in sorted(months):
        ledgers[month] = st.EgressLedger.load(lake, month, records,
                                              [h for h in candidates if st.month_of(h) == month],
                                              start=tier_starts.get(month, {}))
    for month, ledger in ledgers.items():
        firsts = [h for h in compute if st.month_of(h) == month] + ledger.chain_breaks()[:1]
        if not firsts:
            continue
        first = min(firsts)
        later = ledger.hours_after(first) + ([first] if first not in computed and
                                             st.hour_id(first) in ledger.entries else [])
        retier.update(h for h in later if h not in computed)
    roll_set = set(roll)
    records = {h: r for h, r in records.items() if h in computed or h in retier or h in roll_set}
    records.update(C.read_records(lake, [h for h in retier | roll_set if h not in records]))
    retier = {h for h in retier if h in records}
    return Plan(compute=compute, retier=sorted(retier), files=files, specs=specs,
                dns_chunks=dns_chunks, inv_chunks=inv_chunks,
                duplicates=dup_flows + dup_dns, quarantined=quarantined, ledgers=ledgers, records=records,
                dns_sigs={h: {p_: dns_files[h][p_] for p_ in dns_winners[h]} for h in dns_chunks}, roll=roll,
                inv_index=inv)


def _lookback_hours(lookback: dt.timedelta) -> int:
    return int(-(-lookback.total_seconds() // 3600))


def _baseline_changed(lake: Lake, tier_starts: dict[str, dict], known: set) -> set[str]:
    """Stored months (one ledger per month) whose ledger's start is not the config's baseline:
    a baseline added, changed or removed re-tiers its month even without new raw files."""
    out = set()
    for info in lake.list_files(f"{S.STATE_DIR}/egress", suffix=".json"):
        month = info.base_name[: -len(".json")]
        if month in known or not re.fullmatch(r"\d{4}-\d{2}", month):
            continue
        cached = st.EgressLedger.read(lake, month)
        if cached is not None and not st.same_start(cached.start, tier_starts.get(month, {})):
            out.add(month)
    return out


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


