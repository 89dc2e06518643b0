"""The lake contract: every table's path, partitioning, file naming and Arrow schema.

Both the node agent and the jobs import this module, so it must stay light: pyarrow and
the standard library only (no pandas, ray or great-expectations; the agent has 128 MiB).
docs/lake.md documents the same tables for people who query the lake with SQL; a test
checks that the two agree.

Conventions
- Timestamps are UTC, microsecond precision (`timestamp[us, tz=UTC]`).
- IP addresses are strings in canonical form (IPv4 dotted quad, IPv6 compressed), so
  SQL engines can compare and group them without UDFs.
- Byte and packet counters are int64 deltas within the row's window.
- Partitions are Hive style (`key=value`) so DuckDB, Trino and Athena prune by date.
"""
from __future__ import annotations

import datetime as dt
import re

import pyarrow as pa

SCHEMA_VERSION = "1"

TS = pa.timestamp("us", tz="UTC")

# --------------------------------------------------------------------------- raw (agent)

#: Which side opened the connection, seen from the reporting node.
#: outbound: the originator is local to the node (one of its pods, or the node itself).
#: inbound: a remote peer opened it and a local pod or the node answered. The job keeps
#: inbound rows only when the peer is outside the cluster, so no flow is counted twice.
DIRECTIONS = ("outbound", "inbound")

RAW_FLOWS = pa.schema(
    [
        ("window_start", TS),
        ("window_end", TS),
        ("node", pa.string()),
        ("direction", pa.string()),
        ("src_ip", pa.string()),
        ("dst_ip", pa.string()),          # the real peer after NAT (reply tuple's source)
        ("orig_dst_ip", pa.string()),     # what the client dialed (e.g. a ClusterIP)
        ("orig_dst_port", pa.int32()),
        ("dst_port", pa.int32()),         # the real peer's port after NAT
        ("proto", pa.int16()),            # IANA protocol number
        ("tx_bytes", pa.int64()),         # originator -> peer, within the window
        ("tx_packets", pa.int64()),
        ("rx_bytes", pa.int64()),         # peer -> originator, within the window
        ("rx_packets", pa.int64()),
        ("connections", pa.int64()),      # connections that carried traffic in the window
        ("src_pod", pa.string()),
        ("src_namespace", pa.string()),
        ("dst_pod", pa.string()),
        ("dst_namespace", pa.string()),
    ],
    metadata={"netmon.table": "raw/flows", "netmon.schema_version": SCHEMA_VERSION},
)

#: The key a node aggregates its connections by within one window.
FLOW_KEY = ("direction", "src_ip", "dst_ip", "orig_dst_ip", "orig_dst_port", "dst_port", "proto")

RAW_DNS = pa.schema(
    [
        ("window_start", TS),
        ("window_end", TS),
        ("node", pa.string()),
        ("client_ip", pa.string()),
        ("domain", pa.string()),   # the name the client asked for (CNAME chains followed back)
        ("ip", pa.string()),       # an A or AAAA answer
        ("ttl_s", pa.int32()),     # the record's TTL as answered (before any cap)
        ("seen_at", TS),           # when the response was observed
        # CNAME targets from `domain` to the name that owns the A/AAAA record, in answer order
        # (empty: answered directly; null: written before the chain was kept). Private-link
        # names (*.privatelink.*) often appear only here.
        ("cname_chain", pa.list_(pa.string())),
    ],
    metadata={"netmon.table": "raw/dns", "netmon.schema_version": SCHEMA_VERSION},
)

# ------------------------------------------------------------------ inventory (snapshotter)

INV_PODS = pa.schema(
    [
        ("snapshot_time", TS),
        ("name", pa.string()),
        ("namespace", pa.string()),
        ("uid", pa.string()),
        ("node", pa.string()),
        ("ip", pa.string()),            # one row per pod IP (dual stack gives two rows)
        ("host_network", pa.bool_()),
        ("workload_kind", pa.string()),  # Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod
        ("workload_name", pa.string()),
        ("phase", pa.string()),
    ],
    metadata={"netmon.table": "inventory/pods", "netmon.schema_version": SCHEMA_VERSION},
)

INV_SERVICES = pa.schema(
    [
        ("snapshot_time", TS),
        ("name", pa.string()),
        ("namespace", pa.string()),
        ("cluster_ip", pa.string()),    # one row per ClusterIP (dual stack gives two rows)
        ("type", pa.string()),          # ClusterIP, NodePort, LoadBalancer, ExternalName
    ],
    metadata={"netmon.table": "inventory/services", "netmon.schema_version": SCHEMA_VERSION},
)

