"""Data-quality expectations (great-expectations) for every lake table.

The suites are written down here as data, one list per table, so they double as documentation
of what each table promises. `check_*` functions run a suite over a pandas frame and return
`Failure`s; raw frames carry a `_file` column so failures map back to the files to quarantine.

Severity: `critical` failures make a raw file unusable (quarantined) or a cost partition
unpublishable; `warning` failures are reported but do not block (a node that is not in the
inventory yet, say: its first window can arrive before the next inventory snapshot).

IP validity is checked on the distinct (file, ip) pairs, not on every row, which keeps the
check cheap on tens of millions of rows; counters and windows are checked row by row.
"""
from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lake import schema as S

# Canonical textual forms as the agent writes them (checked exactly by _canonical_ip_mask).
_IPV4 = r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$"
_IPV6 = r"^[0-9a-f:.]*:[0-9a-f:.]*$"


@dataclass(frozen=True)
class Expectation:
    kind: str                 # great-expectations class name
    kwargs: dict
    severity: str = "critical"
    why: str = ""


@dataclass
class Failure:
    table: str
    expectation: str
    column: str | None
    unexpected_count: int
    examples: list = field(default_factory=list)
    severity: str = "critical"
    observed: object = None
    file: str | None = None

    def describe(self) -> str:
        col = f" on {self.column}" if self.column else ""
        obs = f", observed {self.observed}" if self.observed is not None else ""
        ex = f", e.g. {self.examples[:3]}" if self.examples else ""
        return f"{self.expectation}{col}: {self.unexpected_count} unexpected{obs}{ex}"

    def as_dict(self) -> dict:
        return {
            "table": self.table, "expectation": self.expectation, "column": self.column,
            "unexpected_count": int(self.unexpected_count), "severity": self.severity,
            "examples": [str(e) for e in self.examples[:5]],
            "observed": None if self.observed is None else str(self.observed),
        }


def _E(kind: str, severity: str = "critical", why: str = "", **kwargs) -> Expectation:
    return Expectation(kind, kwargs, severity, why)


def _columns_exist(schema) -> list[Expectation]:
    return [_E("ExpectColumnToExist", column=f.name) for f in schema]


_COUNTERS = ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets")

RAW_FLOWS_SUITE = [
    *_columns_exist(S.RAW_FLOWS),
    *[_E("ExpectColumnValuesToNotBeNull", column=c) for c in
      ("window_start", "window_end", "node", "direction", "src_ip", "dst_ip", "proto", *_COUNTERS)],
    *[_E("ExpectColumnValuesToBeBetween", column=c, min_value=0, why="deltas are never negative")
      for c in _COUNTERS],
    _E("ExpectColumnValuesToBeInSet", column="direction", value_set=list(S.DIRECTIONS)),
    _E("ExpectColumnValuesToBeBetween", column="proto", min_value=0, max_value=255),
    _E("ExpectColumnValuesToBeBetween", column="dst_port", min_value=0, max_value=65535, mostly=1.0),
    _E("ExpectColumnValuesToBeBetween", column="orig_dst_port", min_value=0, max_value=65535),
    _E("ExpectColumnValuesToBeBetween", column="_window_s", min_value=0.001,
       why="window_end after window_start, and not longer than the tolerance"),
    _E("ExpectColumnValuesToBeInSet", column="_ip_ok", value_set=[True], why="addresses are canonical IPv4/IPv6"),
]

RAW_DNS_SUITE = [
    *_columns_exist(S.RAW_DNS),
    *[_E("ExpectColumnValuesToNotBeNull", column=c) for c in ("window_end", "node", "client_ip", "domain", "ip")],
    _E("ExpectColumnValuesToBeBetween", column="ttl_s", min_value=0),
    _E("ExpectColumnValueLengthsToBeBetween", column="domain", min_value=1, max_value=253),
    _E("ExpectColumnValuesToBeInSet", column="_ip_ok", value_set=[True], why="addresses are canonical IPv4/IPv6"),
]

INVENTORY_SUITES = {
    "pods": [*_columns_exist(S.INV_PODS),
             *[_E("ExpectColumnValuesToNotBeNull", column=c) for c in ("snapshot_time", "name", "namespace", "ip")],
             _E("ExpectColumnValuesToBeInSet", column="_ip_ok", value_set=[True])],
    "services": [*_columns_exist(S.INV_SERVICES),
                 *[_E("ExpectColumnValuesToNotBeNull", column=c) for c in ("snapshot_time", "name", "namespace")]],
    "nodes": [*_columns_exist(S.INV_NODES),
              *[_E("ExpectColumnValuesToNotBeNull", column=c) for c in ("snapshot_time", "name")],
              _E("ExpectColumnValuesToNotBeNull", column="zone", severity="warning",
                 why="without a zone label cross-zone traffic cannot be told from same-zone")],
    "endpoints": [*_columns_exist(S.INV_ENDPOINTS),
                  *[_E("ExpectColumnValuesToNotBeNull", column=c) for c in ("snapshot_time", "service", "ip")]],
}

