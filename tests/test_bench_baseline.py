"""The DuckDB baseline of the benchmark (bench/cost_sql.py) computes what the cost job computes:
on a lake built to hold ties (two DNS answers at the same instant, one IP held by two pods of a
snapshot, an IP that changes owner between snapshots, an endpoint of two services) and on a
small simulated lake, the two sides give the same rows, bytes and dollars per class; on a lake of
the newer pricing rules (NAT gateways by node group, public cloud services, region pairs, peering
and transit gateways) both give the hand-computed dollars."""
from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from bench import cost_sql
from jobs import run as R
from jobs.config import JobConfig, load_config
from lake import schema as S
from lake.storage import open_lake
from lake.writer import write_inventory, write_raw
from simulator.simulate import simulate

REPO = Path(__file__).resolve().parent.parent
RANGES = REPO / "jobs" / "fixtures"
UTC = dt.timezone.utc
H0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
MIN = dt.timedelta(minutes=1)
S3_IP = "52.216.10.10"  # public, inside the AWS S3 range of jobs/fixtures
ROW = ["window_start", "direction", "src_ip", "src_namespace", "src_pod", "src_workload", "dst_ip", "dst_port",
       "dst_kind", "dst_name", "dst_namespace", "dst_zone", "dst_domain", "traffic_class", "tx_bytes", "rx_bytes"]


def _inventory(lake, when, pods, endpoints=()):
    ts = lambda n: pa.array([when] * n, S.TS)  # noqa: E731
    nodes = [("n1", "10.1.0.1", "us-east-1a"), ("n2", "10.1.0.2", "us-east-1b")]
    write_inventory(lake, "nodes", when, pa.table({
        "snapshot_time": ts(2), "name": [n for n, _, _ in nodes], "internal_ip": [i for _, i, _ in nodes],
        "zone": [z for *_, z in nodes], "region": ["us-east-1"] * 2, "provider": ["aws"] * 2}))
    write_inventory(lake, "pods", when, pa.table({
        "snapshot_time": ts(len(pods)), "name": [p[0] for p in pods], "namespace": [p[1] for p in pods],
        "node": [p[2] for p in pods], "ip": [p[3] for p in pods], "host_network": [False] * len(pods),
        "workload_kind": ["Deployment"] * len(pods), "workload_name": [p[0].rsplit("-", 1)[0] for p in pods],
        "phase": [p[4] for p in pods]}))
    write_inventory(lake, "services", when, pa.table({
        "snapshot_time": ts(1), "name": ["api"], "namespace": ["shop"], "cluster_ip": ["10.96.0.10"]}))
    write_inventory(lake, "endpoints", when, pa.table({
        "snapshot_time": ts(len(endpoints)), "service": [e[0] for e in endpoints],
        "namespace": [e[1] for e in endpoints], "ip": [e[2] for e in endpoints],
        "port": pa.array([e[3] for e in endpoints], pa.int32()), "node": [None] * len(endpoints),
        "zone": [e[4] for e in endpoints]}))


def _flows(start, node, rows):
    """rows: (direction, src_ip, dst_ip, orig_dst_ip, tx, rx, src_pod, src_namespace)."""
    n = len(rows)
    col = lambda i: [r[i] for r in rows]  # noqa: E731
    return pa.table({
        "window_start": pa.array([start] * n, S.TS), "window_end": pa.array([start + MIN] * n, S.TS),
        "node": [node] * n, "direction": col(0), "src_ip": col(1), "dst_ip": col(2), "orig_dst_ip": col(3),
        "orig_dst_port": pa.array([443] * n, pa.int32()), "dst_port": pa.array([443] * n, pa.int32()),
        "proto": pa.array([6] * n, pa.int16()),
        "tx_bytes": pa.array(col(4), pa.int64()), "tx_packets": pa.array([1] * n, pa.int64()),
        "rx_bytes": pa.array(col(5), pa.int64()), "rx_packets": pa.array([1] * n, pa.int64()),
        "src_pod": col(6), "src_namespace": col(7), "connections": pa.array([1] * n, pa.int64())})


def _dns(start, node, answers):
    """answers: (client_ip, domain, ip, seen_at)."""
    n = len(answers)
    return pa.table({
        "window_start": pa.array([start] * n, S.TS), "window_end": pa.array([start + MIN] * n, S.TS),
        "node": [node] * n, "client_ip": [a[0] for a in answers], "domain": [a[1] for a in answers],
        "ip": [a[2] for a in answers], "ttl_s": pa.array([60] * n, pa.int32()),
        "seen_at": pa.array([a[3] for a in answers], S.TS),
        "cname_chain": pa.array([[]] * n, pa.list_(pa.string()))})


