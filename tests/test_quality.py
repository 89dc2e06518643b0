"""Data-quality rules catch each kind of broken data, map it to its file, and nothing else."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from jobs import quality as Q
from lake import schema as S

T0 = dt.datetime(2026, 1, 5, 10, tzinfo=dt.timezone.utc)
T1 = T0 + dt.timedelta(seconds=60)


def flows(n=4, **over) -> pa.Table:
    cols = {
        "window_start": [T0] * n, "window_end": [T1] * n, "node": ["n1"] * n, "direction": ["outbound"] * n,
        "src_ip": ["10.244.1.5"] * n, "dst_ip": ["10.244.2.9"] * n, "orig_dst_ip": ["10.96.0.10"] * n,
        "orig_dst_port": [80] * n, "dst_port": [8080] * n, "proto": [6] * n,
        "tx_bytes": [100] * n, "tx_packets": [2] * n, "rx_bytes": [50] * n, "rx_packets": [1] * n,
        "connections": [1] * n,
    }
    cols.update(over)
    t = S.conform(pa.table({k: v for k, v in cols.items()}), S.RAW_FLOWS)
    return t.append_column("_file", pa.array([f"f{i % 2}.parquet" for i in range(n)]))


def found(failures):
    return {(f.file, f.rule, f.column, f.unexpected_count) for f in failures if f.severity == "critical"}


def test_valid_flows_pass():
    assert Q.check_raw_flows(flows()) == []


def test_negative_delta_is_caught_in_its_file_only():
    bad = flows(tx_bytes=[100, 100, -7, 100])   # row 2 lives in f0.parquet
    assert found(Q.check_raw_flows(bad)) == {("f0.parquet", "non_negative", "tx_bytes", 1)}


def test_bad_and_non_canonical_ips_are_caught():
    bad = flows(dst_ip=["10.244.2.9", "300.1.1.1", "10.244.2.9", "10.244.2.9"],
                src_ip=["10.244.1.5", "10.244.1.5", "10.244.1.5", "2001:DB8::1"])
    assert found(Q.check_raw_flows(bad)) == {("f1.parquet", "canonical_ip", "dst_ip", 1),
                                             ("f1.parquet", "canonical_ip", "src_ip", 1)}


def test_inverted_or_overlong_window_is_caught():
    ends = [T1, T0 - dt.timedelta(seconds=1), T0 + dt.timedelta(hours=3), T1]
    assert found(Q.check_raw_flows(flows(window_end=ends))) == {("f1.parquet", "window", "window_end", 1),
                                                                ("f0.parquet", "window", "window_end", 1)}
    # the bound follows the flush interval the caller states
    assert found(Q.check_raw_flows(flows(), max_window_s=30)) == {("f0.parquet", "window", "window_end", 2),
                                                                  ("f1.parquet", "window", "window_end", 2)}


def test_unknown_direction_nulls_and_unknown_node():
    df = flows(direction=["outbound", "sideways", "outbound", "outbound"], src_ip=[None, "10.0.0.1", "10.0.0.1", "10.0.0.1"])
    fails = Q.check_raw_flows(df, known_nodes={"n2"})
    assert found(fails) == {("f1.parquet", "in_set", "direction", 1), ("f0.parquet", "not_null", "src_ip", 1)}
    warn = sorted((w.file, w.column, w.unexpected_count) for w in fails if w.severity == "warning")
    assert warn == [("f0.parquet", "node", 2), ("f1.parquet", "node", 2)]


def test_missing_column_breaks_every_row():
    t = flows().drop_columns(["proto"])
    assert ("f0.parquet", "not_null", "proto", 2) in found(Q.check_raw_flows(t))


def dns(**over) -> pa.Table:
    cols = {"window_start": [T0], "window_end": [T1], "node": ["n1"], "client_ip": ["10.244.1.5"],
            "domain": ["api.example.com"], "ip": ["2600:1f18::1"], "ttl_s": [30], "seen_at": [T0]}
    cols.update(over)
    return S.conform(pa.table(cols), S.RAW_DNS).append_column("_file", pa.array(["d.parquet"]))


def test_dns_checks():
    assert Q.check_raw_dns(dns()) == []
    assert found(Q.check_raw_dns(dns(ttl_s=[-1]))) == {("d.parquet", "non_negative", "ttl_s", 1)}
    assert found(Q.check_raw_dns(dns(ip=["not-an-ip"]))) == {("d.parquet", "canonical_ip", "ip", 1)}
    assert found(Q.check_raw_dns(dns(domain=[""]))) == {("d.parquet", "length_between", "domain", 1)}


def costs(**over) -> pa.Table:
    cols = {"traffic_class": ["cross_zone", "internet_egress"], "dst_kind": ["pod", "external"],
            "tx_bytes": [10, 20], "rx_bytes": [1, 2], "tx_packets": [1, 1], "rx_packets": [1, 1],
            "cost_usd": [0.5, 0.25]}
    cols.update(over)
    return S.conform(pa.table(cols), S.COST_FLOWS)


def rollup(tx=30, rx=3, usd=0.75, cls="cross_zone") -> pa.Table:
    return pa.table({"namespace": ["a"], "traffic_class": [cls], "tx_bytes": [tx], "rx_bytes": [rx], "cost_usd": [usd]})


def test_costs_reconcile_with_raw_and_rollups():
    assert Q.check_costs(costs(), rollup(), rollup(), raw_bytes=33) == []


def test_cost_failures_are_named():
    fails = Q.check_costs(costs(traffic_class=["cross_zone", "teleport"], cost_usd=[-1.0, 0.25]),
                          rollup(tx=31, usd=0.75), None, raw_bytes=34)
    got = {(f.table, f.rule, f.column, None if f.observed is None else round(f.observed, 6)) for f in fails}
    assert got == {
        ("costs/flows", "in_set", "traffic_class", None),
        ("costs/flows", "non_negative", "cost_usd", None),
        ("costs/flows", "equal_raw", "bytes", -1),                      # 33 in the table, 34 raw
        ("costs/namespace_hourly", "equal_detail", "tx_bytes", 1),      # 31 vs 30
        ("costs/namespace_hourly", "equal_detail", "cost_usd", 1.5),  # 0.75 vs -0.75
    }
    assert all(f.describe() for f in fails)


def test_inventory_nodes_without_zone_is_only_a_warning():
    t = S.conform(pa.table({"snapshot_time": [T0], "name": ["n1"], "internal_ip": ["10.0.0.1"]}), S.INV_NODES)
    assert [(f.column, f.severity) for f in Q.check_inventory("nodes", t)] == [("zone", "warning")]


# --- deferred validation (the cost job's Ray tasks): decided from the profile, confirmed by GX

DEFERRED_CASES = [
    lambda: Q.check_raw_flows(flows()),
    lambda: Q.check_raw_flows(flows(tx_bytes=[100, 100, -7, 100])),
    lambda: Q.check_raw_flows(flows(src_ip=["10.0.0.01", "10.244.1.5", "::FFFF:1.2.3.4", "x"])),
    lambda: Q.check_raw_flows(flows(direction=["outbound", "sideways", None, "inbound"]), known_nodes={"n2"}),
    lambda: Q.check_costs(costs(traffic_class=["cross_zone", "teleport"], cost_usd=[-1.0, 0.25]),
                          rollup(tx=31, usd=0.75), None, raw_bytes=34),
    lambda: Q.check_costs(costs(), rollup(), rollup(), raw_bytes=33),
]


@pytest.mark.parametrize("case", range(len(DEFERRED_CASES)))
def test_deferred_decisions_equal_great_expectations_and_it_confirms_them(case):
    want = DEFERRED_CASES[case]()                 # great-expectations decides
    with Q.deferred() as evidence:
        got = DEFERRED_CASES[case]()              # the profile decides, GX not called
    assert [f.as_dict() for f in got] == [f.as_dict() for f in want]
    assert evidence and all(isinstance(e, Q.Evidence) for e in evidence)
    Q.confirm(evidence)                            # GX agrees, in one run per suite


def test_a_deferred_decision_great_expectations_does_not_confirm_is_refused():
    with Q.deferred() as evidence:
        Q.check_raw_flows(flows(tx_bytes=[100, 100, -7, 100]))
    flows_ev = next(e for e in evidence if e.suite == "raw/flows")
    flows_ev.decided.clear()                       # a task that let a broken file through
    with pytest.raises(Q.QualityDisagreement, match=r"disagree on raw/flows \(tx_bytes:non_negative\)"):
        Q.confirm(evidence)


def test_one_great_expectations_run_confirms_several_suites_row_by_row():
    """confirm stacks every suite's profiles into one frame: failing rows of a later suite must
    map back to that suite's own rows, and a wrong decision there is still caught."""
    with Q.deferred() as evidence:
        Q.check_raw_flows(flows())
        Q.check_raw_flows(flows(tx_bytes=[100, 100, -7, 100]))
        Q.check_costs(costs(traffic_class=["cross_zone", "teleport"], cost_usd=[-1.0, 0.25]),
                      rollup(tx=31, usd=0.75), None, raw_bytes=34)
    suites = {e.suite for e in evidence}
    assert len(suites) >= 2 and any(e.decided for e in evidence if e.suite != evidence[0].suite)
    Q.confirm(evidence)                            # one run, every suite agrees
    late = next(e for e in reversed(evidence) if e.decided)
    col = next(iter(late.decided))
    late.decided[col] = [i + 1 for i in late.decided[col]]  # the right count, the wrong rows
    with pytest.raises(Q.QualityDisagreement, match=rf"disagree on {late.suite} \("):
        Q.confirm(evidence)