INV_NODES = pa.schema(
    [
        ("snapshot_time", TS),
        ("name", pa.string()),
        ("internal_ip", pa.string()),   # one row per internal IP (dual stack gives two rows)
        ("external_ip", pa.string()),
        ("zone", pa.string()),          # topology.kubernetes.io/zone
        ("region", pa.string()),        # topology.kubernetes.io/region
        ("provider", pa.string()),      # aws, gcp, azure, ... from spec.providerID
        ("instance_type", pa.string()),
        # the provider's node-group label (eks.amazonaws.com/nodegroup, cloud.google.com/gke-nodepool,
        # kubernetes.azure.com/agentpool); NAT gateways can be configured per node group
        ("node_group", pa.string()),
    ],
    metadata={"netmon.table": "inventory/nodes", "netmon.schema_version": SCHEMA_VERSION},
)

INV_ENDPOINTS = pa.schema(
    [
        ("snapshot_time", TS),
        ("service", pa.string()),
        ("namespace", pa.string()),
        ("ip", pa.string()),
        ("port", pa.int32()),
        ("proto", pa.int16()),
        ("pod", pa.string()),           # targetRef name when the endpoint is a pod
        ("node", pa.string()),
        ("zone", pa.string()),
    ],
    metadata={"netmon.table": "inventory/endpoints", "netmon.schema_version": SCHEMA_VERSION},
)

# -------------------------------------------------------------------------- costs (job)

TRAFFIC_CLASSES = (
    "same_zone",
    "cross_zone",
    "cross_region",
    "internet_egress",
    "peering",
    "transit_gateway",
    "private_link",
    "k8s_control_plane",
    "cloud_api",
    "load_balancer",
    "imds",
    "external_private",
    "unknown",
)

DST_KINDS = ("pod", "service", "node", "endpoint", "external")

COST_FLOWS = pa.schema(
    [
        ("window_start", TS),
        ("window_end", TS),
        ("direction", pa.string()),
        ("src_node", pa.string()),
        ("src_zone", pa.string()),
        ("src_region", pa.string()),
        ("src_provider", pa.string()),
        ("src_ip", pa.string()),
        ("src_namespace", pa.string()),
        ("src_pod", pa.string()),
        ("src_workload_kind", pa.string()),
        ("src_workload", pa.string()),
        ("dst_kind", pa.string()),
        ("dst_namespace", pa.string()),
        ("dst_name", pa.string()),        # pod, service, node or endpoint name; null if external
        ("dst_service", pa.string()),     # the pre-NAT service the client dialed, if any
        ("dst_pod", pa.string()),         # the post-NAT backend pod, if any
        ("dst_workload_kind", pa.string()),
        ("dst_workload", pa.string()),
        ("dst_node", pa.string()),
        ("dst_zone", pa.string()),
        ("dst_region", pa.string()),
        ("dst_domain", pa.string()),
        ("dst_cname", pa.string()),       # private-link name in the DNS answer's CNAME chain
        ("dst_cloud_provider", pa.string()),  # from published IP ranges, for external IPs
        ("dst_cloud_service", pa.string()),
        ("dst_cloud_region", pa.string()),
        ("dst_ip", pa.string()),
        ("dst_port", pa.int32()),
        ("proto", pa.int16()),
        ("traffic_class", pa.string()),
        ("tx_bytes", pa.int64()),         # sent by the source pod/node
        ("rx_bytes", pa.int64()),         # received by the source pod/node
        ("tx_packets", pa.int64()),
        ("rx_packets", pa.int64()),
        ("cost_usd", pa.float64()),
        ("rate_card", pa.string()),       # which rate card priced the row (provider/region)
        # the bill's language and both sides: cost_usd = source side + dst_cost_usd; the
        # source side includes processing_cost_usd (NAT gateway, private endpoint, transit gateway)
        ("usage_type", pa.string()),      # provider meter of the source side's transfer
        ("dst_cost_usd", pa.float64()),   # part of cost_usd metered on the destination's side
        ("dst_usage_type", pa.string()),
        ("processing_cost_usd", pa.float64()),
        ("processing_usage_type", pa.string()),
        # metered quantity of each charge, in bytes (the provider bills per GB of these)
        ("usage_bytes", pa.int64()),
        ("dst_usage_bytes", pa.int64()),
        ("processing_bytes", pa.int64()),
        ("nat_gateway", pa.string()),     # NAT gateway the row passed (config.nat_gateways name)
        ("inventory_gap", pa.bool_()),    # the hour was costed without full inventory (see docs/lake.md)
    ],
    metadata={"netmon.table": "costs/flows", "netmon.schema_version": SCHEMA_VERSION},
)

