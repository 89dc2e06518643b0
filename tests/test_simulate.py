"""The cluster simulator writes a valid, deterministic, self-consistent lake with ground truth."""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from simulator.cluster import build_cluster
from simulator.simulate import (EXPECTED_CONFIG, EXPECTED_FLOWS, SimulationError, expected_file_path,
                           generate_flow_tables, main, simulate)
from lake import schema as S
from lake.storage import open_lake

T0 = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """3 nodes in 2 regions for one hour: every class, churn and IP reuse, ~700 files."""
    root = tmp_path_factory.mktemp("lake")
    summary = simulate(open_lake(str(root)), nodes=3, hours=1, seed=11, regions=2)
    return root, summary


def _files(root: Path, sub: str) -> list[Path]:
    return sorted((root / sub).rglob("*.parquet"))


def _sql(root: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name, sub in [("flows", "raw/flows"), ("dns", "raw/dns"), ("pods", "inventory/pods"),
                      ("endpoints", "inventory/endpoints"), ("nodes", "inventory/nodes"),
                      ("expected", f"{S.EXPECTED_DIR}/flows")]:
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{root}/{sub}/**/*.parquet', "
                    f"hive_partitioning = false)")
    return con


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, seed in ((a, 5), (b, 5), (other, 6)):
        simulate(open_lake(str(root)), nodes=2, hours=1, seed=seed)
    da, db, dc = _digest(a), _digest(b), _digest(other)
    assert len(da) > 300
    assert da == db
    flows_a = {k: v for k, v in da.items() if k.startswith("raw/flows/")}
    flows_c = {k: v for k, v in dc.items() if k.startswith("raw/flows/")}
    assert set(flows_a) == set(flows_c)        # same nodes and windows ...
    assert all(flows_a[k] != flows_c[k] for k in flows_a)   # ... other traffic in every file


# ------------------------------------------------------------------------------ layout


def test_every_file_reads_back_with_its_lake_schema(sim):
    root, summary = sim
    checked = 0
    for sub, schema in [("raw/flows", S.RAW_FLOWS), ("raw/dns", S.RAW_DNS),
                        *[(f"inventory/{k}", S.TABLES[f"inventory/{k}"].schema) for k in S.INVENTORY_KINDS],
                        (f"{S.EXPECTED_DIR}/flows", EXPECTED_FLOWS)]:
        files = _files(root, sub)
        assert files, sub
        for f in files:
            t = pq.read_table(f, partitioning=None)
            assert t.schema.remove_metadata().equals(schema.remove_metadata()), f
            assert t.num_rows > 0, f
            checked += 1
    assert checked == summary.files


def test_one_flow_file_per_node_per_window_named_after_its_content(sim):
    root, summary = sim
    nodes = pq.read_table(_files(root, "inventory/nodes")[0])["name"].to_pylist()
    seen = set()
    for f in _files(root, "raw/flows"):
        kind, node, start = S.parse_raw_file_name(f.name)
        assert kind == "flows"
        assert str(f.relative_to(root)) == S.raw_file_path("raw/flows", node, start)
        t = pq.read_table(f, partitioning=None)
        assert set(t["node"].to_pylist()) == {node}
        assert set(t["window_start"].to_pylist()) == {start}
        assert set(t["window_end"].to_pylist()) == {start + dt.timedelta(seconds=60)}
        assert (root / expected_file_path(node, start)).exists()
        seen.add((node, start))
    assert seen == {(n, T0 + dt.timedelta(minutes=m)) for n in nodes for m in range(60)}
    assert summary.flow_files == len(seen) == summary.expected_files


def test_expected_rows_carry_the_raw_flow_keys_in_the_same_order(sim):
    root, _ = sim
    key = ["window_start", "node", "direction", "src_ip", "dst_ip", "orig_dst_ip", "orig_dst_port", "dst_port", "proto"]
    for f in _files(root, "raw/flows")[::17]:
        _, node, start = S.parse_raw_file_name(f.name)
        raw = pq.read_table(f, columns=key, partitioning=None)
        exp = pq.read_table(root / expected_file_path(node, start), columns=key, partitioning=None)
        assert raw.equals(exp)
        # the agent aggregates by the flow key: one row per key per window
        assert len(set(zip(*[raw[k].to_pylist() for k in key]))) == raw.num_rows


