"""Discovery: which hours to (re)compute and which to re-tier, from listings and small JSON only.

- Raw flow and DNS files are listed; badly named files are quarantined; duplicate uploads (same
  node and window_start) keep the newest.
- An hour is computed when its files changed since its manifest (or, with --start/--end,
  every hour in range); later processed hours of a changed month are re-tiered.
- Each computed hour gets an `HourSpec`: its flow files and the DNS and inventory chunks
  (hours) its as-of joins may need.
"""
from __future__ import annotations

import bisect
import datetime as dt
import re
from dataclasses import dataclass

from jobs import identity, load
from jobs import state as st
from lake import schema as S
from lake.storage import Lake

HOUR = dt.timedelta(hours=1)
UTC = dt.timezone.utc
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
    files: dict[dt.datetime, dict[str, st.FileSig]]  # per computed hour: its manifest files
    specs: dict[dt.datetime, HourSpec]
    dns_chunks: dict[dt.datetime, list[str]]             # hour -> raw DNS files (loaded once each)
    inv_chunks: dict[dt.datetime, dict[str, list[str]]]  # hour -> kind -> snapshot files
    duplicates: list[str]                            # superseded uploads (not costed)
    quarantined: list[dict]                          # files quarantined during discovery
    ledgers: dict[str, st.EgressLedger]



def _identity_winners(lake: Lake, table: str, quarantined: list[dict], now: dt.datetime,
                      bounds: identity.Bounds):
    """List a raw table; quarantine files whose name is bad, disagrees with its partition or is
    dated beyond the clock's bounds (jobs/identity.py); keep the newest upload per
    (node, window_start). Returns ({hour: {path: sig}} of all files, {hour: [winners]}, losers)."""
    by_id: dict[tuple[str, dt.datetime], list[tuple[int, str, st.FileSig]]] = {}
    for info in lake.list_files(table):
        rel = lake.rel(info.path)
        try:
            identity.check_listed(rel, now, bounds)
        except load.InvalidFile as exc:
            load.quarantine(lake, rel, exc.reason, str(exc))
            quarantined.append({"path": rel, "reason": exc.reason, "error": str(exc)})
            continue
        _, node, start = S.parse_raw_file_name(rel)
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
         dns_lookback: dt.timedelta = dt.timedelta(hours=24),
         bounds: identity.Bounds = identity.Bounds(), now: dt.datetime | None = None) -> Plan:
    """Decide which hours to compute and which to re-tier. Reads listings and small JSON only."""
    quarantined: list[dict] = []
    now = now or dt.datetime.now(UTC)
    flow_files, flow_winners, dup_flows = _identity_winners(lake, "raw/flows", quarantined, now, bounds)
    dns_files, dns_winners, dup_dns = _identity_winners(lake, "raw/dns", quarantined, now, bounds)
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