COST_NAMESPACE_HOURLY = pa.schema(
    [
        ("hour_start", TS),
        ("namespace", pa.string()),
        ("traffic_class", pa.string()),
        ("tx_bytes", pa.int64()),
        ("rx_bytes", pa.int64()),
        ("flows", pa.int64()),
        ("cost_usd", pa.float64()),       # charged to the namespace: its source side + destination side
        ("dst_side_cost_usd", pa.float64()),  # of which as the destination side
    ],
    metadata={"netmon.table": "costs/namespace_hourly", "netmon.schema_version": SCHEMA_VERSION},
)

COST_WORKLOAD_DAILY = pa.schema(
    [
        ("day", pa.date32()),
        ("namespace", pa.string()),
        ("workload_kind", pa.string()),
        ("workload", pa.string()),
        ("traffic_class", pa.string()),
        ("tx_bytes", pa.int64()),
        ("rx_bytes", pa.int64()),
        ("flows", pa.int64()),
        ("cost_usd", pa.float64()),       # charged to the namespace: its source side + destination side
        ("dst_side_cost_usd", pa.float64()),  # of which as the destination side
    ],
    metadata={"netmon.table": "costs/workload_daily", "netmon.schema_version": SCHEMA_VERSION},
)

#: FOCUS 1.x export of the network costs (FinOps Open Cost and Usage Specification): the
#: columns a usage charge carries, plus x_ columns netmon adds (jobs/focus.py)
_STR = pa.string()
COST_FOCUS = pa.schema(
    [
        ("BilledCost", pa.float64()),
        ("EffectiveCost", pa.float64()),
        ("ListCost", pa.float64()),
        ("ContractedCost", pa.float64()),
        ("BillingCurrency", _STR),
        ("BillingAccountId", _STR),       # not known to netmon: null
        ("BillingAccountName", _STR),
        ("BillingPeriodStart", TS),       # calendar month
        ("BillingPeriodEnd", TS),
        ("ChargePeriodStart", TS),        # hour
        ("ChargePeriodEnd", TS),
        ("ChargeCategory", _STR),         # Usage
        ("ChargeClass", _STR),
        ("ChargeDescription", _STR),
        ("ChargeFrequency", _STR),        # Usage-Based
        ("ConsumedQuantity", pa.float64()),
        ("ConsumedUnit", _STR),           # the provider's billing unit: GB (AWS 2^30, Azure 10^9 bytes), GiB
        ("PricingQuantity", pa.float64()),
        ("PricingUnit", _STR),
        ("PricingCategory", _STR),        # Standard (list prices)
        ("ListUnitPrice", pa.float64()),
        ("ContractedUnitPrice", pa.float64()),
        ("ProviderName", _STR),
        ("PublisherName", _STR),
        ("InvoiceIssuerName", _STR),
        ("ServiceCategory", _STR),        # Networking
        ("ServiceName", _STR),
        ("RegionId", _STR),
        ("RegionName", _STR),
        ("AvailabilityZone", _STR),
        ("ResourceId", _STR),
        ("ResourceName", _STR),
        ("ResourceType", _STR),
        ("SkuId", _STR),
        ("SkuPriceId", _STR),
        ("SubAccountId", _STR),
        ("SubAccountName", _STR),
        ("CommitmentDiscountCategory", _STR),
        ("CommitmentDiscountId", _STR),
        ("CommitmentDiscountName", _STR),
        ("CommitmentDiscountStatus", _STR),
        ("CommitmentDiscountType", _STR),
        ("x_Namespace", _STR),            # the namespace charged (null: node traffic)
        ("x_WorkloadKind", _STR),
        ("x_Workload", _STR),
        ("x_TrafficClass", _STR),
        ("x_UsageType", _STR),            # the provider meter (AWS CUR usage type, GCP SKU, Azure meter)
        ("x_Side", _STR),                 # source, destination or processing
        ("x_RateCard", _STR),
        ("x_Provider", _STR),             # aws, gcp, azure
        ("x_UsageBytes", pa.int64()),     # metered bytes (ConsumedQuantity in bytes)
        ("x_Flows", pa.int64()),          # cost rows whose source side this row sums
    ],
    metadata={"netmon.table": "costs/focus", "netmon.schema_version": SCHEMA_VERSION},
)

# ------------------------------------------------------------------------- the catalogue


