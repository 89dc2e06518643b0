"""`netmon-jobs report`: a self-contained HTML cost report for a date range.

One file, `DIR/index.html`: inline CSS and SVG, no scripts, fonts or images from anywhere,
so it opens from a laptop's disk, a mail attachment or an object store without network
access. It shows the headline numbers of the period against the previous period of the same
length: cost by traffic class (per day), cost by namespace, the workloads whose cost moved
most, the top external destinations, the month-to-date internet-egress tier, and the
data-quality status from `netmon-jobs validate` (run now with `--validate`, else the latest
report that command wrote into the lake's `_reports/`).

Every figure is read with DuckDB from the committed cost files of the two periods only
(`jobs/costview.py`); every number in a table carries its exact value in `data-value`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import html
import os
import re
import sys
from dataclasses import dataclass, field

from jobs import costview
from lake import schema as S
from lake.storage import Lake, LakeError, open_lake

GB = 2 ** 30
NODE = "(node)"
#: one colour per traffic class (same order as lake.schema.TRAFFIC_CLASSES)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78")
CLASS_COLOR = dict(zip(S.TRAFFIC_CLASSES, COLORS))


class ReportError(ValueError):
    """Bad input for the report (dates, an empty lake)."""


@dataclass
class Period:
    start: dt.date
    end: dt.date      # inclusive

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def previous(self) -> "Period":
        return Period(self.start - dt.timedelta(days=self.days), self.start - dt.timedelta(days=1))

    def __str__(self) -> str:
        return f"{self.start}" if self.days == 1 else f"{self.start} .. {self.end}"


@dataclass
class Quality:
    source: str                      # "ran now" or the report file read
    run_at: str = ""
    result: str = "not validated"    # PASS, FAIL or "not validated"
    critical: int = 0
    warnings: int = 0
    failures: list[dict] = field(default_factory=list)   # severity, table, file, rule, rows


@dataclass
class Figures:
    lake: str
    period: Period
    previous: Period
    generated: dt.datetime
    total: dict                      # cost_usd, bytes, prev_cost_usd, prev_bytes
    classes: list[dict]              # traffic_class, bytes, cost_usd, prev_cost_usd
    daily: list[dict]                # date, traffic_class, cost_usd
    namespaces: list[dict]           # namespace, bytes, cost_usd, prev_cost_usd
    movers: list[dict]               # workload, cost_usd, prev_cost_usd, change_usd
    destinations: list[dict]         # destination, traffic_class, service, bytes_out, cost_usd
    tiers: list[dict]                # costview.egress_tier_position
    quality: Quality


# ------------------------------------------------------------------------- figures

def default_period(lake: Lake, start: dt.date | None, end: dt.date | None) -> Period:
    """[start, end]; missing ends default to the last day with costs and a 7-day period."""
    if end is None:
        days = costview.lake_dates(lake)
        if not days:
            raise ReportError(f"no cost tables in {lake.url}: run `netmon-jobs cost --lake {lake.url}` first")
        end = days[-1] if start is None else max(start, days[-1])
    start = start or end - dt.timedelta(days=6)
    if start > end:
        raise ReportError(f"--start {start} is after --end {end}")
    return Period(start, end)


def figures(lake: Lake, period: Period, top: int = 10, quality: Quality | None = None) -> Figures:
    prev = period.previous()
    con = costview.connect(lake, prev.start, period.end)
    cur = f"date >= DATE '{period.start}'"        # the views hold the two periods only

    def rows(q: str) -> list[dict]:
        res = con.execute(q)
        names = [d[0] for d in res.description]
        return [dict(zip(names, r)) for r in res.fetchall()]

    total = rows(f"""
        SELECT COALESCE(SUM(CASE WHEN {cur} THEN cost_usd END), 0) AS cost_usd,
               COALESCE(SUM(CASE WHEN {cur} THEN tx_bytes + rx_bytes END), 0) AS bytes,
               COALESCE(SUM(CASE WHEN NOT {cur} THEN cost_usd END), 0) AS prev_cost_usd,
               COALESCE(SUM(CASE WHEN NOT {cur} THEN tx_bytes + rx_bytes END), 0) AS prev_bytes
        FROM cost_flows""")[0]
    classes = rows(f"""
        SELECT traffic_class,
               COALESCE(SUM(CASE WHEN {cur} THEN tx_bytes + rx_bytes END), 0) AS bytes,
               COALESCE(SUM(CASE WHEN {cur} THEN cost_usd END), 0) AS cost_usd,
               COALESCE(SUM(CASE WHEN NOT {cur} THEN cost_usd END), 0) AS prev_cost_usd
        FROM cost_flows GROUP BY 1 HAVING SUM(CASE WHEN {cur} THEN 1 ELSE 0 END) > 0
        ORDER BY cost_usd DESC, bytes DESC, traffic_class""")
    daily = rows(f"""
        SELECT date, traffic_class, SUM(cost_usd) AS cost_usd FROM cost_flows WHERE {cur}
        GROUP BY 1, 2 ORDER BY 1, 2""")
    namespaces = rows(f"""
        SELECT COALESCE(src_namespace, '{NODE}') AS namespace,
               COALESCE(SUM(CASE WHEN {cur} THEN tx_bytes + rx_bytes END), 0) AS bytes,
               COALESCE(SUM(CASE WHEN {cur} THEN cost_usd END), 0) AS cost_usd,
               COALESCE(SUM(CASE WHEN NOT {cur} THEN cost_usd END), 0) AS prev_cost_usd
        FROM cost_flows GROUP BY 1 HAVING SUM(CASE WHEN {cur} THEN 1 ELSE 0 END) > 0
        ORDER BY cost_usd DESC, namespace LIMIT {int(top)}""")
    movers = rows(f"""
        WITH w AS (
            SELECT COALESCE(src_namespace || '/' || src_workload, '{NODE}') AS workload,
                   COALESCE(SUM(CASE WHEN {cur} THEN cost_usd END), 0) AS cost_usd,
                   COALESCE(SUM(CASE WHEN NOT {cur} THEN cost_usd END), 0) AS prev_cost_usd
            FROM cost_flows GROUP BY 1)
        SELECT workload, cost_usd, prev_cost_usd, cost_usd - prev_cost_usd AS change_usd FROM w
        WHERE cost_usd <> prev_cost_usd
        ORDER BY ABS(cost_usd - prev_cost_usd) DESC, workload LIMIT {int(top)}""")
    destinations = rows(f"""
        SELECT COALESCE(dst_domain, dst_ip) AS destination, MIN(traffic_class) AS traffic_class,
               COALESCE(ANY_VALUE(dst_cloud_service), '') AS service,
               SUM(tx_bytes) AS bytes_out, SUM(cost_usd) AS cost_usd
        FROM cost_flows WHERE {cur} AND dst_kind = 'external'
        GROUP BY 1 ORDER BY cost_usd DESC, bytes_out DESC, destination LIMIT {int(top)}""")
    for d in daily:
        d["date"] = d["date"].isoformat()
    return Figures(lake.url, period, prev, dt.datetime.now(dt.timezone.utc), total, classes, daily,
                   namespaces, movers, destinations, costview.egress_tier_position(lake, period.end),
                   quality or latest_quality(lake))


def run_validation(lake: Lake, period: Period) -> Quality:
    """`netmon-jobs validate` over each day of the period (its report is written as the command does)."""
    from jobs import validate as V  # noqa: PLC0415 - great-expectations is slow to import
    q = Quality("ran now")
    day = period.start
    while day <= period.end:
        rep = V.validate(lake, day.isoformat())
        V.write_report(lake, rep)
        q.run_at = f"{rep.started:%Y-%m-%d %H:%M:%S} UTC"
        q.critical += len(rep.critical)
        q.warnings += len(rep.failures) - len(rep.critical)
        q.failures += [{"severity": f.severity, "table": f.table, "file": f.file or "", "rule": f.rule,
                        "rows": f.unexpected_count} for f in rep.failures]
        day += dt.timedelta(days=1)
    q.result = "FAIL" if q.critical else "PASS"
    return q


_RESULT = re.compile(r"^- result: \*\*(PASS|FAIL)\*\* \((\d+) critical, (\d+) warnings\)", re.M)
_RUN_AT = re.compile(r"^- run at: (.+)$", re.M)


def latest_quality(lake: Lake) -> Quality:
    """The status in the last report `netmon-jobs validate` wrote (`_reports/latest.md`)."""
    from jobs.validate import REPORT_DIR  # noqa: PLC0415
    rel = f"{REPORT_DIR}/latest.md"
    text = (lake.read_bytes(rel) or b"").decode("utf-8", "replace")
    m = _RESULT.search(text)
    if not m:
        return Quality("none: run `netmon-jobs validate`")
    q = Quality(rel, result=m.group(1), critical=int(m.group(2)), warnings=int(m.group(3)))
    if (r := _RUN_AT.search(text)):
        q.run_at = r.group(1).strip()
    for line in text.split("## Failed expectations", 1)[-1].splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in ("critical", "warning"):
            q.failures.append({"severity": cells[0], "table": cells[1], "file": cells[2], "rule": cells[3],
                               "rows": int(cells[5]) if cells[5].isdigit() else cells[5]})
    return q


# ------------------------------------------------------------------------- HTML

def usd(x: float) -> str:
    """Dollars: cents from $1 up, four decimals below (a small cluster's day is cents)."""
    digits = 2 if abs(x) >= 1 or x == 0 else 4
    text = f"${abs(x):,.{digits}f}"
    return "-" + text if x < 0 and text.strip("$0.,") else text


def gb(b: float) -> str:
    return f"{b / GB:,.2f} GB"


def change(now: float, before: float) -> str:
    if before == 0:
        return "new" if now else "-"
    return f"{(now - before) / before * 100:+,.0f}%"


def _num(value, text: str, key: str) -> str:
    return f'<td class="num" data-key="{key}" data-value="{value!r}">{html.escape(text)}</td>'


def _table(tid: str, head: list[str], body: list[str]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    rows = "".join(f"<tr>{r}</tr>" for r in body) or f'<tr><td colspan="{len(head)}">none</td></tr>'
    return f'<table id="{tid}"><thead><tr>{th}</tr></thead><tbody>{rows}</tbody></table>'


def _td(text: str) -> str:
    return f"<td>{html.escape(str(text))}</td>"


def svg_bars(items: list[tuple[str, float, str]], fmt=usd, width: int = 560) -> str:
    """Horizontal bars, one per (label, value, colour); negative values grow to the left."""
    if not items:
        return ""
    row, label_w, value_w = 22, 190, 80
    span = max(abs(v) for _, v, _ in items) or 1.0
    neg = any(v < 0 for _, v, _ in items)
    plot_w = width - label_w - value_w
    zero = label_w + (plot_w / 2 if neg else 0)
    scale = (plot_w / 2 if neg else plot_w) / span
    h = row * len(items) + 6
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">']
    for i, (label, v, color) in enumerate(items):
        y = 3 + i * row
        x0 = zero if v >= 0 else zero + v * scale
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(label[:28])}</text>'
                   f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(abs(v) * scale, 0.5):.1f}" height="{row - 6}" fill="{color}"/>'
                   f'<text x="{width - 4}" y="{y + 15}" text-anchor="end">{html.escape(fmt(v))}</text>')
    if neg:
        out.append(f'<line x1="{zero}" x2="{zero}" y1="0" y2="{h}" stroke="#444"/>')
    return "".join(out) + "</svg>"