def test_counters_are_positive_and_plausible(sim):
    con = _sql(sim[0])
    bad = con.execute("""SELECT count(*) FROM flows WHERE tx_bytes <= 0 OR rx_bytes <= 0
        OR tx_packets < 1 OR rx_packets < 1 OR connections < 1
        OR tx_bytes < tx_packets OR tx_bytes > tx_packets * 65535""").fetchone()[0]
    assert bad == 0
    # heavy-tailed: the biggest rows carry far more than the median row
    p50, p999 = con.execute("SELECT quantile_cont(tx_bytes, 0.5), quantile_cont(tx_bytes, 0.999) FROM flows").fetchone()
    assert p999 > 100 * p50
    assert con.execute("SELECT sum(tx_bytes) FROM flows").fetchone()[0] == sim[1].tx_bytes


def test_ip_addresses_are_canonical_and_both_families_present(sim):
    con = _sql(sim[0])
    ips = [r[0] for r in con.execute("SELECT DISTINCT src_ip FROM flows UNION SELECT DISTINCT dst_ip FROM flows "
                                     "UNION SELECT DISTINCT orig_dst_ip FROM flows").fetchall()]
    assert all(ipaddress.ip_address(ip).compressed == ip for ip in ips)
    assert {ipaddress.ip_address(ip).version for ip in ips} == {4, 6}


# --------------------------------------------------------------------------- inventory


def test_inventory_snapshots_every_minute_on_the_minute(sim):
    root, _ = sim
    for kind in S.INVENTORY_KINDS:
        files = _files(root, f"inventory/{kind}")
        times = []
        for f in files:
            t = pq.read_table(f, columns=["snapshot_time"], partitioning=None)
            (ts,) = set(t["snapshot_time"].to_pylist())
            assert ts.second == 0 and ts.microsecond == 0
            assert str(f.relative_to(root)) == S.inventory_file_path(kind, ts)
            times.append(ts)
        # one per minute from the first window's start to the last window's end
        assert times == [T0 + dt.timedelta(minutes=m) for m in range(61)], kind


def test_inventory_snapshots_are_consistent_with_the_pods_alive(sim):
    con = _sql(sim[0])
    # no two pods with their own IPs share an address at one instant
    assert con.execute("""SELECT count(*) FROM (SELECT snapshot_time, ip FROM pods WHERE NOT host_network
        GROUP BY ALL HAVING count(DISTINCT uid) > 1)""").fetchone()[0] == 0
    # hostNetwork pods carry their node's IP
    assert con.execute("""SELECT count(*) FROM pods p JOIN nodes n ON p.node = n.name
        AND p.snapshot_time = n.snapshot_time WHERE p.host_network AND p.ip <> n.internal_ip""").fetchone()[0] == 0
    # every pod endpoint is a pod of the same snapshot, with that IP, on that node
    assert con.execute("""SELECT count(*) FROM endpoints e LEFT JOIN pods p ON p.snapshot_time = e.snapshot_time
        AND p.name = e.pod AND p.ip = e.ip AND p.node = e.node WHERE e.pod IS NOT NULL AND p.name IS NULL""").fetchone()[0] == 0
    # the control plane is outside the cluster: endpoints of default/kubernetes with no pod
    cp = con.execute("""SELECT DISTINCT ip FROM endpoints WHERE service = 'kubernetes' AND namespace = 'default'
        AND pod IS NULL ORDER BY ip""").fetchall()
    assert cp == [("10.0.250.10",), ("10.0.250.11",)]
    kinds = {r[0] for r in con.execute("SELECT DISTINCT workload_kind FROM pods").fetchall()}
    assert kinds == {"Deployment", "StatefulSet", "DaemonSet", "CronJob"}


