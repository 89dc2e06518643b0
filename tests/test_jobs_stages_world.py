"""A tiny cluster described in code, turned into the lake's tables, for the job's stage tests.

Imported by the other tests/test_jobs_* files; its own tests check the builder itself.
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa

from jobs.config import JobConfig
from jobs.ipranges import FIXTURES_DIR, CloudRanges
from jobs.pipeline import build_context, cost_flows
from lake import schema as S

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
GB = 1 << 30  # AWS and GCP bill per 2^30 bytes


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


class World:
    def __init__(self):
        self.nodes: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.services: dict[str, dict] = {}
        self.endpoints: list[dict] = []
        self.rows = {k: [] for k in S.INVENTORY_KINDS}
        self.dns_rows: list[dict] = []
        self.flow_rows: list[dict] = []

    # ---- state
    def node(self, name, ip, zone, region="us-east-1", provider="aws", external_ip=None, node_group=None):
        self.nodes[name] = dict(name=name, internal_ip=ip, external_ip=external_ip, zone=zone,
                                region=region, provider=provider, instance_type="m5.large", node_group=node_group)
        return self

    def pod(self, name, ns, node, ip, host_network=False, kind="Deployment", workload=None, phase="Running"):
        self.pods[f"{ns}/{name}"] = dict(name=name, namespace=ns, uid=f"uid-{ns}-{name}", node=node, ip=ip,
                                         host_network=host_network, workload_kind=kind,
                                         workload_name=workload or name.rsplit("-", 1)[0], phase=phase)
        return self

    def remove_pod(self, name, ns):
        del self.pods[f"{ns}/{name}"]
        return self

    def service(self, name, ns, cluster_ip, type_="ClusterIP"):
        self.services[f"{ns}/{name}"] = dict(name=name, namespace=ns, cluster_ip=cluster_ip, type=type_)
        return self

    def endpoint(self, service, ns, ip, port, pod=None, node=None, zone=None, proto=6):
        self.endpoints.append(dict(service=service, namespace=ns, ip=ip, port=port, proto=proto, pod=pod,
                                   node=node, zone=zone))
        return self

    def snapshot(self, minutes: float):
        """Record the current state as inventory snapshots taken at T0 + minutes."""
        when = at(minutes)
        for kind, items in (("nodes", self.nodes.values()), ("pods", self.pods.values()),
                            ("services", self.services.values()), ("endpoints", self.endpoints)):
            self.rows[kind] += [dict(item, snapshot_time=when) for item in items]
        return self

    # ---- observations
    def dns(self, client, domain, ip, seen_minutes, node="n-a", chain=None):
        seen = at(seen_minutes)
        self.dns_rows.append(dict(window_start=seen, window_end=seen, node=node, client_ip=client, domain=domain,
                                  ip=ip, ttl_s=60, seen_at=seen, cname_chain=chain))
        return self

    def flow(self, src, dst, *, node, minute=0, direction="outbound", orig=None, port=443, orig_port=None,
             tx=0, rx=0, proto=6, src_pod=None, src_ns=None, dst_pod=None, dst_ns=None):
        """One raw row for the window [T0+minute, T0+minute+1)."""
        self.flow_rows.append(dict(
            window_start=at(minute), window_end=at(minute + 1), node=node, direction=direction,
            src_ip=src, dst_ip=dst, orig_dst_ip=orig or dst, orig_dst_port=orig_port or port, dst_port=port,
            proto=proto, tx_bytes=tx, tx_packets=max(1, tx // 1000), rx_bytes=rx, rx_packets=max(1, rx // 1000),
            connections=1, src_pod=src_pod, src_namespace=src_ns, dst_pod=dst_pod, dst_namespace=dst_ns))
        return self

    # ---- tables
    def inventory(self) -> dict[str, pa.Table]:
        schemas = {"pods": S.INV_PODS, "services": S.INV_SERVICES, "nodes": S.INV_NODES, "endpoints": S.INV_ENDPOINTS}
        return {k: pa.Table.from_pylist(self.rows[k], schema=schemas[k]) for k in S.INVENTORY_KINDS}

    def raw(self) -> pa.Table:
        return pa.Table.from_pylist(self.flow_rows, schema=S.RAW_FLOWS)

    def dns_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.dns_rows, schema=S.RAW_DNS)

    def context(self, config: JobConfig | None = None, ranges: CloudRanges | None = None):
        return build_context(self.inventory(), self.dns_table(), config or JobConfig(), ranges)

    def costs(self, config: JobConfig | None = None, ranges: CloudRanges | None = None) -> pa.Table:
        return cost_flows(self.raw(), self.context(config, ranges))


def fixture_ranges() -> CloudRanges:
    return CloudRanges.load_dir(FIXTURES_DIR)


def rows_by(costs: pa.Table, key: str = "src_ip") -> dict:
    """Cost rows keyed by (src_ip, dst_ip) (each test makes them unique)."""
    out = {}
    for r in costs.to_pylist():
        k = (r["src_ip"], r["dst_ip"])
        assert k not in out, f"duplicate row {k}"
        out[k] = r
    return out


def three_zone_world() -> World:
    """Three AWS nodes in us-east-1a/b/c, a fourth in us-west-2a; a few pods per node."""
    w = World()
    w.node("n-a", "10.0.1.10", "us-east-1a").node("n-b", "10.0.2.10", "us-east-1b")
    w.node("n-c", "10.0.3.10", "us-east-1c").node("n-w", "10.1.1.10", "us-west-2a", region="us-west-2")
    w.pod("web-1", "shop", "n-a", "10.0.1.21").pod("web-2", "shop", "n-a", "10.0.1.22")
    w.pod("api-1", "shop", "n-b", "10.0.2.21").pod("db-0", "data", "n-c", "10.0.3.21", kind="StatefulSet", workload="db")
    w.pod("far-1", "shop", "n-w", "10.1.1.21")
    w.service("api", "shop", "172.20.0.10").service("kubernetes", "default", "172.20.0.1")
    w.endpoint("api", "shop", "10.0.2.21", 8080, pod="api-1", node="n-b", zone="us-east-1b")
    w.endpoint("kubernetes", "default", "10.0.200.5", 443, zone="us-east-1a")
    return w


def test_world_builds_contract_tables():
    w = three_zone_world().snapshot(0)
    w.flow("10.0.1.21", "10.0.2.21", node="n-a", tx=10, rx=20)
    inv = w.inventory()
    assert inv["pods"].schema.equals(S.INV_PODS)
    assert inv["pods"].num_rows == 5 and inv["nodes"].num_rows == 4
    assert w.raw().schema.equals(S.RAW_FLOWS) and w.raw().num_rows == 1
