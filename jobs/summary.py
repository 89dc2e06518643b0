"""The short report printed after a cost run: cost and bytes by class, top namespaces.

Each wave-2 task returns `partial(costs)` for the partition it wrote (a few dozen numbers), the
driver `merge`s them, so the summary never needs the cost rows on the driver.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

NODE_TRAFFIC = "(node)"  # rows without a source namespace: the node's own traffic


def partial(costs: pa.Table) -> dict:
    """Per-class and per-namespace sums of one cost table (COST_FLOWS columns)."""
    if costs.num_rows == 0:
        return {"classes": {}, "namespaces": {}, "rows": 0}
    by_class = costs.group_by("traffic_class").aggregate(
        [("tx_bytes", "sum"), ("rx_bytes", "sum"), ("cost_usd", "sum"), ("tx_bytes", "count")]
    ).to_pylist()
    ns = costs.select(["src_namespace", "cost_usd", "tx_bytes", "rx_bytes"])
    by_ns = ns.group_by("src_namespace").aggregate(
        [("cost_usd", "sum"), ("tx_bytes", "sum"), ("rx_bytes", "sum")]
    ).to_pylist()
    return {
        "classes": {r["traffic_class"]: [r["tx_bytes_sum"] or 0, r["rx_bytes_sum"] or 0,
                                         r["cost_usd_sum"] or 0.0, r["tx_bytes_count"]] for r in by_class},
        "namespaces": {(r["src_namespace"] or NODE_TRAFFIC): [r["cost_usd_sum"] or 0.0,
                                                              (r["tx_bytes_sum"] or 0) + (r["rx_bytes_sum"] or 0)]
                       for r in by_ns},
        "rows": costs.num_rows,
    }


@dataclass
class Summary:
    classes: dict[str, list] = field(default_factory=dict)     # class -> [tx, rx, cost, rows]
    namespaces: dict[str, list] = field(default_factory=dict)  # namespace -> [cost, bytes]
    rows: int = 0

    @property
    def total_cost(self) -> float:
        return sum(v[2] for v in self.classes.values())

    @property
    def total_bytes(self) -> int:
        return sum(v[0] + v[1] for v in self.classes.values())

    def top_namespaces(self, n: int = 5) -> list[tuple[str, float, int]]:
        items = sorted(self.namespaces.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
        return [(k, v[0], v[1]) for k, v in items[:n]]


def merge(parts: list[dict]) -> Summary:
    s = Summary()
    for p in parts:
        s.rows += p["rows"]
        for k, v in p["classes"].items():
            cur = s.classes.setdefault(k, [0, 0, 0.0, 0])
            for i in range(4):
                cur[i] += v[i]
        for k, v in p["namespaces"].items():
            cur = s.namespaces.setdefault(k, [0.0, 0])
            cur[0] += v[0]
            cur[1] += v[1]
    return s


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n:,.2f} TiB"  # pragma: no cover


def format_summary(s: Summary, *, hours: int, retiered: int, rows_in: int, files: int,
                   quarantined: list[dict], duplicates: int, seconds: float,
                   inventory_gaps: dict | None = None, renamed: int = 0) -> str:
    rate = rows_in / seconds if seconds > 0 else 0.0
    again = f", {renamed} re-named (late DNS answers)" if renamed else ""
    lines = [
        f"cost job: {hours} hour(s) computed, {retiered} re-tiered{again}; {files} file(s), "
        f"{rows_in:,} raw rows -> {s.rows:,} cost rows in {seconds:.1f}s ({rate:,.0f} rows/s)",
        f"total: {human_bytes(s.total_bytes)}, ${s.total_cost:,.4f}",
    ]
    if s.classes:
        lines.append("by class:")
        for k, (tx, rx, cost, rows) in sorted(s.classes.items(), key=lambda kv: (-kv[1][2], -(kv[1][0] + kv[1][1]), kv[0])):
            lines.append(f"  {k:<18} {human_bytes(tx + rx):>14}  ${cost:>12,.4f}  {rows:>10,} rows")
        lines.append("top namespaces by cost:")
        for ns, cost, b in s.top_namespaces(5):
            lines.append(f"  {ns:<30} ${cost:>12,.4f}  {human_bytes(b):>14}")
    lines.append(f"files quarantined: {len(quarantined)}" + ("" if not quarantined else ":"))
    for q in quarantined[:10]:
        lines.append(f"  {q['path']}: {q['reason']}: {q['error']}")
    if len(quarantined) > 10:
        lines.append(f"  ... and {len(quarantined) - 10} more (see _quarantine/)")
    if duplicates:
        lines.append(f"duplicate uploads skipped: {duplicates}")
    if inventory_gaps:
        lines.append(f"hours costed with an inventory gap (rows flagged inventory_gap; names and inbound "
                     f"de-duplication may be wrong): {len(inventory_gaps)}:")
        for h, kinds in list(inventory_gaps.items())[:10]:
            lines.append(f"  {h:%Y-%m-%dT%H}:00Z: no readable {', '.join(kinds)} snapshot for over 10 minutes")
    return "\n".join(lines)