def test_pod_ips_are_reused_by_different_pods_and_expectations_follow_the_snapshot_in_force(sim):
    con = _sql(sim[0])
    reused = con.execute("""SELECT ip, count(DISTINCT uid) FROM pods WHERE NOT host_network
        GROUP BY ip HAVING count(DISTINCT uid) > 1""").fetchall()
    assert len(reused) >= 5
    # Reused IPs carry traffic of more than one pod in the flows themselves ...
    assert con.execute("""SELECT count(*) FROM (SELECT src_ip FROM expected WHERE src_pod IS NOT NULL
        AND direction = 'outbound' GROUP BY src_ip HAVING count(DISTINCT src_pod) > 1)""").fetchone()[0] >= 3
    # ... and every expected pod is the one the inventory shows at that IP at the window's end
    # (the as-of snapshot), for sources and for destinations.
    wrong_src = con.execute("""SELECT count(*) FROM expected x LEFT JOIN pods p
        ON p.snapshot_time = x.window_start + INTERVAL 60 SECOND AND NOT p.host_network
        AND p.ip = CASE WHEN x.direction = 'outbound' THEN x.src_ip ELSE x.dst_ip END
        WHERE x.src_pod IS NOT NULL AND (p.name IS NULL OR p.name <> x.src_pod OR p.namespace <> x.src_namespace)""").fetchone()[0]
    wrong_dst = con.execute("""SELECT count(*) FROM expected x LEFT JOIN pods p
        ON p.snapshot_time = x.window_start + INTERVAL 60 SECOND AND NOT p.host_network AND p.ip = x.dst_ip
        WHERE x.dst_kind = 'pod' AND (p.name IS NULL OR p.name <> x.dst_name)""").fetchone()[0]
    assert (wrong_src, wrong_dst) == (0, 0)
    # the pod must also be alive at the window's start (it did send in the window)
    assert con.execute("""SELECT count(*) FROM expected x LEFT JOIN pods p
        ON p.snapshot_time = x.window_start AND p.ip = x.src_ip AND p.name = x.src_pod
        WHERE x.direction = 'outbound' AND x.src_pod IS NOT NULL AND p.name IS NULL""").fetchone()[0] == 0


# ------------------------------------------------------------------------- ground truth


def test_every_traffic_class_and_destination_kind_is_expected(sim):
    root, summary = sim
    con = _sql(root)
    classes = {r[0] for r in con.execute("SELECT DISTINCT traffic_class FROM expected WHERE keep").fetchall()}
    assert classes == set(S.TRAFFIC_CLASSES)
    kinds = {r[0] for r in con.execute("SELECT DISTINCT dst_kind FROM expected WHERE keep").fetchall()}
    assert kinds == set(S.DST_KINDS)
    assert summary.classes == dict(con.execute(
        "SELECT traffic_class, count(*) FROM expected WHERE keep GROUP BY ALL ORDER BY 1").fetchall())
    # the peering class rests on a user rule, written beside the ground truth
    config = json.loads((root / EXPECTED_CONFIG).read_text())
    assert config["rules"] == [{"cidr": "10.60.0.0/16", "class": "peering", "name": "analytics-vpc"},
                               {"cidr": "10.70.0.0/16", "class": "transit_gateway", "name": "shared-services-tgw"}]
    assert config["nat_gateways"] == [{"name": "nat-workers", "node_groups": ["workers"]}]
    peered = con.execute("SELECT DISTINCT dst_ip FROM expected WHERE traffic_class = 'peering'").fetchall()
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.60.0.0/16") for (ip,) in peered)


def test_cost_cases_nat_cloud_services_and_relayed_hops(sim):
    """The cases pricing distinguishes are all generated: NAT and non-NAT nodes, S3 in and out
    of the source's region (gateway endpoint in region), and the NodePort second hop."""
    root, _ = sim
    con = _sql(root)
    nodes = dict(con.execute("SELECT DISTINCT name, external_ip IS NOT NULL FROM read_parquet("
                             f"'{root}/inventory/nodes/*/*.parquet')").fetchall())
    nat = con.execute("SELECT node, nat_gateway, traffic_class, dst_cloud_service, direction, count(*) FROM expected "
                      "WHERE keep GROUP BY ALL").fetchall()
    # NAT only on nodes without a public IP, never inbound, never to S3 of the region (gateway endpoint)
    assert {r[1] for r in nat} == {None, "nat-workers"}
    for node, gw, cls, svc, direction, _ in nat:
        if gw:
            assert not nodes[node] and direction == "outbound" and cls in ("internet_egress", "cloud_api", "cross_region")
            assert not (svc == "S3" and cls == "cloud_api")
    got = {(cls, svc) for _, _, cls, svc, _, _ in nat if svc}
    assert {("cloud_api", "S3"), ("cross_region", "S3"), ("cloud_api", "EC2")} <= got
    # relayed NodePort connections: the client's row on the relay node, the hop on the pod's node
    hops = con.execute("""SELECT count(*), count(DISTINCT traffic_class) FROM expected
                          WHERE keep AND direction = 'inbound' AND dst_kind = 'node'""").fetchone()
    assert hops[0] > 0
    relayed = con.execute("SELECT count(*) FROM expected WHERE keep AND orig_dst_port = 30080").fetchone()[0]
    assert relayed >= hops[0]


