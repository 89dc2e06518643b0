"""The cost job's bookkeeping helpers and the month-to-date tier ledger (`_state/egress/`).

What is published is said by the hour commit records (jobs/commit.py, `_state/hours/`); the
ledger `_state/egress/<YYYY-MM>.json` is a cache of the month's records' tier fields (per
hour: token, tier volumes, tier state before and after), so planning an hour needs one small
read instead of the month's records. It is never trusted blindly: a ledger that is missing,
damaged, whose chain of states is broken (an hour's state before is not the previous hour's
state after) or that disagrees with a record the run read is rebuilt from the month's
records. Records whose own chain is broken (a run died between re-tiered hours) make
discovery re-tier from the break.

A month's chain starts from `start`: the config's `egress_baseline` of the month as a tier
state (internet egress the account used outside the lake), {} without one. The ledger keeps
the start it was built with; a run whose config gives another rebuilds the ledger with the
new start, which breaks the chain at the month's first hour, so the month is re-tiered.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from lake import schema as S
from lake.storage import Lake

HOUR = dt.timedelta(hours=1)


@dataclass(frozen=True)
class FileSig:
    """What identifies one version of a stored file."""
    size: int
    mtime_ns: int

    def to_json(self) -> dict:
        return {"size": self.size, "mtime_ns": self.mtime_ns}


def sig_of(info) -> FileSig:
    """FileSig of a pyarrow FileInfo (mtime is LastModified on object stores)."""
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    return FileSig(int(info.size or 0), int(mtime))


def hour_of(ts: dt.datetime) -> dt.datetime:
    return S.as_utc(ts).replace(minute=0, second=0, microsecond=0)


def hour_id(hour: dt.datetime) -> str:
    return f"{hour:%Y-%m-%dT%H}:00:00Z"


def parse_hour_id(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:00:00Z").replace(tzinfo=dt.timezone.utc)


def month_of(hour: dt.datetime) -> str:
    return f"{hour:%Y-%m}"


# ------------------------------------------------------------------------ tier ledger

def egress_path(month: str) -> str:
    return f"{S.STATE_DIR}/egress/{month}.json"


def _fault(name: str) -> None:
    try:
        from jobs import faults  # noqa: PLC0415 - test-only failpoints, when present
    except ImportError:
        return
    faults.point(name)


def volumes_by_pool(tier_volumes: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for pool, _window, b in tier_volumes:
        out[pool] = out.get(pool, 0) + int(b)
    return out


def advance_state(before: dict, tier_volumes: list) -> dict:
    """Month-to-date state after an hour under the cumulative-bytes rule (state = bytes per
    pool so far). The driver stores whatever state its tiering returns; this is the rule of
    `offsets_before`."""
    out = {k: int(v) for k, v in before.items()}
    for pool, b in volumes_by_pool(tier_volumes).items():
        if b:
            out[pool] = out.get(pool, 0) + b
    return dict(sorted(out.items()))


class EgressLedger:
    """The month's tier fields per committed hour (a cache of the hours' records).

    `entries[hour id]` = {"token", "tier_volumes", "tier_state_before", "tier_state_after"}.
    `hours[hour id]` is the per-pool view of the volumes ({pool: bytes}). `start` is the
    state before the month's first hour (the month's egress baseline)."""

    def __init__(self, month: str, entries: dict[str, dict] | None = None, start: dict | None = None):
        self.month = month
        self.start: dict = dict(sorted((start or {}).items()))
        self.entries: dict[str, dict] = dict(sorted((entries or {}).items()))
        self.rebuilt: str | None = None   # why it was rebuilt from records (None: cache used)

    # ---------------------------------------------------------------- persistence
    @classmethod
    def read(cls, lake: Lake, month: str) -> "EgressLedger | None":
        """The cached ledger as stored, or None when missing or damaged."""
        data = lake.read_bytes(egress_path(month))
        if data is None:
            return None
        try:
            raw = json.loads(data)
            if raw.get("month") != month:
                return None
            entries = {h: {"token": int(e["token"]), "tier_volumes": [list(v) for v in e["tier_volumes"]],
                           "tier_state_before": dict(e["tier_state_before"]),
                           "tier_state_after": dict(e["tier_state_after"])}
                       for h, e in raw["hours"].items()}
            for h in entries:
                parse_hour_id(h)
            start = {str(k): int(v) for k, v in (raw.get("start") or {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return cls(month, entries, start)

    @classmethod
    def from_records(cls, month: str, records, start: dict | None = None) -> "EgressLedger":
        out = cls(month, start=start)
        for rec in sorted(records, key=lambda r: r.hour):
            if month_of(rec.hour) == month:
                out.set_record(rec)
        return out

    @classmethod
    def load(cls, lake: Lake, month: str, records: dict | None = None,
             candidates=(), start: dict | None = None) -> "EgressLedger":
        """The month's ledger: the cache if it is sound and agrees with `records` (records
        this run read), `candidates` (hours whose record this run looked for) and `start` (the
        month's baseline state), else rebuilt from the month's records (and saved)."""
        cached = cls.read(lake, month)
        why = None
        if cached is None:
            why = "missing or damaged"
        elif _norm(cached.start) != _norm(start or {}):
            why = "the month's egress baseline changed"
        elif cached.chain_breaks():
            why = "its chain of states is broken"
        else:
            seen = {hour_id(h): r for h, r in (records or {}).items() if month_of(h) == month}
            for h in candidates:
                hid = hour_id(h)
                if month_of(h) != month:
                    continue
                e, r = cached.entries.get(hid), seen.get(hid)
                if (e is None) != (r is None) or (e is not None and e["token"] != r.token):
                    why = f"it disagrees with the record of {hid}"
                    break
        if why is None:
            return cached
        from jobs import commit  # noqa: PLC0415 - commit imports this module
        out = cls.from_records(month, commit.records_of_month(lake, month).values(), start)
        out.rebuilt = why
        out.save(lake)
        return out

    def save(self, lake: Lake) -> None:
        body = {"month": self.month, "start": self.start, "hours": dict(sorted(self.entries.items()))}
        data = (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()
        _fault("during-ledger")
        lake.write_bytes(egress_path(self.month), data)

    # ---------------------------------------------------------------- entries
    def set_record(self, rec) -> None:
        """Take an hour's tier fields from its (committed) record."""
        self.entries[hour_id(rec.hour)] = {
            "token": rec.token, "tier_volumes": [list(v) for v in rec.tier_volumes],
            "tier_state_before": dict(rec.tier_state_before), "tier_state_after": dict(rec.tier_state_after)}
        self.entries = dict(sorted(self.entries.items()))

    def set(self, hour: dt.datetime, volumes: dict[str, int]) -> None:
        """Set an hour's volumes ({pool: bytes}) before it is committed (today's driver)."""
        hid = hour_id(hour)
        e = self.entries.get(hid, {"token": 0, "tier_state_before": {}, "tier_state_after": {}})
        e["tier_volumes"] = [[k, hid, int(v)] for k, v in sorted(volumes.items()) if v]
        self.entries[hid] = e
        self.entries = dict(sorted(self.entries.items()))

    @property
    def hours(self) -> dict[str, dict[str, int]]:
        return {h: volumes_by_pool(e["tier_volumes"]) for h, e in self.entries.items()}

    def offsets_before(self, hour: dt.datetime) -> dict[str, int]:
        """Month-to-date bytes per pool over the hours before `hour` (hour ids sort by time)."""
        hid = hour_id(hour)
        out: dict[str, int] = {}
        for h, e in self.entries.items():
            if h < hid:
                for k, v in volumes_by_pool(e["tier_volumes"]).items():
                    out[k] = out.get(k, 0) + v
        return {k: v for k, v in sorted(out.items()) if v}

    def state_before(self, hour: dt.datetime) -> dict:
        """The tier state after the previous committed hour of the month (the month's start,
        its egress baseline, if none)."""
        hid = hour_id(hour)
        before = [h for h in self.entries if h < hid]
        return dict(self.entries[before[-1]]["tier_state_after"]) if before else dict(self.start)

    def hours_after(self, hour: dt.datetime) -> list[dt.datetime]:
        hid = hour_id(hour)
        return sorted(parse_hour_id(h) for h in self.entries if h > hid)

    def chain_breaks(self) -> list[dt.datetime]:
        """Hours whose state before is not the previous hour's state after (the first hour
        of the month starts from `start`)."""
        out, prev = [], self.start
        for h, e in self.entries.items():
            if _norm(e["tier_state_before"]) != _norm(prev):
                out.append(parse_hour_id(h))
            prev = e["tier_state_after"]
        return out


def same_start(a: dict, b: dict) -> bool:
    return _norm(a) == _norm(b)


def _norm(state: dict) -> dict:
    return {k: v for k, v in state.items() if v not in (0, None)}
