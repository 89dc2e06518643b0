"""A raw file's identity, checked against its contents, before anything of it is priced.

The identity of a raw file is (node, window_start), given by its name
`<kind>-<node>-<YYYYMMDDTHHMMSSZ>.parquet`; discovery keeps one file per identity, so a file
whose name lies would be costed under the wrong node or twice. Two checks, raising
`load.InvalidFile` (the file is quarantined with the reason):

From the listing alone (`check_listed`, called by discovery):
- `misfiled`: the partition directories (`date=`, `hour=`, `node=`) disagree with the name
  (a copy put under another node's or hour's directory);
- `future_window`: the window starts after now + the allowed clock skew (`clock_skew`,
  default 10 minutes): a node with a wrong clock; priced, it would open partitions and a
  ledger for a month that has not happened;
- `beyond_horizon`: the window starts before now - `horizon` (default 1096 days): a clock
  reset to 1970, or data too old to bill.

From the rows (`check_rows`, called by the loader after the contract checks):
- `wrong_node` / `wrong_window`: rows of another node, or of another window, than the name
  says (a renamed copy, an agent configured with another node's name);
- `duplicate`: the same, when the file named for the rows' identity exists too: a copy under
  a second name; the file named for it is costed, once.
Byte-identical copies under other names are caught by one of these: their rows cannot match
both names.
"""
from __future__ import annotations

import datetime as dt
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lake import schema as S

UTC = dt.timezone.utc


@dataclass(frozen=True)
class Bounds:
    """How far a window may be from now: ahead by `clock_skew`, behind by `horizon`."""
    clock_skew: dt.timedelta = dt.timedelta(minutes=10)
    horizon: dt.timedelta = dt.timedelta(days=1096)

    @classmethod
    def of(cls, cfg) -> "Bounds":
        """From a JobConfig (`clock_skew_s`, `horizon_s`), defaults where it has none."""
        d = cls()
        skew = getattr(cfg, "clock_skew_s", None)
        horizon = getattr(cfg, "horizon_s", None)
        return cls(dt.timedelta(seconds=skew) if skew is not None else d.clock_skew,
                   dt.timedelta(seconds=horizon) if horizon is not None else d.horizon)


def _invalid(reason: str, message: str):
    from jobs.load import InvalidFile  # noqa: PLC0415 - load imports this module
    return InvalidFile(reason, message)


def _partition(rel: str) -> dict[str, str]:
    """`key=value` directory segments of a path."""
    out = {}
    for seg in posixpath.dirname(rel).split("/"):
        k, eq, v = seg.partition("=")
        if eq:
            out[k] = v
    return out


def check_listed(rel: str, now: dt.datetime, bounds: Bounds = Bounds()) -> None:
    """Check a listed raw file's name against its directories and the clock (no read)."""
    parsed = S.parse_raw_file_name(rel)
    if parsed is None:
        raise _invalid("bad_name", f"file name {posixpath.basename(rel)!r} does not follow "
                       "<kind>-<node>-<YYYYMMDDTHHMMSSZ>.parquet, so its node and window are unknown")
    _, node, start = parsed
    part = _partition(rel)
    want = {"date": f"{start:%Y-%m-%d}", "hour": f"{start:%H}", "node": node}
    wrong = [f"{k}={part.get(k)} (the name says {v})" for k, v in want.items() if part.get(k) != v]
    if wrong:
        raise _invalid("misfiled", f"partition directories disagree with the file name: {', '.join(wrong)}")
    if start > now + bounds.clock_skew:
        raise _invalid("future_window", f"window {start:%Y-%m-%dT%H:%M:%SZ} is {_ago(start - now)} in the future "
                       f"(allowed clock skew {_ago(bounds.clock_skew)}): is the node's clock right?")
    if start < now - bounds.horizon:
        raise _invalid("beyond_horizon", f"window {start:%Y-%m-%dT%H:%M:%SZ} is {_ago(now - start)} old, "
                       f"beyond the horizon of {_ago(bounds.horizon)} (config `horizon`)")


def check_rows(table: pa.Table, rel: str, exists=None) -> None:
    """Check that every row is of the node and window the file's name says. `exists(rel)` (the
    lake's) tells a copy of another file (`duplicate`) from a lying name."""
    if table.num_rows == 0:
        return
    parsed = S.parse_raw_file_name(rel)
    if parsed is None:  # load.read_checked rejected it already
        return
    table_name = "/".join(rel.split("/")[:2])
    _, node, start = parsed
    nodes = pc.unique(table.column("node")).to_pylist()
    # names carry whole seconds
    secs = pc.unique(pc.floor_temporal(table.column("window_start"), unit="second")).to_pylist()
    starts = sorted(S.as_utc(t) for t in secs)
    if nodes == [node] and starts == [start]:
        return
    what, reason = [], None
    if nodes != [node]:
        what.append(f"node {', '.join([str(n) for n in sorted(nodes, key=str)][:3])}")
        reason = "wrong_node"
    if starts != [start]:
        what.append(f"window {', '.join(f'{t:%Y-%m-%dT%H:%M:%SZ}' for t in starts[:3])}")
        reason = reason or "wrong_window"
    message = f"rows say {' and '.join(what)}; the file name says node {node}, window {start:%Y-%m-%dT%H:%M:%SZ}"
    if len(nodes) == 1 and len(starts) == 1 and exists is not None:
        twin = S.raw_file_path(table_name, nodes[0], starts[0])
        if twin != rel and exists(twin):
            raise _invalid("duplicate", f"{message}: a copy of {twin}, which is costed instead")
    raise _invalid(reason, message)


def _ago(delta: dt.timedelta) -> str:
    s = abs(delta.total_seconds())
    if s >= 2 * 86400:
        return f"{s / 86400:.0f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.0f} hours"
    if s >= 120:
        return f"{s / 60:.0f} minutes"
    return f"{s:.0f} s"