def svg_daily(daily: list[dict], width: int = 760, height: int = 240) -> str:
    """Cost per day stacked by class, with the legend beside the bars (never over them)."""
    days = sorted({d["date"] for d in daily})
    if not days:
        return ""
    totals = {day: sum(d["cost_usd"] for d in daily if d["date"] == day) for day in days}
    classes = [c for c in S.TRAFFIC_CLASSES if any(d["traffic_class"] == c and d["cost_usd"] > 0 for d in daily)]
    top = max(totals.values()) or 1.0
    legend_w, left, bottom = 150, 56, 34
    plot_w, plot_h = width - legend_w - left, height - bottom - 10
    bw = plot_w / len(days)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for k in range(5):  # y grid and labels
        v = top * k / 4
        y = 10 + plot_h - v / top * plot_h
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{html.escape(usd(v))}</text>')
    for i, day in enumerate(days):
        y = 10 + plot_h
        for c in classes:
            v = sum(d["cost_usd"] for d in daily if d["date"] == day and d["traffic_class"] == c)
            hgt = v / top * plot_h
            if hgt > 0:
                y -= hgt
                out.append(f'<rect x="{left + i * bw + bw * 0.1:.1f}" y="{y:.1f}" width="{bw * 0.8:.1f}" '
                           f'height="{hgt:.1f}" fill="{CLASS_COLOR[c]}"><title>{day} {c}: {usd(v)}</title></rect>')
        out.append(f'<text x="{left + (i + 0.5) * bw:.1f}" y="{height - 16}" text-anchor="middle">'
                   f'{dt.date.fromisoformat(day):%a %m-%d}</text>')
    for j, c in enumerate(reversed(classes)):
        y = 14 + j * 18
        out.append(f'<rect x="{width - legend_w + 8}" y="{y}" width="12" height="12" fill="{CLASS_COLOR[c]}"/>'
                   f'<text x="{width - legend_w + 26}" y="{y + 11}">{html.escape(c)}</text>')
    return "".join(out) + "</svg>"