def test_dropped_rows_are_exactly_the_inbound_duplicates_of_cluster_traffic(sim):
    con = _sql(sim[0])
    # every keep=false row is inbound, from a pod or node IP of the window's snapshot ...
    assert con.execute("""SELECT count(*) FROM expected x WHERE NOT keep AND (direction <> 'inbound'
        OR NOT EXISTS (SELECT 1 FROM pods p WHERE p.snapshot_time = x.window_start + INTERVAL 60 SECOND AND p.ip = x.src_ip)
        OR traffic_class IS NOT NULL)""").fetchone()[0] == 0
    # ... and duplicates an outbound row of another node in the same window with the same bytes
    unmatched = con.execute("""SELECT count(*) FROM flows i JOIN expected x USING (window_start, node, direction,
        src_ip, dst_ip, orig_dst_ip, orig_dst_port, dst_port, proto) WHERE NOT x.keep AND NOT EXISTS (
        SELECT 1 FROM flows o WHERE o.direction = 'outbound' AND o.window_start = i.window_start AND o.node <> i.node
        AND o.src_ip = i.src_ip AND o.dst_ip = i.dst_ip AND o.proto = i.proto AND o.dst_port = i.dst_port)""").fetchone()[0]
    assert unmatched == 0
    # inbound rows that are kept come from the internet, to the LoadBalancer-backed frontend, or
    # are the relayed hop of a NodePort connection (from the relay node's address)
    kept = con.execute("""SELECT DISTINCT traffic_class, dst_kind, src_namespace, regexp_extract(src_pod, '^[a-z]+')
        FROM expected WHERE keep AND direction = 'inbound' ORDER BY ALL""").fetchall()
    assert kept == [("cross_zone", "node", "shop", "frontend"), ("internet_egress", "external", "shop", "frontend"),
                    ("same_zone", "node", "shop", "frontend")] or kept == [
        ("cross_zone", "node", "shop", "frontend"), ("internet_egress", "external", "shop", "frontend")]
    assert con.execute("SELECT count(*) FROM expected WHERE NOT keep").fetchone()[0] == sim[1].dropped_rows > 0


def test_services_are_dnated_to_backends_and_node_traffic_has_no_pod(sim):
    con = _sql(sim[0])
    # service rows: dialed a ClusterIP (10.96/12 or fd00:10:96::/112), landed on a backend pod elsewhere
    rows = con.execute("""SELECT orig_dst_ip, dst_ip, traffic_class FROM expected
        WHERE keep AND dst_kind = 'service' AND dst_name NOT IN ('kubernetes', 'legacy-api')""").fetchall()
    assert rows and all(o != d for o, d, _ in rows)
    assert {c for _, _, c in rows} >= {"same_zone", "cross_zone", "cross_region"}
    assert any(":" in o for o, _, _ in rows)        # the dual-stack service over IPv6
    # traffic from node IPs (kubelet, hostNetwork DaemonSets) is attributed to no pod (inbound
    # rows from a node's address are relayed hops: their cluster side is the pod they reach)
    assert con.execute("""SELECT count(*) FROM expected x JOIN nodes n ON n.internal_ip = x.src_ip
        AND n.snapshot_time = x.window_start WHERE x.keep AND x.direction = 'outbound'
        AND x.src_pod IS NOT NULL""").fetchone()[0] == 0
    assert con.execute("""SELECT count(*) FROM expected x JOIN nodes n ON n.internal_ip = x.src_ip
        AND n.snapshot_time = x.window_start WHERE x.keep""").fetchone()[0] > 0
    # the raw rows name only the reporting node's own pods (the agent's node-filtered index)
    assert con.execute("""SELECT count(*) FROM flows f LEFT JOIN pods p ON p.snapshot_time = f.window_start
        + INTERVAL 60 SECOND AND p.name = f.src_pod WHERE f.src_pod IS NOT NULL AND p.node <> f.node""").fetchone()[0] == 0