def tie_lake(root: Path):
    lake = open_lake(str(root))
    # snapshot 1: 10.0.2.1 is held by two Running pods (the job keeps the later row: db-new on
    # n2), 10.0.3.1 by a finished pod and its Running successor; 10.0.5.5 is an endpoint of two
    # services (the smallest (namespace, service, port) wins)
    _inventory(lake, H0 - 5 * MIN, [
        ("web-1", "shop", "n1", "10.0.1.1", "Running"), ("db-old", "shop", "n1", "10.0.2.1", "Running"),
        ("db-new", "data", "n2", "10.0.2.1", "Running"), ("job-b", "etl", "n2", "10.0.3.1", "Running"),
        ("job-a", "etl", "n1", "10.0.3.1", "Succeeded")],
        endpoints=[("zeta", "shop", "10.0.5.5", 80, "us-east-1a"), ("alpha", "shop", "10.0.5.5", 81, "us-east-1b")])
    # snapshot 2 (from minute 30): 10.0.2.1 now belongs to db-old alone, 10.0.3.1 to job-a alone
    _inventory(lake, H0 + 29 * MIN, [
        ("web-1", "shop", "n1", "10.0.1.1", "Running"), ("db-old", "shop", "n1", "10.0.2.1", "Running"),
        ("job-a", "etl", "n1", "10.0.3.1", "Running")])
    t = H0 + 10 * MIN
    # two answers for one private address at the same instant: the greatest name wins
    # (external_private, not cloud_api); another client's answer loses to the same client's
    write_raw(lake, "raw/dns", "n1", H0, _dns(H0, "n1", [
        ("10.0.1.1", "bucket.s3.amazonaws.com", "10.200.0.5", t), ("10.0.1.1", "zz.corp.internal", "10.200.0.5", t),
        ("10.0.9.9", "x.vpce.amazonaws.com", "10.200.0.6", t), ("10.0.1.1", "api.corp.internal", "10.200.0.6", t),
        ("10.0.9.9", "Y.VPCE.amazonaws.com", "10.200.0.7", t), ("10.0.9.9", "b.vpce.amazonaws.com", "10.200.0.7", t)]))
    rows = [
        ("outbound", "10.0.1.1", "10.0.2.1", "10.0.2.1", 5_000_000, 1_000, "web-1", "shop"),
        ("outbound", "10.0.1.1", "10.200.0.5", "10.200.0.5", 7_000_000, 2_000, "web-1", "shop"),
        ("outbound", "10.0.1.1", "10.200.0.6", "10.200.0.6", 3_000_000, 3_000, None, None),
        ("outbound", "10.0.1.1", "10.200.0.7", "10.200.0.7", 2_000_000, 4_000, "web-1", "shop"),
        ("outbound", "10.0.1.1", "10.0.3.1", "10.96.0.10", 4_000_000, 5_000, "web-1", "shop"),
        ("outbound", "10.0.1.1", "10.0.5.5", "10.0.5.5", 1_000_000, 6_000, "web-1", "shop"),
        ("outbound", "10.0.1.1", S3_IP, S3_IP, 9_000_000_000, 7_000, "web-1", "shop"),
        ("outbound", "10.1.0.1", "10.0.2.1", "10.0.2.1", 8_000, 8_000, None, None),
    ]
    for m in (20, 40):  # before and after the second snapshot
        write_raw(lake, "raw/flows", "n1", H0 + m * MIN, _flows(H0 + m * MIN, "n1", rows))
        write_raw(lake, "raw/flows", "n2", H0 + m * MIN, _flows(H0 + m * MIN, "n2", [
            ("inbound", "10.0.1.1", "10.0.3.1", "10.0.3.1", 111, 222, "job-b", "etl"),  # a pod's: dropped
            ("inbound", "203.0.113.7", "10.0.2.1", "10.0.2.1", 333, 444_000_000, "db-new", "data"),  # turned
        ]))
    return lake


def job_rows(lake, cfg_path: str | None) -> pa.Table:
    R.run_cost_job(R.JobOptions(lake_url=lake.url, config_path=cfg_path, ip_ranges_dir=str(RANGES),
                                executor="inline", progress=None))
    parts = [lake.read_table(lake.rel(i.path)) for i in lake.list_files("costs/flows")]
    return pa.concat_tables(parts)