CSS = """
body{font-family:DejaVu Sans,Verdana,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{margin-bottom:4px} .sub{color:#666;margin-top:0}
.cards{display:flex;gap:14px;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:180px}
.card .v{font-size:24px;font-weight:bold} .card .l{color:#666;font-size:13px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:24px} section{margin-top:26px}
table{border-collapse:collapse;font-size:13px;margin-top:6px} th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums} svg text{font-size:12px;fill:#222}
.pass{color:#1a7f37;font-weight:bold} .fail{color:#c62828;font-weight:bold} .none{color:#b26a00;font-weight:bold}
"""


def render(f: Figures) -> str:
    t = f.total
    p = []
    card = lambda label, value, key, text: (f'<div class="card"><div class="v" data-key="{key}" data-value="{value!r}">'
                                            f'{html.escape(text)}</div><div class="l">{html.escape(label)}</div></div>')
    tier = f.tiers[0] if f.tiers else None
    q = f.quality
    qcls = {"PASS": "pass", "FAIL": "fail"}.get(q.result, "none")
    p.append('<div class="cards">' + card(f"network cost, {f.period}", t["cost_usd"], "total_cost", usd(t["cost_usd"]))
             + card(f"vs {usd(t['prev_cost_usd'])} in {f.previous}", t["cost_usd"] - t["prev_cost_usd"], "total_change",
                    change(t["cost_usd"], t["prev_cost_usd"]))
             + card("traffic", t["bytes"], "total_bytes", gb(t["bytes"]))
             + (card(f"internet egress {tier['month']} to date ({tier['rate_card']}), now ${tier['per_gb_usd']:.3f}/GB",
                     tier["egress_gb"], "egress_mtd_gb", f"{tier['egress_gb']:,.1f} GB") if tier else "")
             + f'<div class="card"><div class="v {qcls}" id="quality-result">{html.escape(q.result)}</div>'
               f'<div class="l">data quality ({q.critical} critical, {q.warnings} warnings)</div></div></div>')

    p.append('<section><h2>Cost per day by traffic class</h2>' + svg_daily(f.daily) + "</section>")
    p.append('<section><h2>Cost by traffic class</h2>' + _table("classes", ["traffic class", "traffic", "cost", "previous", "change"], [
        _td(c["traffic_class"]) + _num(c["bytes"], gb(c["bytes"]), "bytes") + _num(c["cost_usd"], usd(c["cost_usd"]), "cost_usd")
        + _num(c["prev_cost_usd"], usd(c["prev_cost_usd"]), "prev_cost_usd") + _td(change(c["cost_usd"], c["prev_cost_usd"]))
        for c in f.classes]) + "</section>")

    ns_svg = svg_bars([(n["namespace"], n["cost_usd"], "#1f77b4") for n in f.namespaces])
    ns_tab = _table("namespaces", ["namespace", "traffic", "cost", "previous", "change"], [
        _td(n["namespace"]) + _num(n["bytes"], gb(n["bytes"]), "bytes") + _num(n["cost_usd"], usd(n["cost_usd"]), "cost_usd")
        + _num(n["prev_cost_usd"], usd(n["prev_cost_usd"]), "prev_cost_usd") + _td(change(n["cost_usd"], n["prev_cost_usd"]))
        for n in f.namespaces])
    p.append(f'<section><h2>Cost by namespace</h2><div class="grid"><div>{ns_svg}</div><div>{ns_tab}</div></div></section>')

    mv_svg = svg_bars([(m["workload"], m["change_usd"], "#c62828" if m["change_usd"] > 0 else "#1a7f37") for m in f.movers],
                      fmt=lambda v: ("+" if v > 0 else "") + usd(v))
    mv_tab = _table("movers", ["workload", "cost", "previous", "change"], [
        _td(m["workload"]) + _num(m["cost_usd"], usd(m["cost_usd"]), "cost_usd")
        + _num(m["prev_cost_usd"], usd(m["prev_cost_usd"]), "prev_cost_usd")
        + _num(m["change_usd"], ("+" if m["change_usd"] > 0 else "") + usd(m["change_usd"]), "change_usd")
        for m in f.movers])
    p.append(f'<section><h2>Top movers against {html.escape(str(f.previous))}</h2>'
             f'<div class="grid"><div>{mv_svg}</div><div>{mv_tab}</div></div></section>')

    ds_svg = svg_bars([(d["destination"], d["cost_usd"], CLASS_COLOR.get(d["traffic_class"], "#7f7f7f")) for d in f.destinations])
    ds_tab = _table("destinations", ["destination", "class", "service", "sent", "cost"], [
        _td(d["destination"]) + _td(d["traffic_class"]) + _td(d["service"])
        + _num(d["bytes_out"], gb(d["bytes_out"]), "bytes_out") + _num(d["cost_usd"], usd(d["cost_usd"]), "cost_usd")
        for d in f.destinations])
    p.append(f'<section><h2>Top external destinations</h2><div class="grid"><div>{ds_svg}</div><div>{ds_tab}</div></div></section>')

    p.append('<section><h2>Internet egress tier, month to date</h2>' + _table("tiers", [
        "rate card", "month", "through", "sent", "free allowance used", "tier from", "tier to", "rate",
        "month's egress charge"], [
        _td(r["rate_card"]) + _td(r["month"]) + _td(r["through"]) + _num(r["egress_gb"], f"{r['egress_gb']:,.2f} GB", "egress_gb")
        + _num(r["free_used_gb"], f"{r['free_used_gb']:,.2f} of {r['free_gb']:,.0f} GB" if r["free_gb"] else "-", "free_used_gb")
        + _td(f"{r['tier_from_gb']:,.0f} GB") + _td("-" if r["tier_to_gb"] is None else f"{r['tier_to_gb']:,.0f} GB")
        + _td(f"${r['per_gb_usd']:.3f}/GB") + _num(r["month_cost_usd"], usd(r["month_cost_usd"]), "month_cost_usd")
        for r in f.tiers]) + "</section>")

    qrows = [_td(x["severity"]) + _td(x["table"]) + _td(x["file"]) + _td(x["rule"]) + _td(x["rows"]) for x in q.failures[:50]]
    p.append(f'<section><h2>Data quality</h2><p>Result: <span class="{qcls}">{html.escape(q.result)}</span> '
             f'({q.critical} critical, {q.warnings} warnings); source: {html.escape(q.source)}'
             + (f", run at {html.escape(q.run_at)}" if q.run_at else "") + "</p>"
             + (_table("quality", ["severity", "table", "file", "rule", "rows"], qrows) if q.failures else "") + "</section>")

    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>netmon cost report "
            f"{html.escape(str(f.period))}</title><style>{CSS}</style></head><body>"
            f"<h1>netmon network cost report: {html.escape(str(f.period))}</h1>"
            f'<p class="sub">lake <code>{html.escape(f.lake)}</code>; compared with {html.escape(str(f.previous))}; '
            f"generated {f.generated:%Y-%m-%d %H:%M} UTC; GB = 2<sup>30</sup> bytes, list prices of each row's rate card</p>"
            + "".join(p) + "</body></html>\n")


