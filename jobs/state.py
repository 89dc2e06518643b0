"""The cost job's bookkeeping, kept in the lake (`_state/`) so any runner sees the same state.

- `_state/processed/raw/flows/<YYYY-MM-DD>/<HH>.json`: one manifest per hour listing the raw
  files (path, size, mtime) that hour's cost partition was computed from. An hour is
  recomputed when a file appears that is not in its manifest, or whose size or mtime changed
  (a late file, an agent's retried upload). A file that disappears (retention, quarantine)
  does not trigger a recomputation: costs are not destroyed by deleting raw data.
  The manifest is written after the hour's partitions, so a crash re-does the hour.
- `_state/egress/<YYYY-MM>.json`: per hour, the internet-egress bytes that count toward the
  monthly tiers, per rate-card key. Month-to-date offsets for an hour are the sum over the
  earlier hours of the month, so an hour can be tiered without reading earlier partitions.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

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


# ----------------------------------------------------------------------------- manifests

@dataclass
class Manifest:
    hour: dt.datetime
    files: dict[str, FileSig] = field(default_factory=dict)  # rel path -> signature
    rows_in: int = 0
    rows_out: int = 0
    kept_bytes: int = 0   # tx + rx of the raw rows kept after de-duplication (= the costs' bytes)
    quarantined: list[str] = field(default_factory=list)
    computed_at: str = ""

    def to_json(self) -> dict:
        return {
            "hour": hour_id(self.hour),
            "files": {p: s.to_json() for p, s in sorted(self.files.items())},
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "kept_bytes": self.kept_bytes,
            "quarantined": sorted(self.quarantined),
            "computed_at": self.computed_at,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        return cls(
            hour=parse_hour_id(data["hour"]),
            files={p: FileSig(int(s["size"]), int(s["mtime_ns"])) for p, s in data.get("files", {}).items()},
            rows_in=int(data.get("rows_in", 0)),
            rows_out=int(data.get("rows_out", 0)),
            kept_bytes=int(data.get("kept_bytes", 0)),
            quarantined=list(data.get("quarantined", [])),
            computed_at=data.get("computed_at", ""),
        )

    def changed_files(self, current: dict[str, FileSig]) -> list[str]:
        """Files of `current` that are new or differ from what this hour was computed from."""
        return sorted(p for p, s in current.items() if self.files.get(p) != s)


def manifest_path(hour: dt.datetime) -> str:
    return f"{S.STATE_DIR}/processed/raw/flows/{hour:%Y-%m-%d}/{hour:%H}.json"


def read_manifest(lake: Lake, hour: dt.datetime) -> Manifest | None:
    data = lake.read_bytes(manifest_path(hour))
    if data is None:
        return None
    try:
        return Manifest.from_json(json.loads(data))
    except (ValueError, KeyError, TypeError):
        return None  # a damaged manifest only means the hour is recomputed


def read_manifests(lake: Lake) -> dict[dt.datetime, Manifest]:
    """Every hour's manifest (one listing plus one small read per hour)."""
    out = {}
    for info in lake.list_files(f"{S.STATE_DIR}/processed/raw/flows", suffix=".json"):
        rel = lake.rel(info.path)
        parts = rel.split("/")
        try:
            hour = dt.datetime.strptime(f"{parts[-2]}T{parts[-1][:2]}", "%Y-%m-%dT%H").replace(tzinfo=dt.timezone.utc)
        except (ValueError, IndexError):
            continue
        m = read_manifest(lake, hour)
        if m is not None:
            out[hour] = m
    return out


def write_manifest(lake: Lake, manifest: Manifest) -> None:
    if not manifest.computed_at:
        manifest.computed_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lake.write_bytes(manifest_path(manifest.hour), (json.dumps(manifest.to_json(), indent=1) + "\n").encode())


# ------------------------------------------------------------------------ egress ledger

def egress_path(month: str) -> str:
    return f"{S.STATE_DIR}/egress/{month}.json"


class EgressLedger:
    """Internet-egress bytes per hour and per tier key for one month.

    Keys are strings (`provider/region`, the rate card a row was priced with); values are the
    bytes the tiers count (what `pipeline.egress_bytes` returns for the hour)."""

    def __init__(self, month: str, hours: dict[str, dict[str, int]] | None = None):
        self.month = month
        self.hours: dict[str, dict[str, int]] = hours or {}

    @classmethod
    def load(cls, lake: Lake, month: str) -> "EgressLedger":
        data = lake.read_bytes(egress_path(month))
        if data is None:
            return cls(month)
        raw = json.loads(data)
        return cls(month, {h: {k: int(v) for k, v in d.items()} for h, d in raw.get("hours", {}).items()})

    def save(self, lake: Lake) -> None:
        body = {"month": self.month, "hours": {h: dict(sorted(d.items())) for h, d in sorted(self.hours.items())}}
        lake.write_bytes(egress_path(self.month), (json.dumps(body, indent=1) + "\n").encode())

    def set(self, hour: dt.datetime, volumes: dict[str, int]) -> None:
        self.hours[hour_id(hour)] = {k: int(v) for k, v in volumes.items() if v}

    def offsets_before(self, hour: dt.datetime) -> dict[str, int]:
        """Month-to-date bytes per key over the hours before `hour` (hour ids sort by time)."""
        hid = hour_id(hour)
        out: dict[str, int] = {}
        for h, vols in self.hours.items():
            if h < hid:
                for k, v in vols.items():
                    out[k] = out.get(k, 0) + v
        return out

    def hours_after(self, hour: dt.datetime) -> list[dt.datetime]:
        hid = hour_id(hour)
        return sorted(parse_hour_id(h) for h in self.hours if h > hid)