def sql_rows(lake, cfg, out: Path) -> pa.Table:
    res = cost_sql.run(Path(lake.root), out, cfg, RANGES, memory_limit_mib=1024, threads=1)
    assert res["spill_bytes"] >= 0
    return duckdb.sql(f"SELECT * FROM read_parquet('{out}/*/*/*.parquet')").fetch_arrow_table()


def per_class(t: pa.Table) -> dict:
    g = t.group_by("traffic_class").aggregate([("tx_bytes", "sum"), ("rx_bytes", "sum"), ("cost_usd", "sum"),
                                              ("tx_bytes", "count")])
    return {r["traffic_class"]: (r["tx_bytes_count"], r["tx_bytes_sum"] + r["rx_bytes_sum"], r["cost_usd_sum"])
            for r in g.to_pylist()}


PRICED_ALIKE = cost_sql.PRICED_ALIKE


def assert_same_classes(ours: pa.Table, sql: pa.Table, dollars: set[str] | None = None) -> None:
    a, b = per_class(ours), per_class(sql)
    assert set(a) == set(b), (a, b)
    for cls in a:
        assert a[cls][:2] == b[cls][:2], (cls, a[cls], b[cls])  # rows, bytes
        if dollars is None or cls in dollars:
            assert math.isclose(a[cls][2], b[cls][2], rel_tol=1e-9, abs_tol=1e-12), (cls, a[cls], b[cls])


def rows_of(t: pa.Table) -> list[tuple]:
    d = t.select(ROW).to_pylist()
    return sorted((tuple("" if v is None else str(v) for v in r.values()) for r in d))


def test_sql_baseline_keeps_the_jobs_tie_breaks(tmp_path):
    lake = tie_lake(tmp_path / "lake")
    ours = job_rows(lake, None)
    sql = sql_rows(lake, JobConfig(), tmp_path / "sql")
    # the ties matter: the job's choices, as docs/costing.md and jobs/ define them
    first = {(r["window_start"].minute, r["src_ip"], r["dst_ip"]): r for r in ours.to_pylist()}
    assert first[(20, "10.0.1.1", "10.0.2.1")]["dst_pod"] == "db-new"          # the later of two Running pods
    assert first[(20, "10.0.1.1", "10.0.2.1")]["traffic_class"] == "cross_zone"
    assert first[(40, "10.0.1.1", "10.0.2.1")]["dst_pod"] == "db-old"          # the next snapshot's owner
    assert first[(20, "10.0.1.1", "10.0.3.1")]["dst_pod"] == "job-b"           # Running beats Succeeded
    assert first[(20, "10.0.1.1", "10.200.0.5")]["dst_domain"] == "zz.corp.internal"  # equal instants
    assert first[(20, "10.0.1.1", "10.200.0.5")]["traffic_class"] == "external_private"
    assert first[(20, "10.0.1.1", "10.200.0.6")]["dst_domain"] == "api.corp.internal"  # same client first
    assert first[(20, "10.0.1.1", "10.200.0.7")]["dst_domain"] == "y.vpce.amazonaws.com"
    assert first[(20, "10.0.1.1", "10.0.5.5")]["dst_name"] == "alpha"          # smallest endpoint key
    assert ours.num_rows == 2 * (8 + 1)
    assert rows_of(sql) == rows_of(ours)
    assert_same_classes(ours, sql)


@pytest.mark.slow
def test_sql_baseline_equals_the_job_on_a_simulated_lake(tmp_path):
    lake = open_lake(str(tmp_path / "lake"))
    simulate(lake, 3, 1, 7, flows_per_node_window=60)
    cfg_path = tmp_path / "job-config.json"
    cfg_path.write_bytes(lake.read_bytes("_expected/job-config.json"))
    ours = job_rows(lake, str(cfg_path))
    sql = sql_rows(lake, load_config(str(cfg_path)), tmp_path / "sql")
    assert ours.num_rows > 1000
    assert PRICED_ALIKE == set(S.TRAFFIC_CLASSES)
    assert_same_classes(ours, sql)  # rows, bytes and dollars of every class
    costly = {c for c, (_, _, usd) in per_class(ours).items() if usd > 0}
    assert {"cloud_api", "cross_region", "cross_zone", "internet_egress", "peering", "transit_gateway",
            "private_link"} <= costly  # the comparison is of real money, NAT included
    assert sum(ours.column("processing_cost_usd").to_pylist()) > 0
    assert rows_of(sql) == rows_of(ours)


