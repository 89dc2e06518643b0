"""End to end: a simulated lake, the cost job on local Ray through `netmon-jobs cost`, checked
against the simulator's ground truth row by row; the same run against a moto_server S3 bucket;
DuckDB SQL over the output tables giving the same totals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from simulator.simulate import simulate
from lake import schema as S
from lake.storage import open_lake

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_RANGES = os.path.join(REPO, "jobs", "fixtures")
SEED, NODES, HOURS, REGIONS = 11, 4, 2, 2
GB = 2 ** 30
RAW_KEY = ["window_start", "node", "direction", "src_ip", "dst_ip", "orig_dst_ip", "orig_dst_port", "dst_port", "proto"]
COST_KEY = ["window_start", "src_node", "direction", "src_ip", "dst_ip", "dst_port", "proto"]


def cost_cli(lake_url: str, config: str, *extra: str, env: dict | None = None):
    r = subprocess.run(
        [sys.executable, "-m", "jobs", "cost", "--lake", lake_url, "--config", config,
         "--ip-ranges", FIXTURE_RANGES, *extra],
        cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"cost job failed:\n{r.stdout}\n{r.stderr[-4000:]}"
    return r


def read_all(lake, table: str) -> pa.Table:
    parts = [lake.read_table(lake.rel(i.path)) for i in lake.list_files(table)]
    return pa.concat_tables(parts, promote_options="permissive") if parts else None


def write_config(lake, path) -> str:
    path.write_bytes(lake.read_bytes("_expected/job-config.json"))
    return str(path)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    lake = open_lake(str(root / "lake"))
    sim = simulate(lake, NODES, HOURS, SEED, regions=REGIONS)
    cfg = write_config(lake, root / "job-config.json")
    r = cost_cli(lake.url, cfg)
    return lake, sim, r, cfg


def expected_in_cost_space(lake) -> pa.Table:
    """Ground truth rows the job must keep, keyed as cost rows are (inbound rows turned around)
    and carrying the raw row's bytes (swapped for turned rows)."""
    raw = read_all(lake, "raw/flows")
    exp = read_all(lake, "_expected/flows")
    assert raw.num_rows == exp.num_rows
    raw = raw.select(RAW_KEY + ["tx_bytes", "rx_bytes"])
    j = exp.join(raw, keys=RAW_KEY, join_type="inner")
    assert j.num_rows == exp.num_rows, "every ground-truth row has its raw row"
    j = j.filter(pc.field("keep"))
    inbound = pc.equal(j["direction"], "inbound")
    return pa.table({
        "window_start": j["window_start"],
        "src_node": j["node"],
        "direction": j["direction"],
        "src_ip": pc.if_else(inbound, j["dst_ip"], j["src_ip"]),
        "dst_ip": pc.if_else(inbound, j["src_ip"], j["dst_ip"]),
        "dst_port": pc.if_else(inbound, j["orig_dst_port"], j["dst_port"]),
        "proto": j["proto"],
        "traffic_class": j["traffic_class"],
        "dst_kind": j["dst_kind"],
        "src_pod": j["src_pod"],
        "src_namespace": j["src_namespace"],
        "dst_name": j["dst_name"],
        "dst_namespace": j["dst_namespace"],
        "nat_gateway": j["nat_gateway"],
        "dst_cloud_service": j["dst_cloud_service"],
        "tx_bytes": pc.if_else(inbound, j["rx_bytes"], j["tx_bytes"]),
        "rx_bytes": pc.if_else(inbound, j["tx_bytes"], j["rx_bytes"]),
    })


def multiset_diff(expected: pa.Table, actual: pa.Table, cols: list[str]) -> tuple[Counter, Counter]:
    """Rows (key + cols) present in one table and not the other, as counters; the cost key is
    not unique (a ClusterIP and a direct dial can share it), so compare multisets."""
    def rows(t):
        sel = t.select(COST_KEY + cols)
        return Counter(tuple(r.values()) for r in sel.to_pylist())
    e, a = rows(expected), rows(actual)
    return e - a, a - e