COST_FLOWS_SUITE = [
    *_columns_exist(S.COST_FLOWS),
    _E("ExpectColumnValuesToBeInSet", column="traffic_class", value_set=list(S.TRAFFIC_CLASSES)),
    _E("ExpectColumnValuesToNotBeNull", column="traffic_class"),
    _E("ExpectColumnValuesToBeInSet", column="dst_kind", value_set=list(S.DST_KINDS)),
    _E("ExpectColumnValuesToBeBetween", column="cost_usd", min_value=0),
    _E("ExpectColumnValuesToNotBeNull", column="cost_usd"),
    *[_E("ExpectColumnValuesToBeBetween", column=c, min_value=0) for c in _COUNTERS],
]

SUITES = {
    "raw/flows": RAW_FLOWS_SUITE,
    "raw/dns": RAW_DNS_SUITE,
    **{f"inventory/{k}": v for k, v in INVENTORY_SUITES.items()},
    "costs/flows": COST_FLOWS_SUITE,
}

# ------------------------------------------------------------------ great-expectations plumbing

_lock = threading.Lock()
_ctx = None


def _context():
    """One ephemeral context per process (creating one costs ~ms; importing GX ~3 s, once)."""
    global _ctx
    with _lock:
        if _ctx is None:
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
            import great_expectations as gx  # noqa: PLC0415 - heavy, only the jobs need it
            from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: PLC0415

            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
            _ctx = (gx, ctx, ctx.data_sources.add_pandas("netmon"), {})
        return _ctx


def run_suite(table: str, df: pd.DataFrame, suite: list[Expectation], index_col: str | None = None) -> list[Failure]:
    """Run `suite` on `df`; with `index_col`, each failure is split per value of that column
    (the raw file a bad row came from)."""
    gx, ctx, ds, cache = _context()
    key = (table, id(suite))
    with _lock:
        if key not in cache:
            name = f"{table.replace('/', '_')}_{len(cache)}"
            asset = ds.add_dataframe_asset(name)
            bd = asset.add_batch_definition_whole_dataframe("all")
            gsuite = ctx.suites.add(gx.ExpectationSuite(
                name=name, expectations=[getattr(gx.expectations, e.kind)(**e.kwargs, meta={"netmon_idx": i})
                               for i, e in enumerate(suite)]))
            cache[key] = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=bd, suite=gsuite))
        vd = cache[key]
    result = vd.run(batch_parameters={"dataframe": df.reset_index(drop=True)},
                    result_format={"result_format": "COMPLETE"})
    failures = []
    for r in result.results:
        if r.success:
            continue
        # GX does not keep the suite's order; each expectation carries its index in `meta`.
        exp = suite[int(r.expectation_config.meta["netmon_idx"])]
        res = r.result or {}
        col = exp.kwargs.get("column")
        idx = res.get("unexpected_index_list") or []
        if index_col and idx and index_col in df.columns:
            rows = df.iloc[[i if isinstance(i, (int, np.integer)) else i.get("index", 0) for i in idx]]
            for fname, grp in rows.groupby(index_col, sort=True):
                failures.append(Failure(table, _snake(exp.kind), col, len(grp),
                                        grp[col].head(3).tolist() if col in grp else [], exp.severity, file=fname))
            continue
        raised = (r.exception_info or {}).get("raised_exception")
        failures.append(Failure(
            table, _snake(exp.kind), col,
            int(res.get("unexpected_count") or (0 if raised is False else 1) or 1),
            list(res.get("partial_unexpected_list") or [])[:5], exp.severity, res.get("observed_value")))
    return failures


