"""Data-quality expectations for every lake table, checked with great-expectations.

The rules are data (one list per table) so they double as documentation of what each table
promises. Checking is two steps:
1. `profile`: vectorized pyarrow computes, for every rule, how many rows break it, per group
   (per raw file, so failures map back to the files to quarantine; one group for a cost
   partition). Each distinct IP is parsed once, not each row.
2. great-expectations validates the profile: one expectation per rule, "no row breaks it"
   (violations between 0 and 0), with the per-file counts kept as the evidence.
This keeps the check at a fraction of a second per million rows, so the cost job can run it
on everything it reads and writes.

In the cost job's Ray tasks, step 2 is deferred (`deferred()`): a task decides from its
profiles alone (a rule is broken where its count is outside the expectation's bounds, the
arithmetic great-expectations applies) and returns the profiles as `Evidence`; the driver
validates them with great-expectations (`confirm`) before it commits the hour, and fails the
run if great-expectations disagrees. So the workers never import great-expectations (seconds
of CPU and ~250 MiB per worker process) and every profile is still validated by it.

Severity: `critical` failures make a raw file unusable (quarantined) or a cost partition
unpublishable; `warning` failures are reported but do not block (a node that is not in the
inventory yet, say: its first window can arrive before the next inventory snapshot).
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import threading
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lake import schema as S

US_PER_S = 1_000_000


@dataclass(frozen=True)
class Rule:
    """One promise about a column. kinds: not_null, non_negative, in_set (args: values),
    between (args: lo, hi), canonical_ip, window (args: longest window in seconds)."""
    column: str
    kind: str
    args: tuple = ()
    severity: str = "critical"

    @property
    def name(self) -> str:
        return f"{self.column}:{self.kind}"


@dataclass
class Failure:
    table: str
    rule: str                 # the rule's kind, or the reconciliation's name
    column: str | None
    unexpected_count: int
    severity: str = "critical"
    observed: object = None
    file: str | None = None

    def describe(self) -> str:
        col = f" on {self.column}" if self.column else ""
        obs = f" (observed {self.observed})" if self.observed is not None else ""
        return f"{self.rule}{col}: {self.unexpected_count} unexpected{obs}"

    def as_dict(self) -> dict:
        return {"table": self.table, "rule": self.rule, "column": self.column,
                "unexpected_count": int(self.unexpected_count), "severity": self.severity,
                "observed": None if self.observed is None else str(self.observed)}


_COUNTERS = ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets")


def _not_null(*cols: str) -> list[Rule]:
    return [Rule(c, "not_null") for c in cols]


RAW_FLOWS_RULES = [
    *_not_null("window_start", "window_end", "node", "direction", "src_ip", "dst_ip", "proto", *_COUNTERS),
    *[Rule(c, "non_negative") for c in (*_COUNTERS, "connections")],
    Rule("direction", "in_set", tuple(S.DIRECTIONS)),
    Rule("proto", "between", (0, 255)),
    Rule("dst_port", "between", (0, 65535)),
    Rule("orig_dst_port", "between", (0, 65535)),
    Rule("window_end", "window", (3600,)),
    *[Rule(c, "canonical_ip") for c in ("src_ip", "dst_ip", "orig_dst_ip")],
]

RAW_DNS_RULES = [
    *_not_null("window_end", "node", "client_ip", "domain", "ip"),
    Rule("ttl_s", "non_negative"),
    Rule("domain", "length_between", (1, 253)),
    *[Rule(c, "canonical_ip") for c in ("client_ip", "ip")],
]

INVENTORY_RULES = {
    "pods": [*_not_null("snapshot_time", "name", "namespace"), Rule("ip", "canonical_ip")],
    "services": [*_not_null("snapshot_time", "name", "namespace"), Rule("cluster_ip", "canonical_ip")],
    "nodes": [*_not_null("snapshot_time", "name"), Rule("internal_ip", "canonical_ip"),
              Rule("zone", "not_null", severity="warning")],   # cross-zone is unknowable without it
    "endpoints": [*_not_null("snapshot_time", "service", "ip"), Rule("ip", "canonical_ip")],
}

COST_FLOWS_RULES = [
    *_not_null("traffic_class", "dst_kind", "cost_usd", *_COUNTERS),
    Rule("traffic_class", "in_set", tuple(S.TRAFFIC_CLASSES)),
    Rule("dst_kind", "in_set", tuple(S.DST_KINDS)),
    *[Rule(c, "non_negative") for c in (*_COUNTERS, "cost_usd")],
    # the parts of cost_usd (destination side, processing) and the metered bytes of each charge
    *[Rule(c, "non_negative") for c in ("dst_cost_usd", "processing_cost_usd", "usage_bytes", "dst_usage_bytes",
                                        "processing_bytes")],
]

RULES = {
    "raw/flows": RAW_FLOWS_RULES,
    "raw/dns": RAW_DNS_RULES,
    **{f"inventory/{k}": v for k, v in INVENTORY_RULES.items()},
    "costs/flows": COST_FLOWS_RULES,
}

# ---------------------------------------------------------------------- step 1: profile


def _canonical_ip_bad(col: pa.ChunkedArray) -> pa.Array:
    """True where a non-null value is not an IP address in canonical form; each distinct value
    is parsed once (dictionary encoding), then broadcast back."""
    enc = pc.dictionary_encode(col).combine_chunks()
    bad = []
    for v in enc.dictionary.to_pylist():
        try:
            bad.append(str(ipaddress.ip_address(v)) != v)
        except ValueError:
            bad.append(True)
    return pc.fill_null(pc.take(pa.array(bad, pa.bool_()), enc.indices), False)


def violations(table: pa.Table, rule: Rule) -> pa.Array:
    """Boolean per row: does the row break `rule`? A missing column breaks every row."""
    if rule.column not in table.column_names:
        return pa.array([True] * table.num_rows, pa.bool_())
    col = table.column(rule.column)
    k, a = rule.kind, rule.args
    if k == "not_null":
        out = pc.is_null(col)
    elif k == "non_negative":
        out = pc.less(col, 0)
    elif k == "in_set":
        out = pc.invert(pc.is_in(col, pa.array(a, col.type)))
    elif k == "between":
        out = pc.or_(pc.less(col, a[0]), pc.greater(col, a[1]))
    elif k == "length_between":
        n = pc.utf8_length(col)
        out = pc.or_(pc.less(n, a[0]), pc.greater(n, a[1]))
    elif k == "window":   # window_end after window_start, and not longer than a[0] seconds
        us = pc.subtract(col.cast(pa.int64()), table.column("window_start").cast(pa.int64()))
        out = pc.or_(pc.less_equal(us, 0), pc.greater(us, int(a[0] * US_PER_S)))
    elif k == "canonical_ip":
        out = _canonical_ip_bad(col)
    else:
        raise ValueError(f"unknown rule kind {k!r}")
    return pc.fill_null(out, False)   # a null is the not_null rule's business


def profile(table: pa.Table, rules: list[Rule], by: str | None = None) -> pd.DataFrame:
    """Rows breaking each rule, per value of `by` (or over the whole table): a small frame
    with one column per rule name, plus `rows`. Only rules that some row breaks are grouped;
    the others are zero everywhere (the common case costs one pass per rule)."""
    if by is None:
        return pd.DataFrame({**{r.name: [pc.sum(violations(table, r).cast(pa.int64())).as_py() or 0] for r in rules},
                             "rows": [table.num_rows]})
    keys = table.column(by)
    base = pa.table({by: keys}).group_by(by).aggregate([([], "count_all")]).sort_by(by)
    out = pd.DataFrame({by: base.column(by).to_pylist(), "rows": base.column("count_all").to_pylist()})
    for r in rules:
        v = violations(table, r)
        if not pc.any(v).as_py():
            out[r.name] = 0
            continue
        per = pa.table({by: keys, "n": v.cast(pa.int64())}).group_by(by).aggregate([("n", "sum")])
        counts = dict(zip(per.column(by).to_pylist(), per.column("n_sum").to_pylist()))
        out[r.name] = out[by].map(counts).fillna(0).astype("int64")
    return out


# ------------------------------------------------------- step 2: great-expectations on profiles

_lock = threading.Lock()
_ctx = None


def _context():
    """One ephemeral context per process (importing GX costs ~3 s, once per process)."""
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


def warm_up() -> None:
    """Import great-expectations, build its context and run one validation now, so that later
    validations import nothing (the driver does it while the first cells run)."""
    _expect(pd.DataFrame({"warm_up": [0]}), "warm_up", {"warm_up": (0, 0)})


def _expect(frame: pd.DataFrame, suite_name: str, bounds: dict[str, tuple[float, float]]) -> dict[str, list[int]]:
    """Validate that each column of `frame` named in `bounds` lies within its bounds; returns
    {column: [row indexes outside]} for the expectations that failed."""
    gx, ctx, ds, cache = _context()
    key = (suite_name, tuple(sorted(bounds.items())))
    with _lock:
        if key not in cache:
            name = f"{suite_name.replace('/', '_')}_{len(cache)}"
            asset = ds.add_dataframe_asset(name)
            bd = asset.add_batch_definition_whole_dataframe("all")
            suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=[
                gx.expectations.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi)
                for c, (lo, hi) in bounds.items()]))
            cache[key] = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=bd, suite=suite))
        vd = cache[key]
    result = vd.run(batch_parameters={"dataframe": frame.reset_index(drop=True)},
                    result_format={"result_format": "COMPLETE"})
    failed = {}
    for r in result.results:
        if not r.success:
            idx = (r.result or {}).get("unexpected_index_list") or []
            failed[r.expectation_config.kwargs["column"]] = [int(i) for i in idx] or list(range(len(frame)))
    return failed


@dataclass
class Evidence:
    """One deferred validation: the frame, its expectations' bounds and what the task decided
    from them ({column: failing row indexes})."""
    suite: str
    bounds: dict[str, tuple[float, float]]
    frame: pd.DataFrame
    decided: dict[str, list[int]]


_deferral = threading.local()


@contextlib.contextmanager
def deferred():
    """Within the block (in this thread), checks decide from their profiles and collect the
    Evidence into the list yielded, for `confirm` in the driver."""
    before = getattr(_deferral, "evidence", None)
    _deferral.evidence = collected = []
    try:
        yield collected
    finally:
        _deferral.evidence = before


def _decide(frame: pd.DataFrame, bounds: dict[str, tuple[float, float]]) -> dict[str, list[int]]:
    """{column: row indexes outside [lo, hi]} for the columns with any: what
    ExpectColumnValuesToBeBetween reports as unexpected (a profile has no nulls)."""
    failed = {}
    for c, (lo, hi) in bounds.items():
        v = frame[c].to_numpy() if c in frame.columns else None
        bad = list(range(len(frame))) if v is None else [int(i) for i in ((v < lo) | (v > hi)).nonzero()[0]]
        if bad:
            failed[c] = bad
    return failed


def _validate(frame: pd.DataFrame, suite: str, bounds: dict[str, tuple[float, float]]) -> dict[str, list[int]]:
    evidence = getattr(_deferral, "evidence", None)
    if evidence is None:
        return _expect(frame, suite, bounds)
    decided = _decide(frame, bounds)
    evidence.append(Evidence(suite, dict(bounds), frame.reset_index(drop=True), decided))
    return decided


def confirm(evidence: list[Evidence]) -> None:
    """Validate deferred profiles with great-expectations in one run (each great-expectations
    run costs ~0.3 s of fixed work, an hour has several suites); raise QualityDisagreement if
    it fails other rows than the tasks did.

    The frames of a suite are concatenated; the suites' frames are stacked into one frame,
    each suite's columns under its own names and empty (null) in the other suites' rows, which
    ExpectColumnValuesToBeBetween does not count. A suite missing a column is validated on its
    own (great-expectations fails it as a whole, as the task did)."""
    groups: dict[tuple, list[Evidence]] = {}
    for e in evidence:
        groups.setdefault((e.suite, tuple(sorted(e.bounds.items()))), []).append(e)
    stacked, bounds = [], {}
    where: dict[str, tuple[int, str, int]] = {}       # stacked column -> (group, column, first row)
    wants: dict[int, tuple[str, dict[str, set[int]]]] = {}  # group -> (suite, what the tasks decided)
    offset = 0
    for g, ((suite, _), items) in enumerate(groups.items()):
        frame = pd.concat([e.frame for e in items], ignore_index=True)
        want: dict[str, set[int]] = {}
        base = 0
        for e in items:
            for c, rows in e.decided.items():
                want.setdefault(c, set()).update(base + i for i in rows)
            base += len(e.frame)
        if any(c not in frame.columns for c in items[0].bounds):
            got = {c: set(rows) for c, rows in _expect(frame, suite, items[0].bounds).items()}
            _agree(suite, got, want)
            continue
        names = {c: f"s{g}:{c}" for c in items[0].bounds}
        sub = pd.DataFrame({names[c]: frame[c].astype("float64") for c in names})
        sub.index = pd.RangeIndex(offset, offset + len(sub))
        stacked.append(sub)
        for c, (lo, hi) in items[0].bounds.items():
            bounds[names[c]] = (lo, hi)
            where[names[c]] = (g, c, offset)
        wants[g] = (suite, want)
        offset += len(sub)
    if not stacked:
        return
    frame = pd.concat(stacked)  # NaN outside each suite's own rows
    got_all = _expect(frame.reset_index(drop=True), "confirm", bounds)
    got: dict[int, dict[str, set[int]]] = {}
    for col, rows in got_all.items():
        g, c, first = where[col]
        got.setdefault(g, {})[c] = {i - first for i in rows}
    for g, (suite, want) in wants.items():
        _agree(suite, got.get(g, {}), want)


def _agree(suite: str, got: dict[str, set[int]], want: dict[str, set[int]]) -> None:
    if got != want:
        cols = sorted(c for c in set(got) | set(want) if got.get(c) != want.get(c))
        raise QualityDisagreement(f"great-expectations and the job's tasks disagree on {suite} "
                                  f"({', '.join(cols)}): nothing of the hour was published")


class QualityDisagreement(Exception):
    """A deferred decision that great-expectations does not confirm (a defect, never bad input)."""


def check(table_name: str, table: pa.Table, rules: list[Rule] | None = None, by: str | None = None) -> list[Failure]:
    """Profile `table` against its rules and validate the profile with great-expectations."""
    rules = RULES[table_name] if rules is None else rules
    if table.num_rows == 0:
        return []
    prof = profile(table, rules, by)
    failed = _validate(prof, table_name, {r.name: (0, 0) for r in rules})
    out = []
    for r in rules:
        for i in failed.get(r.name, []):
            row = prof.iloc[i]
            out.append(Failure(table_name, r.kind, r.column, int(row[r.name]), r.severity,
                               file=str(row[by]) if by else None))
    return sorted(out, key=lambda f: (f.file or "", f.column or "", f.rule))


def check_raw_flows(table: pa.Table, *, max_window_s: float = 3600.0, known_nodes: set[str] | None = None,
                    by: str | None = "_file") -> list[Failure]:
    rules = [Rule(r.column, r.kind, (max_window_s,)) if r.kind == "window" else r for r in RAW_FLOWS_RULES]
    if known_nodes:
        rules.append(Rule("node", "in_set", tuple(sorted(known_nodes)), severity="warning"))
    return check("raw/flows", table, rules, by if by in table.column_names else None)


def check_raw_dns(table: pa.Table, by: str | None = "_file") -> list[Failure]:
    return check("raw/dns", table, None, by if by in table.column_names else None)


def check_inventory(kind: str, table: pa.Table) -> list[Failure]:
    return check(f"inventory/{kind}", table)


def check_costs(costs: pa.Table, namespace_hourly: pa.Table | None = None, workload_daily: pa.Table | None = None,
                raw_bytes: int | None = None, cost_tolerance: float = 1e-6) -> list[Failure]:
    """A cost partition's values, plus reconciliations: tx + rx equal the kept raw rows' bytes
    (`raw_bytes`; inbound rows are turned around, so only the sum is invariant), and each rollup
    sums to the detail table."""
    failures = check("costs/flows", costs)
    tx = pc.sum(costs.column("tx_bytes")).as_py() or 0
    rx = pc.sum(costs.column("rx_bytes")).as_py() or 0
    usd = pc.sum(costs.column("cost_usd")).as_py() or 0.0
    diffs, bounds, where = {}, {}, {}
    if raw_bytes is not None:
        diffs["bytes:equal_raw"] = tx + rx - int(raw_bytes)
        bounds["bytes:equal_raw"], where["bytes:equal_raw"] = (0, 0), "costs/flows"
    tol = cost_tolerance * max(1.0, abs(usd))
    for name, roll in (("costs/namespace_hourly", namespace_hourly), ("costs/workload_daily", workload_daily)):
        if roll is None:
            continue
        failures += check(name, roll, [Rule("traffic_class", "in_set", tuple(S.TRAFFIC_CLASSES)),
                                       Rule("cost_usd", "non_negative")])
        for col, total, lim in (("tx_bytes", tx, 0), ("rx_bytes", rx, 0), ("cost_usd", usd, tol)):
            key = f"{name}:{col}:equal_detail"
            diffs[key] = (pc.sum(roll.column(col)).as_py() or 0) - total
            bounds[key], where[key] = (-lim, lim), name
    if diffs:
        failed = _validate(pd.DataFrame({k: [v] for k, v in diffs.items()}), "reconcile", bounds)
        for key in failed:
            col = key.split(":")[-2]
            failures.append(Failure(where[key], key.split(":")[-1], col, 1, observed=diffs[key]))
    return failures


def critical(failures: list[Failure]) -> list[Failure]:
    return [f for f in failures if f.severity == "critical"]