def describe(missing: Counter, extra: Counter, cols: list[str]) -> str:
    n = len(COST_KEY)
    conf = Counter()
    by_key = {}
    for r, c in extra.items():
        by_key.setdefault(r[:n], []).append(r[n:])
    for r, c in missing.items():
        got = by_key.get(r[:n], [("<no row>",)])
        conf[(r[n:], got[0])] += c
    lines = [f"{sum(missing.values())} expected row(s) not matched, {sum(extra.values())} unexpected; "
             f"(expected {cols}) -> (got) counts:"]
    lines += [f"  {e} -> {g}: {c}" for (e, g), c in conf.most_common(15)]
    return "\n".join(lines)


def test_summary_and_progress(local_run):
    lake, sim, r, _ = local_run
    assert f"{HOURS} hour(s) computed" in r.stdout
    assert "by class:" in r.stdout and "top namespaces by cost:" in r.stdout
    assert "files quarantined: 0" in r.stdout
    assert "hours written" in r.stderr and "Traceback" not in r.stderr


def test_every_row_has_the_expected_class_and_destination_kind(local_run):
    lake = local_run[0]
    exp = expected_in_cost_space(lake)
    costs = read_all(lake, "costs/flows")
    assert costs.num_rows == exp.num_rows
    cols = ["traffic_class", "dst_kind", "tx_bytes", "rx_bytes"]
    missing, extra = multiset_diff(exp, costs, cols)
    assert not missing and not extra, describe(missing, extra, cols)


def test_every_row_has_the_expected_names(local_run):
    lake = local_run[0]
    exp = expected_in_cost_space(lake)
    costs = read_all(lake, "costs/flows")
    cols = ["src_pod", "src_namespace", "dst_name", "dst_namespace"]
    missing, extra = multiset_diff(exp, costs, cols)
    assert not missing and not extra, describe(missing, extra, cols)


def test_bytes_are_conserved(local_run):
    lake, sim, _, _ = local_run
    exp = expected_in_cost_space(lake)
    costs = read_all(lake, "costs/flows")
    total = lambda t, c: pc.sum(t[c]).as_py()  # noqa: E731
    assert total(costs, "tx_bytes") + total(costs, "rx_bytes") == total(exp, "tx_bytes") + total(exp, "rx_bytes")
    assert total(costs, "tx_bytes") == total(exp, "tx_bytes")
    assert Counter(costs["traffic_class"].to_pylist()) == Counter(sim.classes)


#: AWS list prices the simulated cluster (us-east-1, us-west-2) is billed at, per GB of 2^30 bytes
CROSS_AZ, INTER_REGION, NAT, ENDPOINT, TGW, REGIONAL_PUBLIC, EGRESS, FREE_GB = 0.01, 0.02, 0.045, 0.01, 0.02, 0.01, 0.09, 100


def hand_cost(r: dict) -> tuple[float, float]:
    """(cost_usd before the egress tiers, dst_cost_usd) of a ground-truth row, from the price list."""
    gb_tx, gb_rx = r["tx_bytes"] / GB, r["rx_bytes"] / GB
    both = gb_tx + gb_rx
    cls = r["traffic_class"]
    nat = both * NAT if r["nat_gateway"] else 0.0
    if cls == "cross_zone":             # out of one AZ, into the other, each side for its end
        return both * 2 * CROSS_AZ, both * CROSS_AZ
    if cls == "cross_region":           # each region's transfer out, us-east-1 <-> us-west-2
        return both * INTER_REGION + nat, gb_rx * INTER_REGION
    if cls == "cloud_api":              # S3 (and private Google APIs) free in region; EC2 public IPs regional
        return (both * REGIONAL_PUBLIC if r["dst_cloud_service"] == "EC2" else 0.0) + nat, 0.0
    if cls == "private_link":           # interface endpoint processing
        return both * ENDPOINT, 0.0
    if cls == "peering":                # the rule names no zone: across AZs, our side both ways
        return both * CROSS_AZ, 0.0
    if cls == "transit_gateway":        # TGW processing of what we send, plus the cross-AZ transfer
        return gb_tx * TGW + both * CROSS_AZ, 0.0
    if cls == "internet_egress":        # NAT here; the tiered transfer is checked in total
        return nat, 0.0
    return 0.0, 0.0                     # same_zone, imds, k8s_control_plane, load_balancer, ...