GIB = 1 << 30
RULES_CONFIG = {
    "nat_gateways": [{"name": "nat-w", "node_groups": ["workers"]}], "gateway_endpoints": ["S3"],
    "rules": [{"cidr": "10.60.0.0/16", "class": "peering", "name": "same-az", "zone": "us-east-1a"},
              {"cidr": "10.61.0.0/16", "class": "peering", "name": "other-az", "zone": "us-east-1b"},
              {"cidr": "10.62.0.0/16", "class": "peering", "name": "ohio", "region": "us-east-2"},
              {"cidr": "10.70.0.0/16", "class": "transit_gateway", "name": "tgw"}]}
#: (node, direction, src, dst, tx GiB, rx GiB) -> hand-computed dollars from the AWS cards:
#: regional public $0.01 each way, NAT $0.045 both directions, inter-region $0.02 (us-east-1 ->
#: us-east-2 $0.01), peering $0.01 each way across AZs, transit processing $0.02 of what it is sent
RULES_FLOWS = [
    ("n1", "outbound", "10.0.1.1", "3.80.1.1", 1, 2, 3 * 0.01 + 3 * 0.045),      # EC2 public IP via NAT
    ("n1", "outbound", "10.0.1.1", "52.216.10.10", 1, 4, 0.0),                   # S3: free, gateway endpoint
    ("n1", "outbound", "10.0.1.1", "52.218.130.1", 2, 1, 2 * 0.02 + 1 * 0.02 + 3 * 0.045),  # S3 us-west-2
    ("n1", "outbound", "10.0.1.1", "198.51.100.9", 1, 1, 2 * 0.045),             # internet (free GB) + NAT
    ("n1", "inbound", "203.0.113.7", "10.0.1.1", 1, 3, 0.0),                      # a client: never NAT
    ("n2", "outbound", "10.0.2.1", "198.51.100.9", 1, 0, 0.0),                   # node with a public IP
    ("n1", "outbound", "10.0.1.1", "10.0.3.1", 1, 2, 1 * 0.02 + 2 * 0.02),       # pod in us-west-2
    ("n1", "outbound", "10.0.1.1", "10.60.1.1", 5, 5, 0.0),                      # peering, same AZ
    ("n1", "outbound", "10.0.1.1", "10.61.1.1", 1, 1, 0.02),                     # peering, other AZ
    ("n1", "outbound", "10.0.1.1", "10.62.1.1", 1, 3, 0.01),                     # peering to Ohio
    ("n1", "outbound", "10.0.1.1", "10.70.1.1", 1, 1, 0.02 + 0.02),              # transit gateway
]


def rules_lake(root: Path):
    lake = open_lake(str(root))
    when = H0 - 5 * MIN
    ts = lambda n: pa.array([when] * n, S.TS)  # noqa: E731
    write_inventory(lake, "nodes", when, pa.table({
        "snapshot_time": ts(3), "name": ["n1", "n2", "n3"], "internal_ip": ["10.1.0.1", "10.1.0.2", "10.2.0.3"],
        "external_ip": [None, "54.0.0.2", None], "zone": ["us-east-1a", "us-east-1b", "us-west-2a"],
        "region": ["us-east-1", "us-east-1", "us-west-2"], "provider": ["aws"] * 3,
        "node_group": ["workers", "workers", "edge"]}))
    pods = [("a-1", "n1", "10.0.1.1"), ("b-1", "n2", "10.0.2.1"), ("c-1", "n3", "10.0.3.1")]
    write_inventory(lake, "pods", when, pa.table({
        "snapshot_time": ts(3), "name": [p[0] for p in pods], "namespace": ["shop"] * 3,
        "node": [p[1] for p in pods], "ip": [p[2] for p in pods], "host_network": [False] * 3,
        "workload_kind": ["Deployment"] * 3, "workload_name": ["a", "b", "c"], "phase": ["Running"] * 3}))
    for kind in ("services", "endpoints"):
        write_inventory(lake, kind, when, pa.table({"snapshot_time": ts(0)}))
    write_raw(lake, "raw/dns", "n1", H0, _dns(H0, "n1", [("10.0.1.1", "api.example.org", "192.0.2.1", H0)]))
    for node in ("n1", "n2"):
        rows = [(d, s, t, t, tx * GIB, rx * GIB, None, None) for n, d, s, t, tx, rx, _ in RULES_FLOWS if n == node]
        write_raw(lake, "raw/flows", node, H0, _flows(H0, node, rows))
    return lake


