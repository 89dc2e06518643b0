"""Resolution stage: as-of inventory, NAT, IP reuse, hostNetwork, inbound orientation, DNS."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from jobs.config import JobConfig
from jobs.pipeline import cost_flows
from lake import schema as S
from test_jobs_stages_world import GB, World, at, rows_by, three_zone_world


def test_output_is_exactly_the_cost_contract():
    w = three_zone_world().snapshot(0)
    w.flow("10.0.1.21", "10.0.2.21", node="n-a", tx=1, rx=2)
    costs = w.costs()
    assert costs.schema.equals(S.COST_FLOWS, check_metadata=True)


def test_nat_clusterip_to_backend_in_other_zone():
    # web-1 (us-east-1a) dials the api ClusterIP; conntrack's reply tuple says the backend
    # api-1 (us-east-1b) answered: service attribution from the pre-NAT address, zone from the
    # post-NAT backend.
    w = three_zone_world().snapshot(0)
    w.flow("10.0.1.21", "10.0.2.21", orig="172.20.0.10", orig_port=80, port=8080, node="n-a",
           tx=3 * GB, rx=1 * GB, src_pod="web-1", src_ns="shop")
    r = rows_by(w.costs())[("10.0.1.21", "10.0.2.21")]
    assert r["dst_kind"] == "service"
    assert (r["dst_service"], r["dst_name"], r["dst_namespace"]) == ("api", "api", "shop")
    assert (r["dst_pod"], r["dst_node"], r["dst_zone"]) == ("api-1", "n-b", "us-east-1b")
    assert r["dst_port"] == 8080
    assert r["traffic_class"] == "cross_zone"
    # AWS bills cross-AZ on both sides: (3 + 1) GB * $0.01 * 2 sides
    assert r["cost_usd"] == pytest.approx(4 * 0.01 * 2)


def test_clusterip_without_backend_has_unknown_zone():
    # no NAT seen (dst is the ClusterIP itself): a service, but no backend node, so no zone
    w = three_zone_world().snapshot(0)
    w.flow("10.0.1.21", "172.20.0.10", node="n-a", tx=GB)
    r = rows_by(w.costs())[("10.0.1.21", "172.20.0.10")]
    assert r["dst_kind"] == "service" and r["dst_zone"] is None
    assert r["traffic_class"] == "unknown" and r["cost_usd"] == 0


def test_ip_reuse_between_pods_is_resolved_as_of_each_window():
    # 10.0.2.50 belongs to pod old-1 on n-b (us-east-1b) until minute 10, then to new-1 on
    # n-a (us-east-1a). Flows before and after must go to the right pod and zone.
    w = three_zone_world()
    w.pod("old-1", "batch", "n-b", "10.0.2.50", kind="Job", workload="old").snapshot(0)
    w.remove_pod("old-1", "batch").pod("new-1", "batch", "n-a", "10.0.2.50", workload="new").snapshot(10)
    w.flow("10.0.1.21", "10.0.2.50", node="n-a", minute=5, tx=GB)      # window ends 6 -> snapshot 0
    w.flow("10.0.1.22", "10.0.2.50", node="n-a", minute=12, tx=GB)     # window ends 13 -> snapshot 10
    w.flow("10.0.2.50", "10.0.3.21", node="n-b", minute=3, tx=GB)      # old-1 as a source
    w.flow("10.0.2.50", "10.0.3.21", node="n-a", minute=20, tx=2 * GB)  # new-1 as a source
    rows = w.costs().to_pylist()
    before = [r for r in rows if r["src_ip"] == "10.0.1.21"][0]
    after = [r for r in rows if r["src_ip"] == "10.0.1.22"][0]
    assert (before["dst_pod"], before["dst_workload"], before["dst_zone"]) == ("old-1", "old", "us-east-1b")
    assert before["traffic_class"] == "cross_zone"
    assert (after["dst_pod"], after["dst_workload"], after["dst_zone"]) == ("new-1", "new", "us-east-1a")
    assert after["traffic_class"] == "same_zone" and after["cost_usd"] == 0
    src_old = [r for r in rows if r["src_ip"] == "10.0.2.50" and r["tx_bytes"] == GB][0]
    src_new = [r for r in rows if r["src_ip"] == "10.0.2.50" and r["tx_bytes"] == 2 * GB][0]
    assert (src_old["src_pod"], src_old["src_namespace"], src_old["src_workload_kind"]) == ("old-1", "batch", "Job")
    assert (src_new["src_pod"], src_new["src_workload"]) == ("new-1", "new")


def test_window_before_first_snapshot_uses_the_earliest():
    w = three_zone_world().snapshot(30)
    w.flow("10.0.1.21", "10.0.2.21", node="n-a", minute=0, tx=GB)
    r = w.costs().to_pylist()[0]
    assert r["dst_pod"] == "api-1" and r["traffic_class"] == "cross_zone"


def test_window_end_equal_to_snapshot_time_uses_that_snapshot():
    w = World().node("n-a", "10.0.1.10", "us-east-1a").node("n-b", "10.0.2.10", "us-east-1b")
    w.pod("a", "x", "n-b", "10.0.9.9").snapshot(0)
    w.remove_pod("a", "x").pod("b", "x", "n-a", "10.0.9.9").snapshot(2)
    w.flow("10.0.1.10", "10.0.9.9", node="n-a", minute=1, tx=GB)  # window ends exactly at 2
    assert w.costs().to_pylist()[0]["dst_pod"] == "b"


def test_hostnetwork_pod_does_not_steal_node_traffic():
    # node-exporter runs with hostNetwork on n-a and carries the node IP 10.0.1.10
    w = three_zone_world()
    w.pod("node-exporter-x1", "monitoring", "n-a", "10.0.1.10", host_network=True, kind="DaemonSet",
          workload="node-exporter").snapshot(0)
    # outbound from the node IP (even if the agent's enricher named the hostNetwork pod)
    w.flow("10.0.1.10", "10.0.2.21", node="n-a", tx=GB, src_pod="node-exporter-x1", src_ns="monitoring")
    # a pod dialing the node IP
    w.flow("10.0.3.21", "10.0.1.10", node="n-c", port=9100, tx=GB)
    rows = rows_by(w.costs())
    out = rows[("10.0.1.10", "10.0.2.21")]
    assert out["src_pod"] is None and out["src_namespace"] is None and out["src_workload"] is None
    assert out["src_node"] == "n-a"
    to_node = rows[("10.0.3.21", "10.0.1.10")]
    assert to_node["dst_kind"] == "node" and to_node["dst_name"] == "n-a" and to_node["dst_pod"] is None
    assert to_node["dst_namespace"] is None and to_node["dst_zone"] == "us-east-1a"


def test_inbound_from_cluster_is_dropped_and_external_inbound_turned_around():
    w = three_zone_world().snapshot(0)
    # web-1 -> api-1 seen on both nodes: outbound on n-a, inbound on n-b (dropped)
    w.flow("10.0.1.21", "10.0.2.21", node="n-a", tx=100, rx=900)
    w.flow("10.0.1.21", "10.0.2.21", node="n-b", direction="inbound", tx=100, rx=900, dst_pod="api-1", dst_ns="shop")
    # the node n-c calling api-1: inbound duplicate on n-b, dropped too
    w.flow("10.0.3.10", "10.0.2.21", node="n-b", direction="inbound", tx=5, rx=5)
    # an internet client calls api-1 on its port 8443 (dialed), 7 bytes in, 2 GB out
    w.flow("203.0.113.7", "10.0.2.21", node="n-b", direction="inbound", port=8443, orig_port=8443,
           tx=7, rx=2 * GB, dst_pod="api-1", dst_ns="shop")
    rows = rows_by(w.costs())
    assert set(rows) == {("10.0.1.21", "10.0.2.21"), ("10.0.2.21", "203.0.113.7")}
    r = rows[("10.0.2.21", "203.0.113.7")]
    assert r["direction"] == "inbound"
    assert (r["src_pod"], r["src_namespace"], r["src_node"], r["src_zone"]) == ("api-1", "shop", "n-b", "us-east-1b")
    assert (r["tx_bytes"], r["rx_bytes"]) == (2 * GB, 7)   # the cluster sent 2 GB
    assert r["dst_port"] == 8443
    assert r["dst_kind"] == "external" and r["traffic_class"] == "internet_egress"


def test_raw_pod_names_win_and_node_name_fills_source_zone():
    w = three_zone_world().snapshot(0)
    w.flow("10.0.1.21", "10.0.1.22", node="n-a", tx=1, src_pod="web-1", src_ns="shop")
    # an address the inventory does not know, but the agent's enricher named
    w.flow("10.0.1.99", "10.0.1.22", node="n-a", tx=1, src_pod="web-1", src_ns="shop")
    rows = rows_by(w.costs())
    r = rows[("10.0.1.21", "10.0.1.22")]
    assert (r["src_pod"], r["src_workload_kind"], r["src_workload"], r["src_zone"]) == ("web-1", "Deployment", "web", "us-east-1a")
    # found by namespace/name in the as-of snapshot
    r2 = rows[("10.0.1.99", "10.0.1.22")]
    assert (r2["src_pod"], r2["src_workload"]) == ("web-1", "web")


def test_endpoint_without_pod_and_control_plane():
    w = three_zone_world()
    w.endpoint("legacy-db", "data", "10.50.0.5", 5432, zone="us-east-1c").snapshot(0)
    w.flow("10.0.1.21", "10.50.0.5", node="n-a", port=5432, tx=GB)
    # the API server via the kubernetes service (DNAT to its endpoint) and directly
    w.flow("10.0.1.22", "10.0.200.5", orig="172.20.0.1", orig_port=443, node="n-a", tx=GB)
    w.flow("10.0.2.21", "10.0.200.5", node="n-b", tx=GB)
    rows = rows_by(w.costs())
    db = rows[("10.0.1.21", "10.50.0.5")]
    assert (db["dst_kind"], db["dst_name"], db["dst_namespace"], db["dst_zone"]) == ("endpoint", "legacy-db", "data", "us-east-1c")
    assert db["traffic_class"] == "cross_zone"
    via_svc = rows[("10.0.1.22", "10.0.200.5")]
    assert (via_svc["dst_kind"], via_svc["dst_service"], via_svc["traffic_class"]) == ("service", "kubernetes", "k8s_control_plane")
    direct = rows[("10.0.2.21", "10.0.200.5")]
    assert (direct["dst_kind"], direct["dst_name"], direct["traffic_class"]) == ("endpoint", "kubernetes", "k8s_control_plane")
    assert via_svc["cost_usd"] == 0 and direct["cost_usd"] == 0


def test_dns_prefers_same_client_then_any_within_lookback():
    w = three_zone_world().snapshot(0)
    ip = "52.216.8.8"
    w.dns("10.0.1.21", "mine.s3.amazonaws.com", ip, -30)       # web-1 asked 30 min before
    w.dns("10.0.1.22", "other.s3.amazonaws.com", ip, -1)       # web-2 asked later
    w.dns("10.0.2.21", "future.example.com", ip, 5)            # after the window: ignored
    w.flow("10.0.1.21", ip, node="n-a", tx=1)   # same client wins although older
    w.flow("10.0.1.22", ip, node="n-a", tx=1)   # its own answer
    w.flow("10.0.3.21", ip, node="n-c", tx=1)   # no own answer: most recent of any client
    rows = rows_by(w.costs())
    assert rows[("10.0.1.21", ip)]["dst_domain"] == "mine.s3.amazonaws.com"
    assert rows[("10.0.1.22", ip)]["dst_domain"] == "other.s3.amazonaws.com"
    assert rows[("10.0.3.21", ip)]["dst_domain"] == "other.s3.amazonaws.com"


def test_dns_lookback_limits_answer_age():
    w = three_zone_world().snapshot(0)
    w.dns("10.0.1.21", "old.example.com", "198.51.100.1", -90)
    w.dns("10.0.1.21", "edge.example.com", "198.51.100.2", -59)
    w.flow("10.0.1.21", "198.51.100.1", node="n-a", tx=1)
    w.flow("10.0.1.21", "198.51.100.2", node="n-a", tx=1)
    rows = rows_by(w.costs(JobConfig.from_dict({"dns_lookback": "1h"})))
    assert rows[("10.0.1.21", "198.51.100.1")]["dst_domain"] is None   # 91 min before window end
    assert rows[("10.0.1.21", "198.51.100.2")]["dst_domain"] == "edge.example.com"  # 60 min: inclusive


def test_node_without_labels_uses_config_provider_and_region():
    w = World().node("n-x", "10.9.0.10", None, region=None, provider=None)
    w.node("n-y", "10.9.1.10", "europe-west1-b", region="europe-west1", provider="gcp").snapshot(0)
    w.flow("10.9.0.10", "8.8.4.4", node="n-x", tx=1)
    w.flow("10.9.0.99", "8.8.4.4", node="unknown-node", tx=1)
    rows = rows_by(w.costs(JobConfig.from_dict({"provider": "gcp", "region": "us-central1"})))
    r = rows[("10.9.0.10", "8.8.4.4")]
    assert (r["src_provider"], r["src_region"], r["src_zone"], r["rate_card"]) == ("gcp", "us-central1", None, "gcp/us-central1")
    r2 = rows[("10.9.0.99", "8.8.4.4")]
    assert (r2["src_provider"], r2["src_region"], r2["src_node"]) == ("gcp", "us-central1", "unknown-node")


def test_ipv6_pods_and_dictionary_encoded_input():
    w = World().node("n-a", "fd00:10::10", "us-east-1a").node("n-b", "fd00:20::10", "us-east-1b")
    w.pod("a", "x", "n-a", "fd00:10::21").pod("b", "x", "n-b", "fd00:20::21").snapshot(0)
    w.flow("fd00:10::21", "fd00:20::21", node="n-a", tx=GB)
    raw = w.raw()
    for c in ("src_ip", "dst_ip", "orig_dst_ip", "node"):
        raw = raw.set_column(raw.schema.get_field_index(c), c, raw.column(c).dictionary_encode())
    r = cost_flows(raw, w.context()).to_pylist()[0]
    assert (r["src_pod"], r["dst_pod"], r["traffic_class"]) == ("a", "b", "cross_zone")
    assert r["cost_usd"] == pytest.approx(1 * 0.01 * 2)  # 1 GB across AZs, both sides


def test_empty_input_gives_empty_contract_table():
    w = three_zone_world().snapshot(0)
    out = cost_flows(S.empty(S.RAW_FLOWS), w.context())
    assert out.num_rows == 0 and out.schema.equals(S.COST_FLOWS)
    # flows but no inventory at all: nothing is a pod, private peers stay external_private
    w.flow("10.0.1.21", "10.0.2.21", node="n-a", tx=GB)
    w.flow("10.0.1.21", "8.8.8.8", node="n-a", tx=GB)
    rows = rows_by(cost_flows(w.raw(), World().context()))
    assert rows[("10.0.1.21", "10.0.2.21")]["traffic_class"] == "external_private"
    assert rows[("10.0.1.21", "8.8.8.8")]["traffic_class"] == "internet_egress"
    assert rows[("10.0.1.21", "8.8.8.8")]["src_zone"] is None


def test_batches_are_independent_and_inputs_untouched():
    # the driver runs cost_flows per hour in parallel: any split by window gives the same rows
    w = three_zone_world()
    w.pod("old-1", "batch", "n-b", "10.0.2.50").snapshot(0)
    w.remove_pod("old-1", "batch").pod("new-1", "batch", "n-a", "10.0.2.50").snapshot(45)
    w.dns("10.0.1.21", "api.example.com", "198.51.100.9", -10)
    for m in range(0, 90, 7):
        w.flow("10.0.1.21", "10.0.2.50", node="n-a", minute=m, tx=m + 1)
        w.flow("10.0.1.21", "198.51.100.9", node="n-a", minute=m, tx=2 * m + 1)
        w.flow("198.51.100.9", "10.0.1.21", node="n-a", minute=m, direction="inbound", tx=3, rx=m + 5)
    raw, ctx = w.raw(), w.context()
    before = raw.to_pylist()
    whole = cost_flows(raw, ctx)
    cut = pc.less(raw.column("window_start"), pa.scalar(at(40), S.TS))
    parts = [cost_flows(raw.filter(cut), ctx), cost_flows(raw.filter(pc.invert(cut)), ctx)]
    key = lambda t: sorted(repr(sorted(r.items())) for r in t.to_pylist())  # noqa: E731
    assert key(whole) == key(pa.concat_tables(parts))
    assert raw.to_pylist() == before
    assert {r["dst_pod"] for r in whole.to_pylist() if r["dst_ip"] == "10.0.2.50"} == {"old-1", "new-1"}
