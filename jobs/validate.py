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

import pandas as pd
import pyarrow as pa

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
            lines += ["| severity | table | file | expectation | column | unexpected | detail |",
                      "| --- | --- | --- | --- | --- | ---: | --- |"]
            for f in sorted(self.failures, key=lambda f: (f.severity != "critical", f.table, f.file or "")):
                detail = (f"observed {f.observed}" if f.observed is not None else
                          ", ".join(str(e) for e in f.examples[:3]))
                lines.append(f"| {f.severity} | `{f.table}` | {f.file or ''} | {f.expectation} | "
                             f"{f.column or ''} | {f.unexpected_count} | {detail.replace('|', '/')} |")
        lines += ["", "## Suites", ""]
        for table, suite in quality.SUITES.items():
            lines.append(f"- `{table}`: " + "; ".join(
                f"{quality._snake(e.kind)}({e.kwargs.get('column', '')})" for e in suite
                if e.kind != "ExpectColumnToExist") + f"; every contract column exists")
        return "\n".join(lines) + "\n"


def _files(lake: Lake, rel_dir: str, date: str | None) -> list[str]:
    return [lake.rel(i.path) for i in lake.list_files(rel_dir) if date is None or f"/date={date}/" in i.path]


def _check_raw(lake: Lake, table: str, date: str | None, report: Report) -> pd.DataFrame:
    frames = []
    rels = _files(lake, table, date)
    for rel in rels:
        try:
            t = load.read_checked(lake, rel)
        except FileNotFoundError:
            continue
        except load.InvalidFile as exc:
            report.failures.append(quality.Failure(table, f"contract:{exc.reason}", None, 1, [str(exc)], file=rel))
            continue
        df = t.to_pandas()
        df["_file"] = rel
        frames.append(df)
    report.files[table] = len(rels)
    if not frames:
        report.checked[table] = 0
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    report.checked[table] = len(df)
    return df


def validate(lake: Lake, date: str | None = None, max_window_s: float = 3600.0) -> Report:
    report = Report(dt.datetime.now(dt.timezone.utc), lake.url)
    known_nodes: set[str] = set()
    for kind in S.INVENTORY_KINDS:
        rels = _files(lake, f"inventory/{kind}", date)
        inv, bad = load.read_inventory(lake, rels, kind)
        for b in bad:
            report.failures.append(quality.Failure(f"inventory/{kind}", "contract:unreadable", None, 1, [b["error"]], file=b["path"]))
        report.files[f"inventory/{kind}"] = len(rels)
        report.checked[f"inventory/{kind}"] = inv.num_rows
        if inv.num_rows:
            df = inv.to_pandas()
            report.failures += quality.check_inventory(kind, df)
            if kind == "nodes":
                known_nodes = set(df["name"].dropna())

    flows = _check_raw(lake, "raw/flows", date, report)
    if len(flows):
        report.failures += quality.check_raw_flows(flows, max_window_s=max_window_s, known_nodes=known_nodes or None)
    dns = _check_raw(lake, "raw/dns", date, report)
    if len(dns):
        report.failures += quality.check_raw_dns(dns)

    _check_costs(lake, date, report)
    return report


def _read_all(lake: Lake, rel_dir: str, date: str | None, schema: pa.Schema) -> tuple[pd.DataFrame, int]:
    rels = _files(lake, rel_dir, date)
    tables = [S.conform(lake.read_table(r), schema) for r in rels]
    return (pa.concat_tables(tables).to_pandas() if tables else schema.empty_table().to_pandas()), len(rels)


def _check_costs(lake: Lake, date: str | None, report: Report) -> None:
    costs, n = _read_all(lake, "costs/flows", date, S.COST_FLOWS)
    report.files["costs/flows"], report.checked["costs/flows"] = n, len(costs)
    if not len(costs):
        return
    nsh, n1 = _read_all(lake, "costs/namespace_hourly", date, S.COST_NAMESPACE_HOURLY)
    wld, n2 = _read_all(lake, "costs/workload_daily", date, S.COST_WORKLOAD_DAILY)
    report.files["costs/namespace_hourly"], report.checked["costs/namespace_hourly"] = n1, len(nsh)
    report.files["costs/workload_daily"], report.checked["costs/workload_daily"] = n2, len(wld)
    raw_bytes = _kept_raw_bytes(lake, date)
    report.failures += quality.check_costs(costs, nsh if n1 else None, wld if n2 else None, raw_bytes=raw_bytes)


def _kept_raw_bytes(lake: Lake, date: str | None) -> tuple[int, int] | None:
    """(tx, rx) of the raw rows the cost job kept, from its manifests, when they record it."""
    tx = rx = 0
    found = False
    for info in lake.list_files(f"{S.STATE_DIR}/processed", suffix=".json"):
        rel = lake.rel(info.path)
        if date is not None and f"/{date}/" not in rel:
            continue
        data = json.loads(lake.read_bytes(rel) or b"{}")
        if "kept_tx_bytes" not in data:
            return None
        tx += int(data["kept_tx_bytes"])
        rx += int(data["kept_rx_bytes"])
        found = True
    return (tx, rx) if found else None


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
    args = p.parse_args(argv)
    try:
        if args.date:
            dt.date.fromisoformat(args.date)
        lake = open_lake(args.lake, s3_endpoint=args.s3_endpoint, create_bucket=False)
        report = validate(lake, args.date, args.max_window)
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