def write(out_dir: str, page: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "index.html")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------- CLI

def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip()[:10])
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}: expected YYYY-MM-DD") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netmon-jobs report", description=__doc__.splitlines()[0])
    p.add_argument("--lake", default=os.environ.get("NETMON_LAKE"), help="lake URL (./dir, s3://bucket/prefix, ...) [NETMON_LAKE]")
    p.add_argument("--out", required=True, help="directory to write index.html into (created)")
    p.add_argument("--start", type=_date, default=None, help="first day, YYYY-MM-DD (default: 6 days before --end)")
    p.add_argument("--end", type=_date, default=None, help="last day, inclusive (default: the last day with costs)")
    p.add_argument("--top", type=int, default=10, help="rows in each top-N table (default 10)")
    p.add_argument("--validate", action="store_true",
                   help="run `netmon-jobs validate` for each day of the period now (default: show its latest report)")
    p.add_argument("--s3-endpoint", default=os.environ.get("NETMON_S3_ENDPOINT"),
                   help="S3 endpoint override (MinIO, moto) [NETMON_S3_ENDPOINT]")
    args = p.parse_args(argv)
    try:
        if not args.lake:
            raise ReportError("--lake is required (or set NETMON_LAKE)")
        if args.top < 1:
            raise ReportError("--top must be at least 1")
        lake = open_lake(args.lake, s3_endpoint=args.s3_endpoint, create_bucket=False)
        period = default_period(lake, args.start, args.end)
        quality = run_validation(lake, period) if args.validate else None
        f = figures(lake, period, args.top, quality)
        path = write(args.out, render(f))
    except (ReportError, LakeError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"report {f.period} (vs {f.previous}): {usd(f.total['cost_usd'])}, "
          f"{gb(f.total['bytes'])}, data quality {f.quality.result}: {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