def test_sql_baseline_prices_nat_cloud_services_regions_and_peering_as_the_job(tmp_path):
    lake = rules_lake(tmp_path / "lake")
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(__import__("json").dumps(RULES_CONFIG))
    ours = job_rows(lake, str(cfg_path))
    by_dst = {(r["src_ip"], r["dst_ip"]): r for r in ours.to_pylist()}
    assert len(by_dst) == len(RULES_FLOWS)
    for _, direction, src, dst, _, _, usd in RULES_FLOWS:
        key = (dst, src) if direction == "inbound" else (src, dst)  # inbound rows are turned around
        assert by_dst[key]["cost_usd"] == pytest.approx(usd, abs=1e-12), (key, by_dst[key]["traffic_class"])
    classes = {r["traffic_class"] for r in by_dst.values()}
    assert {"cloud_api", "cross_region", "internet_egress", "peering", "transit_gateway"} <= classes
    sql = sql_rows(lake, load_config(str(cfg_path)), tmp_path / "sql")
    assert rows_of(sql) == rows_of(ours)
    assert_same_classes(ours, sql)  # rows, bytes and dollars of every class
    sql_by_dst = {(r["src_ip"], r["dst_ip"]): r["cost_usd"] for r in sql.to_pylist()}
    assert sql_by_dst == pytest.approx({k: r["cost_usd"] for k, r in by_dst.items()}, abs=1e-12)


DEST_CFG = {"provider": "gcp", "region": "us-central1", "egress_destinations": [
    {"cidr": "203.0.113.0/24", "destination": "australia"},
    {"domain": "*.cn", "destination": "china"},
    {"cidr": "198.51.100.0/24", "destination": "china"}]}


def dest_lake(root: Path):
    """One GCP node sending to Australia (by CIDR), China (by name) and elsewhere (worldwide)."""
    lake = open_lake(str(root))
    when = H0 - 5 * MIN
    write_inventory(lake, "nodes", when, pa.table({
        "snapshot_time": pa.array([when], S.TS), "name": ["g1"], "internal_ip": ["10.1.0.1"],
        "zone": ["us-central1-a"], "region": ["us-central1"], "provider": ["gcp"]}))
    write_inventory(lake, "pods", when, pa.table({
        "snapshot_time": pa.array([when], S.TS), "name": ["app-1"], "namespace": ["shop"], "node": ["g1"],
        "ip": ["10.0.1.1"], "host_network": [False], "workload_kind": ["Deployment"], "workload_name": ["app"],
        "phase": ["Running"]}))
    for kind in ("services", "endpoints"):
        write_inventory(lake, kind, when, pa.table({"snapshot_time": pa.array([], S.TS)}))
    write_raw(lake, "raw/dns", "g1", H0, _dns(H0, "g1", [("10.0.1.1", "shop.example.cn", "192.0.2.77", H0)]))
    write_raw(lake, "raw/flows", "g1", H0, _flows(H0, "g1", [
        ("outbound", "10.0.1.1", "203.0.113.9", "203.0.113.9", 2 * GIB, 0, "app-1", "shop"),
        ("outbound", "10.0.1.1", "192.0.2.44", "192.0.2.44", 3 * GIB, 0, "app-1", "shop"),
        ("outbound", "10.0.1.1", "192.0.2.77", "192.0.2.77", GIB, 0, "app-1", "shop")]))
    return lake


def test_sql_baseline_prices_gcp_egress_by_destination_as_the_job(tmp_path):
    lake = dest_lake(tmp_path / "lake")
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(__import__("json").dumps(DEST_CFG))
    ours = job_rows(lake, str(cfg_path))
    sql = sql_rows(lake, load_config(str(cfg_path)), tmp_path / "sql")
    want = {"203.0.113.9": 2 * 0.19, "192.0.2.44": 3 * 0.12, "192.0.2.77": 0.23}  # Australia, worldwide, China
    assert {r["dst_ip"]: r["cost_usd"] for r in ours.to_pylist()} == pytest.approx(want)
    assert {r["dst_ip"]: r["cost_usd"] for r in sql.to_pylist()} == pytest.approx(want)
    assert_same_classes(ours, sql)