def test_costs_follow_the_rate_card_row_by_row(local_run):
    """Every cost row's dollars, both sides, equal the price list applied by hand to the ground
    truth (class, bytes, NAT gateway, cloud service); internet egress over the month: the
    account's first 100 GB free across both regions, then $0.09/GB."""
    lake = local_run[0]
    exp = expected_in_cost_space(lake).to_pylist()
    costs = read_all(lake, "costs/flows")
    key = lambda r: tuple(r[k] for k in COST_KEY) + (r["traffic_class"], r["tx_bytes"], r["rx_bytes"])  # noqa: E731
    want, got = Counter(), Counter()
    egress_tx = 0
    for r in exp:
        c, d = hand_cost(r)
        want[key(r) + (round(c, 9), round(d, 9))] += 1
        egress_tx += r["tx_bytes"] if r["traffic_class"] == "internet_egress" else 0
    rows = costs.to_pylist()
    tiered = 0.0
    for r in rows:
        c = r["cost_usd"]
        if r["traffic_class"] == "internet_egress":   # take out the tiered part, checked below
            c -= r["cost_usd"] - r["processing_cost_usd"]
            tiered += r["cost_usd"] - r["processing_cost_usd"]
        got[key(r) + (round(c, 9), round(r["dst_cost_usd"], 9))] += 1
    missing, extra = want - got, got - want
    assert not missing and not extra, (list(missing.items())[:5], list(extra.items())[:5])
    assert tiered == pytest.approx(max(egress_tx / GB - FREE_GB, 0) * EGRESS, abs=1e-9)
    classes = Counter(r["traffic_class"] for r in rows)
    priced = {cls for cls, in [(r["traffic_class"],) for r in rows if r["cost_usd"] > 0]}
    # the dollars above are not vacuous: each billed class occurs and costs something
    assert {"cross_zone", "cross_region", "cloud_api", "private_link", "peering", "transit_gateway",
            "internet_egress"} <= priced, classes
    nat_rows = [r for r in rows if r["nat_gateway"]]
    assert nat_rows and all(r["processing_usage_type"] == "USE1-NatGateway-Bytes" or
                            r["processing_usage_type"] == "USW2-NatGateway-Bytes" for r in nat_rows)
    hops = [r for r in rows if r["direction"] == "inbound" and r["dst_kind"] == "node"]
    assert hops and all(r["traffic_class"] in ("cross_zone", "same_zone") for r in hops)