def test_every_name_used_by_a_flow_was_answered_to_that_node_before(sim):
    root, _ = sim
    con = _sql(root)
    c = build_cluster(3, 1, 11, regions=2)
    named = {c.codes.strings[ip]: c.codes.strings[n] for g in c.outside.values()
             for ip, n in zip(g.ips, g.names) if n is not None}
    con.execute("CREATE TABLE named(ip VARCHAR, domain VARCHAR)")
    con.executemany("INSERT INTO named VALUES (?, ?)", list(named.items()))
    # (the control plane is also reached through the kubernetes ClusterIP, without a lookup)
    used = con.execute("""SELECT count(*), count(DISTINCT n.domain) FROM expected x JOIN named n ON n.ip = x.dst_ip
        WHERE x.keep AND x.direction = 'outbound' AND x.dst_kind <> 'service'""").fetchone()
    assert used[0] > 100 and used[1] >= 8
    missing = con.execute("""SELECT count(*) FROM expected x JOIN named n ON n.ip = x.dst_ip
        WHERE x.keep AND x.direction = 'outbound' AND x.dst_kind <> 'service' AND NOT EXISTS (SELECT 1 FROM dns d
          WHERE d.ip = x.dst_ip AND d.domain = n.domain AND d.node = x.node
          AND d.seen_at <= x.window_start + INTERVAL 60 SECOND
          AND d.seen_at >= x.window_start + INTERVAL 60 SECOND - INTERVAL 24 HOUR)""").fetchone()[0]
    assert missing == 0
    # answers are consistent: one name per IP, realistic TTLs, seen inside their window
    assert con.execute("SELECT count(*) FROM (SELECT ip FROM dns GROUP BY ip HAVING count(DISTINCT domain) > 1)").fetchone()[0] == 0
    assert con.execute("""SELECT count(*) FROM dns WHERE ttl_s NOT BETWEEN 1 AND 86400
        OR seen_at < window_start OR seen_at >= window_end""").fetchone()[0] == 0
    # the resolving client is a pod (or hostNetwork node) of the file's node
    assert con.execute("""SELECT count(*) FROM dns d LEFT JOIN pods p ON p.snapshot_time = d.window_start
        + INTERVAL 60 SECOND AND p.ip = d.client_ip AND p.node = d.node WHERE p.name IS NULL""").fetchone()[0] == 0
    # outside IPs reached without DNS (on-premises, IMDS) have no answers
    assert con.execute("SELECT count(*) FROM dns WHERE ip IN ('10.50.3.14', '169.254.169.254')").fetchone()[0] == 0


# ------------------------------------------------------------------------- APIs and CLI


def test_flows_per_window_scales_rows_per_node(tmp_path):
    windows = list(generate_flow_tables(nodes=3, hours=1, seed=3, flows_per_node_window=600))[:5]
    for wt in windows:
        assert wt.flows.schema.equals(S.RAW_FLOWS)
        for node, (a, b) in wt.flow_bounds.items():
            kept = wt.expected.slice(a, b - a).filter(wt.expected.slice(a, b - a)["keep"]).num_rows
            assert 450 <= kept <= 750, (node, kept)


def test_cli_writes_a_lake_and_bad_input_is_one_error_line(tmp_path, capsys):
    lake = tmp_path / "lake"
    assert main(["--lake", str(lake), "--nodes", "1", "--hours", "1", "--seed", "2",
                 "--start", "2026-02-01T10:00Z", "--flows-per-window", "20"]) == 0
    out = capsys.readouterr().out
    assert "flow rows" in out and "internet_egress" in out
    assert (lake / "raw/flows/date=2026-02-01/hour=10").is_dir()
    assert main(["--lake", str(lake), "--nodes", "0", "--hours", "1", "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert main(["--lake", str(lake), "--nodes", "1", "--hours", "1", "--seed", "2", "--start", "yesterday"]) == 2
    assert "invalid --start" in capsys.readouterr().err


def test_bad_arguments_raise_a_clear_error(tmp_path):
    with pytest.raises(SimulationError, match="regions"):
        simulate(open_lake(str(tmp_path)), nodes=2, hours=1, seed=1, regions=3)


@pytest.mark.slow
def test_simulates_into_s3(moto_s3, tmp_path):
    """Against a real S3 endpoint (moto_server), through --s3-endpoint."""
    assert main(["--lake", "s3://simlake/x", "--s3-endpoint", moto_s3.endpoint, "--nodes", "1",
                 "--hours", "1", "--seed", "4", "--flows-per-window", "10"]) == 0
    lake = open_lake("s3://simlake/x", s3_endpoint=moto_s3.endpoint)
    assert len(lake.list_files("raw/flows")) == 60
    assert len(lake.list_files("inventory/pods")) == 61
    config = json.loads(lake.read_bytes(EXPECTED_CONFIG))
    assert config["rules"][0]["class"] == "peering"
    # the same seed into a local directory gives the same bytes
    local = tmp_path / "l"
    main(["--lake", str(local), "--nodes", "1", "--hours", "1", "--seed", "4", "--flows-per-window", "10"])
    rel = S.raw_file_path("raw/flows", lake.list_files("raw/flows")[0].path.split("node=")[1].split("/")[0], T0)
    assert lake.read_bytes(rel) == (local / rel).read_bytes()