class Table:
    """One lake table: where it lives, how it is partitioned, what its files hold."""

    def __init__(self, path: str, schema: pa.Schema, partitions: tuple[str, ...]):
        self.path = path
        self.schema = schema
        self.partitions = partitions

    def partition_dir(self, when: dt.datetime, node: str | None = None) -> str:
        """Relative directory of the partition holding `when` (and `node`, if partitioned by it)."""
        when = as_utc(when)
        parts = [self.path]
        for key in self.partitions:
            if key == "date":
                parts.append(f"date={when:%Y-%m-%d}")
            elif key == "hour":
                parts.append(f"hour={when:%H}")
            elif key == "node":
                parts.append(f"node={check_node_name(node or '')}")
        return "/".join(parts)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Table({self.path!r})"


TABLES = {
    "raw/flows": Table("raw/flows", RAW_FLOWS, ("date", "hour", "node")),
    "raw/dns": Table("raw/dns", RAW_DNS, ("date", "hour", "node")),
    "inventory/pods": Table("inventory/pods", INV_PODS, ("date",)),
    "inventory/services": Table("inventory/services", INV_SERVICES, ("date",)),
    "inventory/nodes": Table("inventory/nodes", INV_NODES, ("date",)),
    "inventory/endpoints": Table("inventory/endpoints", INV_ENDPOINTS, ("date",)),
    "costs/flows": Table("costs/flows", COST_FLOWS, ("date", "hour")),
    "costs/namespace_hourly": Table("costs/namespace_hourly", COST_NAMESPACE_HOURLY, ("date",)),
    "costs/workload_daily": Table("costs/workload_daily", COST_WORKLOAD_DAILY, ("date",)),
    "costs/focus": Table("costs/focus", COST_FOCUS, ("date",)),
}

INVENTORY_KINDS = ("pods", "services", "nodes", "endpoints")

#: Job bookkeeping, kept in the lake so any runner (laptop or KubeRay) sees the same state.
STATE_DIR = "_state"            # the cost job's bookkeeping (docs/publishing.md)
QUARANTINE_DIR = "_quarantine"  # _quarantine/<raw table>/<original relative path> + .reason.json
EXPECTED_DIR = "_expected"      # simulator ground truth: expected class per flow (tests only)

# ------------------------------------------------------------------------- file naming

_NODE_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_STAMP = "%Y%m%dT%H%M%SZ"
_RAW_NAME_RE = re.compile(r"^(?P<kind>flows|dns)-(?P<node>.+)-(?P<start>\d{8}T\d{6}Z)\.parquet$")


def check_node_name(node: str) -> str:
    """Node names become path segments: accept only DNS-1123 subdomains (what Kubernetes allows)."""
    if not _NODE_RE.match(node or ""):
        raise ValueError(f"invalid node name {node!r}: expected a DNS-1123 subdomain")
    return node


def as_utc(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        raise ValueError(f"naive timestamp {when!r}: lake timestamps are UTC-aware")
    return when.astimezone(dt.timezone.utc)


def raw_file_path(table: str, node: str, window_start: dt.datetime) -> str:
    """Deterministic path of one node's file for one window: a retried upload replaces it."""
    kind = table.split("/")[1]
    t = TABLES[table]
    ws = as_utc(window_start)
    return f"{t.partition_dir(ws, node)}/{kind}-{node}-{ws.strftime(_STAMP)}.parquet"


def parse_raw_file_name(name: str) -> tuple[str, str, dt.datetime] | None:
    """(kind, node, window_start) of a raw file name, or None if it is not one of ours."""
    m = _RAW_NAME_RE.match(name.rsplit("/", 1)[-1])
    if not m:
        return None
    start = dt.datetime.strptime(m["start"], _STAMP).replace(tzinfo=dt.timezone.utc)
    return m["kind"], m["node"], start


def inventory_file_path(kind: str, snapshot_time: dt.datetime) -> str:
    t = TABLES[f"inventory/{kind}"]
    st = as_utc(snapshot_time)
    return f"{t.partition_dir(st)}/{kind}-{st.strftime(_STAMP)}.parquet"


def cost_file_path(table: str, when: dt.datetime) -> str:
    """One file per cost partition; rewriting a window replaces it (the job is idempotent)."""
    t = TABLES[table]
    return f"{t.partition_dir(when)}/part-0.parquet"


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast `table` to `schema` (column order, types, metadata); missing nullable
    columns become nulls. Raises ValueError naming the first column that does not fit."""
    cols = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if not col.type.equals(field.type):
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ValueError(f"column {field.name!r}: cannot cast {col.type} to {field.type}: {exc}") from exc
        elif field.nullable:
            col = pa.nulls(table.num_rows, field.type)
        else:
            raise ValueError(f"missing column {field.name!r}")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)