def _snake(name: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out


# --------------------------------------------------------------------------- derived columns

def canonical_ip_mask(values: pd.Series) -> pd.Series:
    """True where the string is an IPv4/IPv6 address in canonical form. Runs per distinct value."""
    uniq = pd.unique(values.dropna())
    ok = {}
    for v in uniq:
        try:
            ok[v] = str(ipaddress.ip_address(v)) == v
        except ValueError:
            ok[v] = False
    return values.map(ok).fillna(True).astype(bool)


def _ip_frame(df: pd.DataFrame, cols: tuple[str, ...], file_col: str | None) -> pd.DataFrame:
    """Distinct (file, ip) pairs with an `_ip_ok` column, for the cheap IP expectation."""
    parts = []
    for c in cols:
        if c not in df.columns:
            continue
        sub = df[[file_col, c]] if file_col else df[[c]]
        sub = sub.drop_duplicates().rename(columns={c: "ip"})
        parts.append(sub)
    if not parts:
        return pd.DataFrame({"ip": pd.Series([], dtype=object), "_ip_ok": pd.Series([], dtype=bool)})
    ips = pd.concat(parts, ignore_index=True).drop_duplicates()
    ips["_ip_ok"] = canonical_ip_mask(ips["ip"])
    return ips


def _split_ip_checks(suite: list[Expectation]) -> tuple[list[Expectation], list[Expectation]]:
    rows = [e for e in suite if e.kwargs.get("column") != "_ip_ok"]
    ips = [e for e in suite if e.kwargs.get("column") == "_ip_ok"]
    return rows, ips


# -------------------------------------------------------------------------------- checks

def check_raw_flows(df: pd.DataFrame, *, max_window_s: float = 3600.0, known_nodes: set[str] | None = None,
                    file_col: str = "_file") -> list[Failure]:
    """Value checks on raw flow rows (schema was checked at load). Failures carry the file."""
    work = df.copy(deep=False)
    work["_window_s"] = (pd.to_datetime(work["window_end"]) - pd.to_datetime(work["window_start"])).dt.total_seconds()
    suite = list(RAW_FLOWS_SUITE)
    suite = [_E("ExpectColumnValuesToBeBetween", column="_window_s", min_value=0.001, max_value=max_window_s,
                why=e.why) if e.kwargs.get("column") == "_window_s" else e for e in suite]
    if known_nodes:
        suite.append(_E("ExpectColumnValuesToBeInSet", column="node", value_set=sorted(known_nodes),
                        severity="warning", why="the node is in the inventory"))
    rows, ipchecks = _split_ip_checks(suite)
    fcol = file_col if file_col in work.columns else None
    failures = run_suite("raw/flows", work, rows, index_col=fcol)
    ips = _ip_frame(work, ("src_ip", "dst_ip", "orig_dst_ip"), fcol)
    failures += run_suite("raw/flows", ips, ipchecks, index_col=fcol)
    return failures


def check_raw_dns(df: pd.DataFrame, file_col: str = "_file") -> list[Failure]:
    rows, ipchecks = _split_ip_checks(RAW_DNS_SUITE)
    fcol = file_col if file_col in df.columns else None
    failures = run_suite("raw/dns", df, rows, index_col=fcol)
    failures += run_suite("raw/dns", _ip_frame(df, ("client_ip", "ip"), fcol), ipchecks, index_col=fcol)
    return failures


def check_inventory(kind: str, df: pd.DataFrame) -> list[Failure]:
    rows, ipchecks = _split_ip_checks(INVENTORY_SUITES[kind])
    failures = run_suite(f"inventory/{kind}", df, rows)
    if ipchecks:
        failures += run_suite(f"inventory/{kind}", _ip_frame(df, ("ip",), None), ipchecks)
    return failures


def check_costs(costs: pd.DataFrame, namespace_hourly: pd.DataFrame | None = None,
                workload_daily: pd.DataFrame | None = None,
                raw_bytes: tuple[int, int] | None = None, cost_tolerance: float = 1e-6) -> list[Failure]:
    """Checks on a cost partition: values, rollups reconciling with the detail, and total bytes
    equal to the bytes of the raw rows that produced it (`raw_bytes` = (tx, rx) after de-dup)."""
    failures = run_suite("costs/flows", costs, COST_FLOWS_SUITE)
    tx, rx, usd = int(costs["tx_bytes"].sum()), int(costs["rx_bytes"].sum()), float(costs["cost_usd"].sum())
    if raw_bytes is not None:
        # Inbound rows are turned around (tx <-> rx), so only tx + rx is invariant.
        total = int(raw_bytes[0]) + int(raw_bytes[1])
        both = pd.DataFrame({"bytes": (costs["tx_bytes"] + costs["rx_bytes"]).astype("int64")})
        failures += run_suite("costs/flows", both, [
            _E("ExpectColumnSumToBeBetween", column="bytes", min_value=total, max_value=total,
               why="every kept raw byte is in the cost table exactly once")])
    for name, roll in (("costs/namespace_hourly", namespace_hourly), ("costs/workload_daily", workload_daily)):
        if roll is None:
            continue
        failures += run_suite(name, roll, [
            _E("ExpectColumnSumToBeBetween", column="tx_bytes", min_value=tx, max_value=tx,
               why="the rollup reconciles with the detail table"),
            _E("ExpectColumnSumToBeBetween", column="rx_bytes", min_value=rx, max_value=rx),
            _E("ExpectColumnSumToBeBetween", column="cost_usd", min_value=usd - cost_tolerance * max(1.0, usd),
               max_value=usd + cost_tolerance * max(1.0, usd)),
            _E("ExpectColumnValuesToBeInSet", column="traffic_class", value_set=list(S.TRAFFIC_CLASSES)),
        ])
    return failures


def critical(failures: list[Failure]) -> list[Failure]:
    return [f for f in failures if f.severity == "critical"]