def test_usage_types_and_focus_reconcile_in_one_group_by(local_run):
    """The bill's language: summing cost rows by usage type (both sides and processing) equals
    the FOCUS export summed by x_UsageType, through DuckDB on the lake's files."""
    lake = local_run[0]
    root = lake.root
    con = duckdb.connect()
    flows = f"read_parquet('{root}/costs/flows/*/*/*.parquet', hive_partitioning = true)"
    focus = f"read_parquet('{root}/costs/focus/*/*.parquet', hive_partitioning = true)"
    by_flows = dict(con.execute(f"""
        SELECT u, sum(c) FROM (
          SELECT usage_type u, cost_usd - dst_cost_usd - processing_cost_usd c FROM {flows}
          UNION ALL SELECT dst_usage_type, dst_cost_usd FROM {flows}
          UNION ALL SELECT processing_usage_type, processing_cost_usd FROM {flows})
        WHERE u IS NOT NULL GROUP BY u""").fetchall())
    by_focus = dict(con.execute(f"SELECT x_UsageType, sum(BilledCost) FROM {focus} WHERE x_UsageType IS NOT NULL "
                                "GROUP BY 1").fetchall())
    assert set(by_flows) == set(by_focus)
    for u in by_flows:
        assert by_focus[u] == pytest.approx(by_flows[u], abs=1e-9), u
    assert {"USE1-DataTransfer-Regional-Bytes", "USE1-USW2-AWS-Out-Bytes", "USW2-USE1-AWS-Out-Bytes",
            "USE1-DataTransfer-Out-Bytes", "USE1-NatGateway-Bytes", "USE1-VpcEndpoint-Bytes",
            "USE1-TransitGateway-Bytes"} <= set(by_focus)
    total_f, total_c = con.execute(f"SELECT (SELECT sum(BilledCost) FROM {focus}), (SELECT sum(cost_usd) FROM {flows})").fetchone()
    assert total_f == pytest.approx(total_c)
    cats = con.execute(f"SELECT DISTINCT ChargeCategory, ServiceCategory, ProviderName FROM {focus}").fetchall()
    assert cats == [("Usage", "Networking", "AWS")]


def test_rollups_reconcile(local_run):
    lake = local_run[0]
    costs = read_all(lake, "costs/flows")
    ns = read_all(lake, "costs/namespace_hourly")
    wd = read_all(lake, "costs/workload_daily")
    for t in (ns, wd):
        for c in ("tx_bytes", "rx_bytes", "flows"):
            want = costs.num_rows if c == "flows" else pc.sum(costs[c]).as_py()
            assert pc.sum(t[c]).as_py() == want, c
        assert pc.sum(t["cost_usd"]).as_py() == pytest.approx(pc.sum(costs["cost_usd"]).as_py())
    # per namespace and class, the hourly rollup equals the cost rows
    key = lambda t, c: {(r[c], r["traffic_class"]): r["tx_bytes_sum"]  # noqa: E731
                        for r in t.group_by([c, "traffic_class"]).aggregate([("tx_bytes", "sum")]).to_pylist()
                        if r["tx_bytes_sum"]}
    assert key(ns, "namespace") == key(costs, "src_namespace")
    # both sides: a namespace is charged its rows' source side and its destination side of others'
    charged = Counter()
    for r in costs.to_pylist():
        inside = r["dst_kind"] != "external"
        d = r["dst_cost_usd"] if inside else 0.0
        charged[r["src_namespace"]] += r["cost_usd"] - d
        charged[r["dst_namespace"] if inside else r["src_namespace"]] += d
    got = Counter()
    for r in ns.to_pylist():
        got[r["namespace"]] += r["cost_usd"]
    assert set(got) <= set(charged)
    for k, v in charged.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k
    served = sum(r["dst_side_cost_usd"] for r in ns.to_pylist())
    assert served > 0   # some namespace is charged as the destination (e.g. cross-zone servers)


