"""great-expectations suites catch each kind of broken data, and only that."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from jobs import quality as Q

T0 = pd.Timestamp("2026-01-05T10:00:00Z")


def flows(n=4, **over):
    df = pd.DataFrame({
        "window_start": [T0] * n, "window_end": [T0 + pd.Timedelta(seconds=60)] * n,
        "node": ["n1"] * n, "direction": ["outbound"] * n,
        "src_ip": ["10.244.1.5"] * n, "dst_ip": ["10.244.2.9"] * n, "orig_dst_ip": ["10.96.0.10"] * n,
        "orig_dst_port": [80] * n, "dst_port": [8080] * n, "proto": [6] * n,
        "tx_bytes": [100] * n, "tx_packets": [2] * n, "rx_bytes": [50] * n, "rx_packets": [1] * n,
        "connections": [1] * n, "src_pod": [None] * n, "src_namespace": [None] * n,
        "dst_pod": [None] * n, "dst_namespace": [None] * n,
        "_file": [f"f{i % 2}.parquet" for i in range(n)],
    })
    for k, v in over.items():
        df[k] = v
    return df


def by_file(failures):
    return {(f.file, f.expectation, f.column) for f in failures if f.severity == "critical"}


def test_valid_flows_pass():
    assert Q.check_raw_flows(flows()) == []


def test_negative_delta_is_caught_in_its_file_only():
    bad = flows(tx_bytes=[100, 100, -7, 100])   # row 2 lives in f0.parquet
    assert by_file(Q.check_raw_flows(bad)) == {("f0.parquet", "expect_column_values_to_be_between", "tx_bytes")}


def test_bad_and_non_canonical_ips_are_caught():
    bad = flows(dst_ip=["10.244.2.9", "300.1.1.1", "10.244.2.9", "10.244.2.9"],
                src_ip=["10.244.1.5", "10.244.1.5", "10.244.1.5", "2001:DB8::1"])
    got = by_file(Q.check_raw_flows(bad))
    assert got == {("f1.parquet", "expect_column_values_to_be_in_set", "_ip_ok")}


def test_inverted_or_overlong_window_is_caught():
    ends = [T0 + pd.Timedelta(seconds=60), T0 - pd.Timedelta(seconds=1), T0 + pd.Timedelta(hours=3), T0 + pd.Timedelta(seconds=60)]
    got = by_file(Q.check_raw_flows(flows(window_end=ends)))
    assert got == {("f1.parquet", "expect_column_values_to_be_between", "_window_s"),
                   ("f0.parquet", "expect_column_values_to_be_between", "_window_s")}


def test_unknown_direction_and_unknown_node():
    df = flows(direction=["outbound", "sideways", "outbound", "outbound"])
    fails = Q.check_raw_flows(df, known_nodes={"n2"})
    assert by_file(fails) == {("f1.parquet", "expect_column_values_to_be_in_set", "direction")}
    warn = [f for f in fails if f.severity == "warning"]
    assert [(w.column, w.unexpected_count) for w in warn] == [("node", 2), ("node", 2)]


def dns(**over):
    df = pd.DataFrame({"window_start": [T0], "window_end": [T0], "node": ["n1"], "client_ip": ["10.244.1.5"],
                       "domain": ["api.example.com"], "ip": ["2600:1f18::1"], "ttl_s": [30], "seen_at": [T0],
                       "_file": ["d.parquet"]})
    for k, v in over.items():
        df[k] = v
    return df


def test_dns_checks():
    assert Q.check_raw_dns(dns()) == []
    assert by_file(Q.check_raw_dns(dns(ttl_s=[-1]))) == {("d.parquet", "expect_column_values_to_be_between", "ttl_s")}
    assert by_file(Q.check_raw_dns(dns(ip=["not-an-ip"]))) == {("d.parquet", "expect_column_values_to_be_in_set", "_ip_ok")}


def costs():
    return pd.DataFrame({
        **{c: [None, None] for c in [f.name for f in Q.S.COST_FLOWS]},
        "traffic_class": ["cross_zone", "internet_egress"], "dst_kind": ["pod", "external"],
        "tx_bytes": [10, 20], "rx_bytes": [1, 2], "tx_packets": [1, 1], "rx_packets": [1, 1],
        "cost_usd": [0.5, 0.25],
    })


def rollup(tx=30, rx=3, usd=0.75, cls="cross_zone"):
    return pd.DataFrame({"namespace": ["a"], "traffic_class": [cls], "tx_bytes": [tx], "rx_bytes": [rx], "cost_usd": [usd]})


def test_costs_reconcile_with_raw_and_rollups():
    assert Q.check_costs(costs(), rollup(), rollup(), raw_bytes=(25, 8)) == []   # 25 + 8 == 30 + 3


def test_cost_failures_are_named():
    bad = costs()
    bad.loc[1, "traffic_class"] = "teleport"
    bad.loc[0, "cost_usd"] = -1.0
    fails = Q.check_costs(bad, rollup(tx=31), None, raw_bytes=(30, 4))
    got = {(f.table, f.expectation, f.column) for f in fails}
    assert got == {
        ("costs/flows", "expect_column_values_to_be_in_set", "traffic_class"),
        ("costs/flows", "expect_column_values_to_be_between", "cost_usd"),
        ("costs/flows", "expect_column_sum_to_be_between", "bytes"),
        ("costs/namespace_hourly", "expect_column_sum_to_be_between", "tx_bytes"),
        ("costs/namespace_hourly", "expect_column_sum_to_be_between", "cost_usd"),
    }
    assert all(f.describe() for f in fails)


def test_inventory_nodes_without_zone_is_only_a_warning():
    df = pd.DataFrame({"snapshot_time": [T0], "name": ["n1"], "internal_ip": ["10.0.0.1"], "external_ip": [None],
                       "zone": [None], "region": [None], "provider": ["aws"], "instance_type": [None]})
    fails = Q.check_inventory("nodes", df)
    assert [(f.column, f.severity) for f in fails] == [("zone", "warning")]
