"""`netmon-jobs release`: move quarantined raw files back under `raw/` so the next run costs them.

After the cause is fixed (a job bug, an expectation that was too strict, a file repaired in
place under `_quarantine/`), `release PATH` or `release --all [--reason R]` copies each file
back to its original path and deletes it from `_quarantine/`. Its `.reason.json` moves to
`_state/released/<path>.reason.json`, with when and why it was released, so the history of a
file stays in the lake. A released file has a new modification time, so discovery sees its
hour's inputs changed and recomputes that hour.

A file whose original path holds a file again (the agent uploaded it anew) is not released
over it: an identical copy is just dropped from the quarantine, a different one is reported.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass, field

from lake import schema as S
from lake.storage import Lake, open_lake

RELEASED_DIR = f"{S.STATE_DIR}/released"
SUFFIX = ".reason.json"


class ReleaseError(ValueError):
    """A path that is not in the quarantine, or an empty selection."""


@dataclass
class Released:
    released: list[str] = field(default_factory=list)   # back under raw/
    dropped: list[str] = field(default_factory=list)    # identical to the file now at its path
    conflicts: list[str] = field(default_factory=list)  # a different file is at its path: left alone


def quarantined(lake: Lake) -> dict[str, dict]:
    """Original path -> reason note of every quarantined file."""
    out = {}
    for info in lake.list_files(S.QUARANTINE_DIR, suffix=SUFFIX):
        rel = lake.rel(info.path)[len(S.QUARANTINE_DIR) + 1:-len(SUFFIX)]
        try:
            note = json.loads(lake.read_bytes(lake.rel(info.path)) or b"{}")
        except ValueError:
            note = {}
        out[rel] = note
    return out


def _original(path: str) -> str:
    """raw/... for a path given as raw/..., _quarantine/raw/... or its .reason.json."""
    p = path.strip().lstrip("/")
    if p.endswith(SUFFIX):
        p = p[:-len(SUFFIX)]
    if p.startswith(S.QUARANTINE_DIR + "/"):
        p = p[len(S.QUARANTINE_DIR) + 1:]
    return p


def select(lake: Lake, paths: list[str], all_: bool, reason: str | None) -> dict[str, dict]:
    known = quarantined(lake)
    if all_:
        chosen = {p: n for p, n in known.items() if reason is None or n.get("reason") == reason}
    else:
        chosen = {}
        for given in paths:
            rel = _original(given)
            if rel not in known:
                if not lake.exists(f"{S.QUARANTINE_DIR}/{rel}"):
                    raise ReleaseError(f"{given!r} is not in {S.QUARANTINE_DIR}/ of {lake.url}")
                known[rel] = {}
            if reason is None or known[rel].get("reason") == reason:
                chosen[rel] = known[rel]
    return chosen


def release(lake: Lake, chosen: dict[str, dict], why: str | None = None) -> Released:
    out = Released()
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for rel, note in sorted(chosen.items()):
        src = f"{S.QUARANTINE_DIR}/{rel}"
        if lake.exists(rel):
            if lake.read_bytes(rel) != lake.read_bytes(src):
                out.conflicts.append(rel)
                continue
            out.dropped.append(rel)
        else:
            lake.copy(src, rel)
            out.released.append(rel)
        history = {**note, "released": now}
        if why:
            history["release_note"] = why
        lake.write_bytes(f"{RELEASED_DIR}/{rel}{SUFFIX}", (json.dumps(history, indent=1) + "\n").encode())
        lake.delete(src)
        lake.delete(src + SUFFIX)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netmon-jobs release", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="quarantined file(s): raw/... or _quarantine/raw/... (relative to the lake)")
    p.add_argument("--all", action="store_true", help="every quarantined file (or every one with --reason)")
    p.add_argument("--reason", default=None, help="only files quarantined for this reason (e.g. expectations)")
    p.add_argument("--note", default=None, help="why they are released (kept in _state/released/)")
    p.add_argument("--lake", required=True, help="lake URL (./dir, s3://bucket/prefix, ...)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint override (MinIO, moto)")
    args = p.parse_args(argv)
    if bool(args.paths) == args.all:
        raise ReleaseError("give PATH(s) or --all, not both" if args.all else "give PATH(s) or --all")
    lake = open_lake(args.lake, s3_endpoint=args.s3_endpoint, create_bucket=False)
    chosen = select(lake, args.paths, args.all, args.reason)
    res = release(lake, chosen, args.note)
    for rel in res.released:
        print(f"released {rel}")
    for rel in res.dropped:
        print(f"dropped {rel} from the quarantine: the same file is back at its path")
    for rel in res.conflicts:
        print(f"not released {rel}: a different file is at its path", file=sys.stderr)
    print(f"{len(res.released)} file(s) released, {len(res.dropped)} dropped, {len(res.conflicts)} left; "
          "the next cost run costs them")
    return 1 if res.conflicts else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