def test_duckdb_sql_over_the_output_gives_the_same_totals(local_run):
    lake = local_run[0]
    costs = read_all(lake, "costs/flows")
    con = duckdb.connect()
    root = lake.root
    by_class = dict((r[0], r[1:]) for r in con.execute(f"""
        SELECT traffic_class, sum(tx_bytes), sum(rx_bytes), sum(cost_usd), count(*)
        FROM read_parquet('{root}/costs/flows/*/*/*.parquet', hive_partitioning = true)
        GROUP BY traffic_class""").fetchall())
    want = {r["traffic_class"]: r for r in costs.group_by("traffic_class").aggregate(
        [("tx_bytes", "sum"), ("rx_bytes", "sum"), ("cost_usd", "sum"), ("tx_bytes", "count")]).to_pylist()}
    assert set(by_class) == set(want)
    for k, (tx, rx, cost, n) in by_class.items():
        assert (tx, rx, n) == (want[k]["tx_bytes_sum"], want[k]["rx_bytes_sum"], want[k]["tx_bytes_count"])
        assert cost == pytest.approx(want[k]["cost_usd_sum"])
    # the hive partition columns agree with the rows' windows
    bad = con.execute(f"""
        SELECT count(*) FROM read_parquet('{root}/costs/flows/*/*/*.parquet', hive_partitioning = true)
        WHERE strftime(window_start AT TIME ZONE 'UTC', '%Y-%m-%d') != CAST(date AS VARCHAR)
           OR CAST(hour AS INTEGER) != hour(window_start AT TIME ZONE 'UTC')""").fetchone()[0]
    assert bad == 0
    # and the rollup table queried by SQL matches the flow table queried by SQL
    rows = con.execute(f"""
        WITH d AS (SELECT *, CASE WHEN dst_kind <> 'external' THEN dst_cost_usd ELSE 0 END AS served
                   FROM read_parquet('{root}/costs/flows/*/*/*.parquet', hive_partitioning = true)),
             f AS (SELECT ns, sum(c) c, sum(b) b FROM (
                     SELECT coalesce(src_namespace, '') ns, cost_usd - served c, tx_bytes + rx_bytes b FROM d
                     UNION ALL SELECT coalesce(dst_namespace, ''), served, 0 FROM d WHERE served > 0)
                   GROUP BY 1),
             r AS (SELECT coalesce(namespace, '') ns, sum(cost_usd) c, sum(tx_bytes + rx_bytes) b
                   FROM read_parquet('{root}/costs/namespace_hourly/*/*.parquet', hive_partitioning = true) GROUP BY 1)
        SELECT f.ns, f.b, r.b, f.c, r.c FROM f FULL JOIN r USING (ns)""").fetchall()
    assert rows
    for ns, fb, rb, fc, rc in rows:
        assert fb == rb, ns
        assert fc == pytest.approx(rc), ns


def test_same_run_against_s3(local_run, moto_s3, tmp_path):
    local, _, _, cfg = local_run
    url = "s3://netmon-test/lake"
    lake = open_lake(url, s3_endpoint=moto_s3.endpoint)
    simulate(lake, NODES, HOURS, SEED, regions=REGIONS)
    r = cost_cli(url, cfg, "--s3-endpoint", moto_s3.endpoint)
    assert f"{HOURS} hour(s) computed" in r.stdout
    for table in ("costs/flows", "costs/namespace_hourly", "costs/workload_daily", "costs/focus"):
        ours = sorted(lake.rel(i.path) for i in lake.list_files(table))
        assert ours == sorted(local.rel(i.path) for i in local.list_files(table)), table
        for rel in ours:
            assert lake.read_table(rel).equals(local.read_table(rel)), rel
    assert len(lake.list_files("_state/hours", suffix=".json")) == HOURS
    # incremental on S3 too: nothing new, nothing computed
    r = cost_cli(url, cfg, "--s3-endpoint", moto_s3.endpoint, "--quiet")
    assert "0 hour(s) computed" in r.stdout


def test_ground_truth_is_not_trivial(local_run):
    """Guards the checks above: the simulated hours exercise NAT'ed services, IP reuse, node
    traffic, several classes and inbound duplicates."""
    lake, sim, _, _ = local_run
    exp = read_all(lake, "_expected/flows")
    kinds = set(exp.filter(pc.field("keep"))["dst_kind"].to_pylist())
    assert {"pod", "service", "node", "external"} <= kinds
    assert len(sim.classes) >= 6 and sim.dropped_rows > 0
    assert np.count_nonzero(~exp["keep"].to_numpy(zero_copy_only=False)) == sim.dropped_rows
    assert json.loads(lake.read_bytes("_expected/job-config.json"))["rules"]
