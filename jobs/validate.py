"""`netmon-jobs validate`: run the data-quality suites over a lake and write a report into it.

Read-only apart from the report: nothing is quarantined or rewritten here (the cost job does
that as it runs). The report is Markdown at `_reports/validation-<UTC stamp>.md`, copied to
`_reports/latest.md`, and the command exits 1 when a critical expectation failed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from jobs import load, quality
from lake import schema as S
from lake.storage import Lake, LakeError, open_lake

REPORT_DIR = "_reports"


@dataclass
class Report:
    started: dt.datetime
    lake_url: str
    checked: dict[str, int] = field(default_factory=dict)        # table -> rows checked
    files: dict[str, int] = field(default_factory=dict)          # table -> files checked
    failures: list[quality.Failure] = field(default_factory=list)

    @property
    def critical(self) -> list[quality.Failure]:
        return quality.critical(self.failures)

    def markdown(self) -> str:
        ok = not self.critical
        lines = [
            "# netmon data-quality report", "",
            f"- lake: `{self.lake_url}`",
            f"- run at: {self.started:%Y-%m-%d %H:%M:%S} UTC",
            f"- result: **{'PASS' if ok else 'FAIL'}** ({len(self.critical)} critical, "
            f"{len(self.failures) - len(self.critical)} warnings)", "",
            "## Tables checked", "", "| table | files | rows |", "| --- | ---: | ---: |",
        ]
        for t in sorted(self.checked):
            lines.append(f"| `{t}` | {self.files.get(t, 0)} | {self.checked[t]} |")
        lines += ["", "## Failed expectations", ""]
        if not self.failures:
            lines.append("None: every expectation held.")
        else:
            lines += ["| severity | table | file | rule | column | rows | detail |",
                      "| --- | --- | --- | --- | --- | ---: | --- |"]
            for f in sorted(self.failures, key=lambda f: (f.severity != "critical", f.table, f.file or "")):
                detail = f"observed {f.observed}" if f.observed is not None else ""
                lines.append(f"| {f.severity} | `{f.table}` | {f.file or ''} | {f.rule} | "
                             f"{f.column or ''} | {f.unexpected_count} | {str(detail).replace('|', '/')} |")
        lines += ["", "## Rules", "",
                  "great-expectations checks that no row breaks any of these (see jobs/quality.py):", ""]
        for table, rules in quality.RULES.items():
            lines.append(f"- `{table}`: " + "; ".join(
                f"{r.column} {r.kind}" + (" (warning)" if r.severity != "critical" else "") for r in rules))
        return "\n".join(lines) + "\n"


def _files(lake: Lake, rel_dir: str, date: str | None) -> list[str]:
    return [lake.rel(i.path) for i in lake.list_files(rel_dir) if date is None or f"/date={date}/" in i.path]


def _check_raw(lake: Lake, table: str, date: str | None, report: Report) -> pa.Table:
    """Read each raw file with the job's own contract checks; failures are reported per file
    (nothing is quarantined here). Returns the readable rows with a `_file` column."""
    parts = []
    rels = _files(lake, table, date)
    for rel in rels:
        try:
            t = load.read_checked(lake, rel)
        except FileNotFoundError:
            continue
        except load.InvalidFile as exc:
            report.failures.append(quality.Failure(table, f"contract:{exc.reason}", None, 1,
                                                   observed=str(exc), file=rel))
            continue
        parts.append(t.append_column("_file", pa.array([rel] * t.num_rows, pa.string())))
    report.files[table] = len(rels)
    rows = pa.concat_tables(parts) if parts else pa.table({})
    report.checked[table] = rows.num_rows
    return rows


def validate(lake: Lake, date: str | None = None, max_window_s: float = 3600.0,
             tier_starts: dict[str, dict] | None = None) -> Report:
    """`tier_starts` ({month: tier state}, from a job config's egress_baseline): when given,
    each month's tiers must have started from it."""
    report = Report(dt.datetime.now(dt.timezone.utc), lake.url)
    known_nodes: set[str] = set()
    for kind in S.INVENTORY_KINDS:
        rels = _files(lake, f"inventory/{kind}", date)
        inv, bad = load.read_inventory(lake, rels, kind)
        for b in bad:
            report.failures.append(quality.Failure(f"inventory/{kind}", "contract:unreadable", None, 1,
                                                   observed=b["error"], file=b["path"]))
        report.files[f"inventory/{kind}"] = len(rels)
        report.checked[f"inventory/{kind}"] = inv.num_rows
        if inv.num_rows:
            report.failures += quality.check_inventory(kind, inv)
            if kind == "nodes":
                known_nodes = {n for n in inv.column("name").to_pylist() if n}

    flows = _check_raw(lake, "raw/flows", date, report)
    if flows.num_rows:
        report.failures += quality.check_raw_flows(flows, max_window_s=max_window_s, known_nodes=known_nodes or None)
    dns = _check_raw(lake, "raw/dns", date, report)
    if dns.num_rows:
        report.failures += quality.check_raw_dns(dns)

    _check_costs(lake, date, report)
    _check_publishing(lake, date, report, tier_starts)
    _check_inventory_gaps(lake, date, report)
    return report


def _read_all(lake: Lake, rel_dir: str, date: str | None, schema: pa.Schema) -> tuple[pa.Table, int]:
    if rel_dir == "costs/flows":  # the committed parts only (docs/publishing.md)
        from jobs import catalog  # noqa: PLC0415
        day = dt.date.fromisoformat(date) if date else None
        rels = catalog.current_files(lake, rel_dir, day, day)
        tables = [S.conform(lake.read_table(r), schema) for r in rels]
        return (pa.concat_tables(tables) if tables else schema.empty_table()), len(rels)
    rels = _files(lake, rel_dir, date)
    tables = [S.conform(lake.read_table(r), schema) for r in rels]
    return (pa.concat_tables(tables) if tables else schema.empty_table()), len(rels)


def _check_costs(lake: Lake, date: str | None, report: Report) -> None:
    costs, n = _read_all(lake, "costs/flows", date, S.COST_FLOWS)
    report.files["costs/flows"], report.checked["costs/flows"] = n, costs.num_rows
    if not costs.num_rows:
        return
    nsh, n1 = _read_all(lake, "costs/namespace_hourly", date, S.COST_NAMESPACE_HOURLY)
    wld, n2 = _read_all(lake, "costs/workload_daily", date, S.COST_WORKLOAD_DAILY)
    report.files["costs/namespace_hourly"], report.checked["costs/namespace_hourly"] = n1, nsh.num_rows
    report.files["costs/workload_daily"], report.checked["costs/workload_daily"] = n2, wld.num_rows
    report.failures += quality.check_costs(costs, nsh if n1 else None, wld if n2 else None,
                                           raw_bytes=_kept_raw_bytes(lake, date))


def _check_inventory_gaps(lake: Lake, date: str | None, report: Report) -> None:
    """Committed hours costed with an inventory gap (their records' flags) fail validation:
    their names and inbound de-duplication may be wrong until they are recomputed."""
    for info in lake.list_files(f"{S.STATE_DIR}/hours", suffix=".json"):
        rel = lake.rel(info.path)
        if date is not None and f"/date={date}/" not in rel:
            continue
        try:
            data = json.loads(lake.read_bytes(rel) or b"{}")
        except ValueError:
            continue
        kinds = (data.get("flags") or {}).get("inventory_gap")
        if kinds:
            kinds = kinds if isinstance(kinds, list) else ["inventory"]
            report.failures.append(quality.Failure(
                "costs/flows", "inventory_gap", None, int(data.get("rows_out", 0)),
                observed=f"hour {data.get('hour')} costed without a readable {', '.join(kinds)} snapshot "
                         "for over 10 minutes: recompute it with --start/--end once the inventory is back",
                file=rel))


def _kept_raw_bytes(lake: Lake, date: str | None) -> int | None:
    """tx + rx of the raw rows the cost job kept, from its hour records (None if one lacks it)."""
    total, found = 0, False
    for info in lake.list_files(f"{S.STATE_DIR}/hours", suffix=".json"):
        rel = lake.rel(info.path)
        if date is not None and f"/date={date}/" not in rel:
            continue
        data = json.loads(lake.read_bytes(rel) or b"{}")
        if "kept_bytes" not in data:
            return None
        total += int(data["kept_bytes"])
        found = True
    return total if found else None


def _fail(report: Report, table: str, rule: str, observed, file: str | None = None, n: int = 1,
          severity: str = "critical") -> None:
    report.failures.append(quality.Failure(table, rule, None, n, severity=severity, observed=observed, file=file))


def _tier_bytes(costs: pa.Table) -> dict[str, int]:
    """Bytes per tier pool the month's tiers count in a cost table, by pricing's own rule."""
    from jobs import pricing  # noqa: PLC0415
    pools, b = pricing.tier_pools(costs)
    g = pa.table({"p": pools, "b": b}).filter(pa.compute.is_valid(pools)).group_by("p").aggregate([("b", "sum")])
    return {p: int(v) for p, v in zip(g["p"].to_pylist(), g["b_sum"].to_pylist()) if v}


def _pool_bytes(state: dict) -> dict[str, int]:
    from jobs import pricing  # noqa: PLC0415
    return {k: int(v) for k, v in state.items() if k.endswith(pricing.POOL_SUFFIX) and v}


def _check_publishing(lake: Lake, date: str | None, report: Report, tier_starts: dict | None = None) -> None:
    """Records vs the files they publish vs the ledger (docs/publishing.md):
    every committed part exists; no part no record lists is visible under costs/flows; each
    hour's rows, kept bytes and tier bytes per pool equal its parts'; each hour's pools after
    are its pools before plus its volumes; the month's tier states chain from the month's
    egress baseline (the ledger's start, and the config's when `tier_starts` is given); the
    ledger cache equals its records; raw files no record took as input are reported."""
    from jobs import commit as C  # noqa: PLC0415
    from jobs import state as st  # noqa: PLC0415
    day = dt.date.fromisoformat(date) if date else None
    records = C.read_records(lake, C.recorded_hours(lake, day))
    listed = {lake.rel(i.path) for i in lake.list_files("costs/flows") if day is None or f"/date={date}/" in i.path}
    committed: set[str] = set()
    for h, rec in sorted(records.items()):
        parts = rec.parts.get(C.FLOWS, [])
        committed |= set(parts)
        present = []
        for p in parts:
            if p in listed:
                present.append(p)
            elif lake.exists(C.staged(rec.token, p)):
                present.append(C.staged(rec.token, p))
                _fail(report, "costs/flows", "commit:rolling_forward", f"hour {st.hour_id(h)} is committed but "
                      "not yet rolled forward (the next cost run finishes it)", p, severity="warning")
            else:
                _fail(report, "costs/flows", "commit:part_missing", f"committed part of {st.hour_id(h)} is missing", p)
        if len(present) != len(parts):
            continue
        costs = pa.concat_tables([S.conform(lake.read_table(p), S.COST_FLOWS) for p in present]) if present \
            else S.COST_FLOWS.empty_table()
        kept = int(pa.compute.sum(costs["tx_bytes"]).as_py() or 0) + int(pa.compute.sum(costs["rx_bytes"]).as_py() or 0)
        tier = _tier_bytes(costs) if costs.num_rows else {}
        recorded_tier = st.volumes_by_pool(rec.tier_volumes)
        recorded_tier = {k: v for k, v in recorded_tier.items() if v}
        for rule, got, want in (("rows_out", costs.num_rows, rec.rows_out), ("kept_bytes", kept, rec.kept_bytes),
                                ("tier_bytes", tier, recorded_tier)):
            if got != want:
                _fail(report, "costs/flows", f"commit:{rule}", f"hour {st.hour_id(h)}: parts have {got}, "
                      f"its record says {want}")
    for rel in sorted(listed - committed):
        _fail(report, "costs/flows", "commit:uncommitted_visible", "a part no hour record lists", rel)

    months = sorted({st.month_of(h) for h in records})
    for month in months:
        mine = {h: r for h, r in records.items() if st.month_of(h) == month}
        full = mine if day is None else C.records_of_month(lake, month)
        cached = st.EgressLedger.read(lake, month)
        # the month's chain starts from its egress baseline, which the ledger keeps
        first = min(full) if full else None
        start = cached.start if cached is not None else (full[first].tier_state_before if first else {})
        if tier_starts is not None and cached is not None and not st.same_start(start, tier_starts.get(month, {})):
            _fail(report, "_state/egress", "ledger:baseline_differs", f"{month} was tiered from the egress baseline "
                  f"{_pool_bytes(start) or 'none'}, the config says {_pool_bytes(tier_starts.get(month, {})) or 'none'} "
                  "(the next cost run re-tiers the month)", st.egress_path(month))
        truth = st.EgressLedger.from_records(month, full.values(), start)
        for h in truth.chain_breaks():
            if h in mine:
                what = "the month's egress baseline" if h == first else "the previous hour's"
                _fail(report, "_state/hours", "ledger:chain_broken", f"hour {st.hour_id(h)} was tiered from a state "
                      f"that is not {what} (the next cost run re-tiers it)")
        for h, rec in sorted(mine.items()):
            want = _pool_bytes(st.advance_state(_pool_bytes(rec.tier_state_before), rec.tier_volumes))
            if _pool_bytes(rec.tier_state_after) != want:
                _fail(report, "_state/hours", "ledger:state_arithmetic", f"hour {st.hour_id(h)}: tier pools after "
                      f"{_pool_bytes(rec.tier_state_after)} are not the pools before plus its volumes {want}")
        if cached is None:
            _fail(report, "_state/egress", "ledger:missing", f"the {month} ledger is missing or damaged "
                  "(the next cost run rebuilds it from the records)", st.egress_path(month))
            continue
        for hid in sorted(set(cached.entries) | set(truth.entries)):
            if day is not None and not hid.startswith(date):
                continue
            if cached.entries.get(hid) != truth.entries.get(hid):
                _fail(report, "_state/egress", "ledger:differs", f"{hid} differs from its record "
                      "(the next cost run rebuilds the ledger)", st.egress_path(month))
                break

    inputs = {p for r in records.values() for p in r.inputs}
    late = [lake.rel(i.path) for i in lake.list_files("raw/flows") if (day is None or f"/date={date}/" in i.path)
            and lake.rel(i.path) not in inputs]
    if late:
        _fail(report, "raw/flows", "commit:not_costed", f"{len(late)} raw file(s) no hour record took as input "
              "(new since the last run, or older than its lateness window: run cost with --start/--end)",
              late[0], n=len(late), severity="warning")


def write_report(lake: Lake, report: Report) -> str:
    text = report.markdown().encode()
    rel = f"{REPORT_DIR}/validation-{report.started:%Y%m%dT%H%M%SZ}.md"
    lake.write_bytes(rel, text)
    lake.write_bytes(f"{REPORT_DIR}/latest.md", text)
    return rel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netmon-jobs validate", description=__doc__.splitlines()[0])
    p.add_argument("--lake", required=True, help="lake URL (./dir, s3://bucket/prefix, ...)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint override (MinIO, moto)")
    p.add_argument("--date", default=None, help="only this date partition (YYYY-MM-DD)")
    p.add_argument("--max-window", type=float, default=3600.0, help="longest acceptable raw window, seconds")
    p.add_argument("--config", default=None,
                   help="the cost job's config: also check that each month's tiers start from its egress_baseline")
    args = p.parse_args(argv)
    try:
        if args.date:
            dt.date.fromisoformat(args.date)
        starts = None
        if args.config:
            from jobs import config as CF  # noqa: PLC0415
            from jobs import pricing  # noqa: PLC0415
            cfg = CF.load_config(args.config)
            cards = pricing.RateCards.for_config(cfg)
            starts = {m: cfg.tier_start(m, cards) for m in cfg.egress_baseline}
        lake = open_lake(args.lake, s3_endpoint=args.s3_endpoint, create_bucket=False)
        report = validate(lake, args.date, args.max_window, starts)
        rel = write_report(lake, report)
    except (LakeError, ValueError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    crit = report.critical
    print(f"validated {sum(report.checked.values())} rows in {sum(report.files.values())} files: "
          f"{'PASS' if not crit else 'FAIL'} ({len(crit)} critical, {len(report.failures) - len(crit)} warnings)")
    for f in crit[:10]:
        print(f"  {f.table} {f.file or ''}: {f.describe()}")
    print(f"report: {lake.path(rel)}")
    return 1 if crit else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
