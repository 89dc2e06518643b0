"""The simulated cluster: nodes, workloads, pods over time, services, outside destinations.

Everything here is small (one entry per node, pod, service or outside IP), so it is built
with plain Python once per run; the per-window flow tables are built with NumPy in
simulator/flows.py from the arrays this module exposes.

Time is counted in whole minutes from the simulation start (minute m = window m).
A pod is *alive* at snapshot minute s when start <= s < end, and *active* (sends and
receives traffic) in window m when start + 1 <= m <= end - 2: it has booted, and the
inventory snapshot the cost job uses for window m (the one at m + 1, the window's end)
still shows it, so a reused IP is never attributed to the wrong pod.
"""
from __future__ import annotations

import datetime as dt
import heapq
import ipaddress
import uuid
from dataclasses import dataclass, field

import numpy as np

NEVER = 10**9  # end minute of pods that outlive the simulation
NODE_PORT = 30080  # shop/storefront's NodePort

# ------------------------------------------------------------------------ string codes


class Codes:
    """Interning table: strings -> dense int codes, so flow columns stay int arrays until
    they are written (IPs canonicalised once here, never per row)."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.index: dict[str, int] = {}

    def add(self, s: str) -> int:
        code = self.index.get(s)
        if code is None:
            code = self.index[s] = len(self.strings)
            self.strings.append(s)
        return code

    def ip(self, addr: str) -> int:
        return self.add(ipaddress.ip_address(addr).compressed)


# -------------------------------------------------------------------------- the model

CLASS_NAMES = (
    "same_zone", "cross_zone", "cross_region", "internet_egress", "peering", "transit_gateway", "private_link",
    "k8s_control_plane", "cloud_api", "load_balancer", "imds", "external_private", "unknown",
)
CLS = {c: i for i, c in enumerate(CLASS_NAMES)}
ZONAL = -1  # class decided by the zones/regions of the two nodes

KINDS = ("pod", "service", "node", "endpoint", "external")
KIND = {k: i for i, k in enumerate(KINDS)}

PROVIDER_TOPOLOGY = {
    # provider: [(region, zones), (second region, zones)] (the zone and region node labels)
    "aws": [("us-east-1", ("us-east-1a", "us-east-1b", "us-east-1c")),
            ("us-west-2", ("us-west-2a", "us-west-2b", "us-west-2c"))],
    "gcp": [("us-central1", ("us-central1-a", "us-central1-b", "us-central1-c")),
            ("us-east4", ("us-east4-a", "us-east4-b", "us-east4-c"))],
    "azure": [("eastus", ("eastus-1", "eastus-2", "eastus-3")),
              ("westus2", ("westus2-1", "westus2-2", "westus2-3"))],
}


@dataclass
class Workload:
    ns: str
    name: str
    kind: str                      # Deployment, StatefulSet, DaemonSet, CronJob, or "kubelet"
    replicas: int = 1
    host_network: bool = False
    dual_stack: bool = False
    mean_life: float = 1e9         # minutes; pods are replaced when they end
    every: int = 0                 # CronJob schedule (minutes)
    duration: int = 0              # CronJob pod run time (minutes)
    virtual: bool = False          # a traffic source that is not a pod (the kubelet)


@dataclass
class Service:
    ns: str
    name: str
    ips: list[int]                 # ClusterIP codes (v4, then v6 when dual stack)
    type: str = "ClusterIP"
    workload: int = -1             # backing workload index, -1 = none
    port: int = 80
    target_port: int = 8080
    proto: int = 6


@dataclass
class OutsideGroup:
    """A set of outside IPs reached by name (or by bare IP when names are None)."""
    key: str
    ips: list[int]
    names: list[int | None]        # domain code per IP (None: reached without DNS)
    cls: int
    kind: int = KIND["external"]
    dst_name: int = -1             # code, for endpoints of default/kubernetes
    dst_ns: int = -1
    ttl_s: int = 300
    reresolve: int = 5             # minutes between a pod's lookups of these names
    cloud: tuple[str, str] | None = None   # (provider, region) of the published range holding the IPs
    service: str | None = None     # the range's service (S3, EC2, ...)
    relay: bool = False            # clients reach the pod through a NodePort on another node


@dataclass
class Edge:
    """Who talks to whom: every active pod of `src` talks to members of `target`."""
    src: int                       # workload index
    target: str                    # "svc:<i>:<fam>", "pods:<w>", "allpods", "nodes", "local", "out:<key>"
    port: int
    proto: int
    weight: float
    tx: float                      # median bytes per window, originator -> peer
    rx: float
    family: int = 4
    inbound: bool = False          # the members dial the pod (outside clients)
    sigma: float = 1.6             # lognormal spread of the byte counts (heavy tail)
    relay: bool = False            # ... through a NodePort (externalTrafficPolicy: Cluster)


@dataclass
class Cluster:
    start: dt.datetime
    minutes: int
    seed: int
    provider: str
    flows_per_node_window: int
    codes: Codes = field(default_factory=Codes)
    # nodes
    node_names: list[str] = field(default_factory=list)
    node_ip: np.ndarray = None          # code per node
    node_ext_ip: list[int] = field(default_factory=list)   # -1 when none
    node_zone: np.ndarray = None         # global zone id
    node_region: np.ndarray = None
    zones: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    node_instance: list[str] = field(default_factory=list)
    node_group: list[str] = field(default_factory=list)   # "edge" (public IP) or "workers" (behind NAT)
    # workloads, pods
    workloads: list[Workload] = field(default_factory=list)
    pod_name: list[int] = field(default_factory=list)     # codes
    pod_uid: list[str] = field(default_factory=list)
    pod: dict = field(default_factory=dict)               # numpy arrays, see _finish_pods
    services: list[Service] = field(default_factory=list)
    outside: dict = field(default_factory=dict)           # key -> OutsideGroup
    edges: list[Edge] = field(default_factory=list)
    cp_endpoints: list[int] = field(default_factory=list)
    job_rules: list[dict] = field(default_factory=list)   # JobConfig rules the expectations assume
    job_config: dict = field(default_factory=dict)        # the rest of the JobConfig they assume (NAT)

    def workload_index(self, ns: str, name: str) -> int:
        for i, w in enumerate(self.workloads):
            if w.ns == ns and w.name == name:
                return i
        raise KeyError(f"{ns}/{name}")


_ALNUM = np.array(list("bcdfghjklmnpqrstvwxz2456789"))


def _suffix(rng: np.random.Generator, n: int) -> str:
    return "".join(_ALNUM[rng.integers(0, len(_ALNUM), n)])


# ------------------------------------------------------------------------- building


def build_cluster(nodes: int, hours: int, seed: int, regions: int = 1,
                  start: dt.datetime | None = None, flows_per_node_window: int | None = None,
                  provider: str = "aws") -> Cluster:
    if nodes < 1 or nodes > 2000:   # pod CIDRs 10.244.0.0/24 .. 10.251.207.0/24
        raise ValueError(f"--nodes must be between 1 and 2000, got {nodes}")
    if hours < 1:
        raise ValueError(f"--hours must be at least 1, got {hours}")
    if regions not in (1, 2):
        raise ValueError(f"--regions must be 1 or 2, got {regions}")
    if provider not in PROVIDER_TOPOLOGY:
        raise ValueError(f"unknown provider {provider!r}; expected one of {sorted(PROVIDER_TOPOLOGY)}")
    k = flows_per_node_window if flows_per_node_window is not None else 80
    if k < 1:
        raise ValueError(f"--flows-per-window must be positive, got {k}")
    start = start or dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)
    if start.tzinfo is None:
        raise ValueError("--start must carry a timezone (e.g. 2026-01-05T00:00Z)")
    start = start.astimezone(dt.timezone.utc).replace(second=0, microsecond=0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    c = Cluster(start=start, minutes=hours * 60, seed=seed, provider=provider, flows_per_node_window=k)
    _build_nodes(c, nodes, regions, rng)
    _build_workloads(c, nodes, k)
    _build_pods(c, rng)
    _build_services(c, rng)
    _build_outside(c, k, rng)
    _build_edges(c)
    return c


def _build_nodes(c: Cluster, n: int, regions: int, rng: np.random.Generator) -> None:
    topo = PROVIDER_TOPOLOGY[c.provider]
    c.regions = [r for r, _ in topo[:regions]]
    c.zones = [z for _, zs in topo[:regions] for z in zs]
    ips, ext, zone, region = [], [], [], []
    per_region = [n - n // 2, n // 2] if regions == 2 else [n]
    for r, count in enumerate(per_region):
        for j in range(count):
            # Each region is its own VPC (10.0/16, 10.1/16): peered VPCs cannot overlap.
            # 10.0.250.x (control plane), 10.0.128.x (endpoints), 10.0.200.x (internal LBs) stay free.
            third, fourth = 1 + j // 200, 10 + j % 200
            ip = f"10.{r}.{third}.{fourth}"
            name = (f"ip-10-{r}-{third}-{fourth}.ec2.internal" if r == 0 and c.provider == "aws"
                    else f"ip-10-{r}-{third}-{fourth}.{c.regions[r]}.compute.internal")
            c.node_names.append(name)
            ips.append(c.codes.ip(ip))
            zone.append(r * 3 + j % 3)
            region.append(r)
            if j % 3 == 1:  # some nodes in public subnets: no NAT gateway
                pub = f"3.94.{j // 250}.{10 + j % 250}" if r == 0 else f"34.216.{j // 250}.{10 + j % 250}"
                ext.append(c.codes.ip(pub))
                c.node_group.append("edge")
            else:
                ext.append(-1)
                c.node_group.append("workers")
            c.node_instance.append(("m6i.xlarge", "m6i.2xlarge", "c6i.2xlarge")[int(rng.integers(0, 3))])
    c.node_ip = np.array(ips, dtype=np.int64)
    c.node_ext_ip = ext
    c.node_zone = np.array(zone, dtype=np.int64)
    c.node_region = np.array(region, dtype=np.int64)


def _build_workloads(c: Cluster, n: int, k: int) -> None:
    # A busier cluster (more flows per window) runs more replicas, as real ones do.
    f = int(np.clip(round(k / 200), 1, 20))
    # ... but no more than ~100 pods per node (kubelet's default limit is 110)
    per_f = max(2, n) + max(2, n // 2 + 1) + max(2, n // 2) + 6
    f = max(1, min(f, (100 * n - 12) // per_f))
    W = Workload
    c.workloads = [
        W("kube-system", "kubelet", "kubelet", virtual=True, host_network=True),
        W("kube-system", "kube-proxy", "DaemonSet", host_network=True),
        W("kube-system", "aws-node", "DaemonSet", host_network=True),
        W("monitoring", "node-exporter", "DaemonSet", host_network=True),
        W("kube-system", "coredns", "Deployment", replicas=2, mean_life=600),
        W("kube-system", "cluster-autoscaler", "Deployment", replicas=1, mean_life=900),
        W("monitoring", "prometheus", "StatefulSet", replicas=1, mean_life=2000),
        W("shop", "frontend", "Deployment", replicas=max(2, n) * f, dual_stack=True, mean_life=90),
        W("shop", "cart", "Deployment", replicas=max(2, n // 2 + 1) * f, dual_stack=True, mean_life=120),
        W("shop", "checkout", "Deployment", replicas=max(2, n // 2) * f, mean_life=75),
        W("shop", "payments", "Deployment", replicas=2 * f, mean_life=200),
        W("shop", "redis", "StatefulSet", replicas=3, mean_life=1500),
        W("data", "kafka", "StatefulSet", replicas=3, mean_life=2500),
        W("data", "etl", "Deployment", replicas=2 * f, mean_life=60),
        W("data", "report", "CronJob", every=5, duration=4),
        W("data", "backup", "CronJob", every=15, duration=7),
        W("notify", "webhooks", "Deployment", replicas=2 * f, mean_life=150),
    ]


def _build_pods(c: Cluster, rng: np.random.Generator) -> None:
    """Plan every pod's (node, start, end), then hand out IPs in start order, lowest free
    address of the node's pod CIDR first, as host-local IPAM would after a wrap; a pod that
    starts in the minute another ends on the same node gets its IP (IP reuse)."""
    n_nodes = len(c.node_names)
    T = c.minutes
    plans = []  # (start, end, workload, node, name, ordinal)
    for wi, w in enumerate(c.workloads):
        rs_hash = _suffix(rng, 10)
        if w.kind in ("DaemonSet", "kubelet"):
            for node in range(n_nodes):
                s = -int(rng.integers(60, 5000))
                name = f"{w.name}-{_suffix(rng, 5)}" if not w.virtual else f"kubelet@{c.node_names[node]}"
                plans.append((s, NEVER, wi, node, name))
        elif w.kind == "CronJob":
            first = -(-w.duration // w.every) * w.every  # a run may be in flight at minute 0
            for s in range(-first, T, w.every):
                node = int(rng.integers(0, n_nodes))
                epoch_min = int(c.start.timestamp() // 60) + s
                plans.append((s, s + w.duration, wi, node, f"{w.name}-{epoch_min}-{_suffix(rng, 5)}"))
        else:
            for slot in range(w.replicas):
                t = -int(rng.integers(1, 3000))
                node = (slot + wi) % n_nodes
                while t < T:
                    life = max(6, int(rng.exponential(w.mean_life)))
                    if w.kind == "StatefulSet":
                        name = f"{w.name}-{slot}"      # same name, new uid, same node (its volume)
                    else:
                        name = f"{w.name}-{rs_hash}-{_suffix(rng, 5)}"
                        node = int(rng.integers(0, n_nodes))
                    end = t + life if t + life < T + 2 else NEVER
                    plans.append((t, end, wi, node, name))
                    t = end
    plans.sort(key=lambda p: (p[0], p[2], p[3], p[4]))

    free: list[list[int]] = [[] for _ in range(n_nodes)]   # min-heaps of released host numbers
    fresh = [2] * n_nodes                                   # next never-used host number
    releases: list[tuple[int, int, int]] = []               # (end, node, host)
    cols = {k: [] for k in ("node", "ip4", "ip6", "host", "virtual", "workload", "start", "end")}
    for s, e, wi, node, name in plans:
        while releases and releases[0][0] <= s:
            _, rn, host = heapq.heappop(releases)
            heapq.heappush(free[rn], host)
        w = c.workloads[wi]
        if w.host_network:
            ip4, ip6 = int(c.node_ip[node]), -1
        else:
            host = heapq.heappop(free[node]) if free[node] else fresh[node]
            if host == fresh[node]:
                fresh[node] += 1
            if host > 254:
                raise ValueError("pod CIDR exhausted: too many pods per node for a /24")
            heapq.heappush(releases, (e, node, host))
            ip4 = c.codes.ip(f"10.{244 + node // 256}.{node % 256}.{host}")
            ip6 = c.codes.ip(f"fd00:10:244:{node:x}::{host:x}") if w.dual_stack else -1
        c.pod_name.append(c.codes.add(name))
        c.pod_uid.append(str(uuid.UUID(bytes=rng.bytes(16), version=4)))
        for k, v in zip(cols, (node, ip4, ip6, w.host_network, w.virtual, wi, s, e)):
            cols[k].append(v)
    c.pod = {k: np.array(v, dtype=bool if k in ("host", "virtual") else np.int64) for k, v in cols.items()}
    c.pod["name"] = np.array(c.pod_name, dtype=np.int64)
    c.pod["first"] = np.maximum(c.pod["start"] + 1, 0)
    c.pod["last"] = np.minimum(c.pod["end"] - 2, T - 1)


def _build_services(c: Cluster, rng: np.random.Generator) -> None:
    ip = c.codes.ip
    wl = c.workload_index
    c.cp_endpoints = [ip("10.0.250.10"), ip("10.0.250.11")]
    used = set()

    def cluster_ip() -> int:
        while True:
            a, b = int(rng.integers(1, 255)), int(rng.integers(2, 255))
            if (a, b) not in used and a != 0:
                used.add((a, b))
                return ip(f"10.96.{a}.{b}")

    S = Service
    c.services = [
        S("default", "kubernetes", [ip("10.96.0.1")], port=443, target_port=443),
        S("kube-system", "kube-dns", [ip("10.96.0.10")], workload=wl("kube-system", "coredns"),
          port=53, target_port=53, proto=17),
        S("shop", "frontend", [cluster_ip()], type="LoadBalancer", workload=wl("shop", "frontend"),
          port=80, target_port=8080),
        S("shop", "storefront", [cluster_ip()], type="NodePort", workload=wl("shop", "frontend"),
          port=80, target_port=8080),   # NodePort 30080, externalTrafficPolicy: Cluster
        S("shop", "cart", [cluster_ip(), ip(f"fd00:10:96::{int(rng.integers(0x100, 0xffff)):x}")],
          workload=wl("shop", "cart"), port=8080, target_port=8080),
        S("shop", "checkout", [cluster_ip()], workload=wl("shop", "checkout"), port=8080, target_port=8080),
        S("shop", "payments", [cluster_ip()], workload=wl("shop", "payments"), port=443, target_port=8443),
        S("shop", "redis", [cluster_ip()], workload=wl("shop", "redis"), port=6379, target_port=6379),
        S("shop", "legacy-api", [cluster_ip()], port=80, target_port=8080),   # no endpoints
        S("data", "kafka", [cluster_ip()], workload=wl("data", "kafka"), port=9092, target_port=9092),
        S("monitoring", "prometheus", [cluster_ip()], workload=wl("monitoring", "prometheus"),
          port=9090, target_port=9090),
    ]


def _ipv4_block(base: str, n: int, rng: np.random.Generator, span: int) -> list[str]:
    """n distinct addresses spread over `span` addresses from `base`."""
    first = int(ipaddress.IPv4Address(base))
    offs = rng.choice(span, size=min(n, span), replace=False) + 1
    return [str(ipaddress.IPv4Address(first + int(o))) for o in sorted(offs)]


def _build_outside(c: Cluster, k: int, rng: np.random.Generator) -> None:
    add, ip = c.codes.add, c.codes.ip
    groups: list[OutsideGroup] = []

    def group(key, addrs, names, cls, **kw):
        ips = [ip(a) for a in addrs]
        codes = [add(nm) if nm else None for nm in names]
        groups.append(OutsideGroup(key, ips, codes, CLS[cls], **kw))

    # Public, inside published ranges (S3 and EC2 in us-east-1, Google Cloud).
    s3 = _ipv4_block("52.216.0.0", max(4, k // 20), rng, 1 << 17)
    # A cloud service of the source's own provider is cloud_api in its region and cross_region
    # from another (window_tables decides per source node); of another provider, the internet.
    group("s3", s3, ["mybucket.s3.amazonaws.com"] * len(s3), "internet_egress", ttl_s=5, reresolve=2,
          cloud=("aws", "us-east-1"), service="S3")
    s3w = _ipv4_block("52.218.128.0", 4, rng, 1 << 15)
    group("s3west", s3w, ["mybucket-dr.s3.us-west-2.amazonaws.com"] * len(s3w), "internet_egress", ttl_s=5,
          reresolve=3, cloud=("aws", "us-west-2"), service="S3")
    ec2 = _ipv4_block("3.84.0.0", 2, rng, 1 << 16)
    group("ec2api", ec2, ["ec2.us-east-1.amazonaws.com"] * 2, "internet_egress", ttl_s=60,
          cloud=("aws", "us-east-1"), service="EC2")
    gcp = _ipv4_block("35.190.0.0", 2, rng, 1 << 14)
    group("gcs", gcp, ["bigquery.googleapis.com"] * 2, "internet_egress", ttl_s=300,
          cloud=("gcp", "us-central1"), service="Google Cloud")
    # Public, outside any published range (a CDN-fronted API, IPv4 and IPv6).
    stripe = _ipv4_block("151.101.0.0", 4, rng, 1 << 12)
    group("stripe", stripe, ["api.stripe.com"] * 4, "internet_egress", ttl_s=60, reresolve=3)
    cdn4 = _ipv4_block("151.101.64.0", 2, rng, 1 << 10)
    cdn6 = [f"2a04:4e42:{int(rng.integers(1, 0x400)):x}::{int(rng.integers(1, 0xffff)):x}" for _ in range(2)]
    group("cdn4", cdn4, ["assets.shopcdn.net"] * 2, "internet_egress", ttl_s=300)
    group("cdn6", cdn6, ["assets.shopcdn.net"] * 2, "internet_egress", ttl_s=300)
    nhooks = max(24, k // 8)
    hooks = _ipv4_block("151.101.128.0", nhooks, rng, 1 << 15)
    group("hooks", hooks, [f"hooks.customer{i:04d}.example.com" for i in range(len(hooks))],
          "internet_egress", ttl_s=300, reresolve=10)
    # Outside clients reaching the LoadBalancer-backed frontend pods (client IP preserved).
    clients = _ipv4_block("81.2.0.0", max(64, k // 2), rng, 1 << 16)
    group("clients", clients, [None] * len(clients), "internet_egress")
    # ... and through the NodePort of shop/storefront (externalTrafficPolicy: Cluster)
    np_clients = _ipv4_block("81.3.0.0", max(32, k // 4), rng, 1 << 16)
    group("npclients", np_clients, [None] * len(np_clients), "internet_egress", relay=True)
    # Private destinations, told apart by DNS name.
    group("vpce", ["10.0.128.21", "10.0.128.37"],
          ["vpce-0abc-xyz.vpce-svc-123.us-east-1.vpce.amazonaws.com"] * 2, "private_link", ttl_s=60)
    # an interface endpoint with private DNS: the service's ordinary name at a private address
    group("sts", ["10.0.128.52"], ["sts.us-east-1.amazonaws.com"], "private_link", ttl_s=60)
    group("pubsub", ["10.0.128.60"], ["pubsub.googleapis.com"], "cloud_api", ttl_s=60)
    group("ilb", ["10.0.200.14", "10.0.200.77"], ["internal-foo-123.us-east-1.elb.amazonaws.com"] * 2,
          "load_balancer", ttl_s=60)
    group("onprem", ["10.50.3.14", "10.50.7.2"], [None, None], "external_private")
    group("peered", ["10.60.1.20"], [None], "peering")
    group("tgw", ["10.70.1.30"], [None], "transit_gateway")
    group("imds", ["169.254.169.254"], [None], "imds")
    # The managed control plane, reached by its DNS name: an endpoint of default/kubernetes.
    group("eks", ["10.0.250.10", "10.0.250.11"], ["abc123def456.gr7.us-east-1.eks.amazonaws.com"] * 2,
          "k8s_control_plane", kind=KIND["endpoint"], dst_name=add("kubernetes"), dst_ns=add("default"),
          ttl_s=60)
    c.outside = {g.key: g for g in groups}
    c.job_rules = [{"cidr": "10.60.0.0/16", "class": "peering", "name": "analytics-vpc"},
                   {"cidr": "10.70.0.0/16", "class": "transit_gateway", "name": "shared-services-tgw"}]
    c.job_config = {"nat_gateways": [{"name": "nat-workers", "node_groups": ["workers"]}],
                    "gateway_endpoints": ["S3"] if c.provider == "aws" else []}
    for name in [g.service for g in groups if g.service] + ["nat-workers", "S3"]:
        add(name)  # strings the ground truth writes


def _build_edges(c: Cluster) -> None:
    wl = c.workload_index
    svc = {s.name: i for i, s in enumerate(c.services)}
    E = Edge
    kubelet, proxy, awsnode = wl("kube-system", "kubelet"), wl("kube-system", "kube-proxy"), wl("kube-system", "aws-node")
    prom = wl("monitoring", "prometheus")
    fe, cart, co, pay = wl("shop", "frontend"), wl("shop", "cart"), wl("shop", "checkout"), wl("shop", "payments")
    redis, kafka, etl = wl("shop", "redis"), wl("data", "kafka"), wl("data", "etl")
    report, backup, hooks, ca = wl("data", "report"), wl("data", "backup"), wl("notify", "webhooks"), wl("kube-system", "cluster-autoscaler")
    pods = [i for i, w in enumerate(c.workloads) if not w.host_network]
    dns = [E(w, f"svc:{svc['kube-dns']}:4", 53, 17, 3.0, 400, 900, sigma=0.8) for w in pods]
    c.edges = dns + [
        # node-level traffic (src_ip = node IP)
        E(kubelet, "local", 8080, 6, 2.0, 350, 300, sigma=0.4),
        E(kubelet, f"svc:{svc['kubernetes']}:4", 443, 6, 2.0, 20e3, 60e3),
        E(kubelet, "out:imds", 80, 6, 1.0, 250, 1200, sigma=0.5),
        E(proxy, f"svc:{svc['kubernetes']}:4", 443, 6, 1.5, 5e3, 40e3),
        E(awsnode, "out:imds", 80, 6, 1.0, 250, 1200, sigma=0.5),
        E(awsnode, "out:ec2api", 443, 6, 0.5, 3e3, 8e3),
        E(awsnode, "out:sts", 443, 6, 0.5, 2e3, 4e3),
        E(awsnode, f"svc:{svc['kube-dns']}:4", 53, 17, 1.0, 300, 700, sigma=0.8),
        # monitoring: scrape every pod, every kubelet, every node-exporter
        E(prom, "allpods", 9090, 6, 0.6, 800, 40e3),
        E(prom, "nodes", 10250, 6, 1.0, 1e3, 300e3),
        E(prom, "nodes", 9100, 6, 1.0, 600, 80e3),
        E(prom, f"svc:{svc['kubernetes']}:4", 443, 6, 1.0, 8e3, 90e3),
        E(ca, "out:eks", 443, 6, 1.0, 10e3, 120e3),
        E(ca, "out:ec2api", 443, 6, 0.5, 4e3, 20e3),
        E(ca, "out:imds", 80, 6, 0.5, 250, 1200, sigma=0.5),
        # the shop
        E(fe, "out:clients", 8080, 6, 0.6, 2e3, 60e3, inbound=True, sigma=2.0),
        E(fe, "out:npclients", 8080, 6, 0.5, 2e3, 80e3, inbound=True, sigma=1.5, relay=True),
        E(fe, f"svc:{svc['cart']}:4", 8080, 6, 2.0, 15e3, 120e3),
        E(fe, f"svc:{svc['cart']}:6", 8080, 6, 1.5, 15e3, 120e3),
        E(fe, f"svc:{svc['checkout']}:4", 8080, 6, 1.5, 20e3, 30e3),
        E(fe, "out:cdn4", 443, 6, 0.8, 3e3, 400e3, sigma=2.0),
        E(fe, "out:cdn6", 443, 6, 0.8, 3e3, 400e3, family=6, sigma=2.0),
        E(fe, f"svc:{svc['legacy-api']}:4", 80, 6, 0.3, 120, 40, sigma=0.2),
        E(cart, f"svc:{svc['redis']}:4", 6379, 6, 2.5, 40e3, 90e3),
        E(co, f"svc:{svc['payments']}:4", 443, 6, 1.5, 8e3, 6e3),
        E(co, f"svc:{svc['cart']}:4", 8080, 6, 1.0, 5e3, 20e3),
        E(co, "out:ilb", 443, 6, 0.8, 6e3, 12e3),
        E(pay, "out:stripe", 443, 6, 1.5, 6e3, 9e3),
        E(pay, "out:tgw", 8443, 6, 0.5, 20e3, 10e3),
        E(pay, "out:pubsub", 443, 6, 0.3, 5e3, 2e3),
        E(pay, "out:sts", 443, 6, 0.3, 2e3, 4e3),
        E(redis, f"pods:{redis}", 6379, 6, 1.0, 200e3, 5e3),           # replication
        E(kafka, f"pods:{kafka}", 9093, 6, 1.5, 2e6, 30e3, sigma=1.2),  # broker to broker
        # data pipelines
        E(etl, f"svc:{svc['kafka']}:4", 9092, 6, 2.0, 30e3, 1.5e6, sigma=1.2),
        E(etl, "out:s3", 443, 6, 2.0, 8e6, 40e3, sigma=2.0),
        E(etl, "out:s3west", 443, 6, 0.8, 2e6, 30e3, sigma=1.5),
        E(etl, "out:vpce", 443, 6, 1.0, 300e3, 20e3),
        E(etl, "out:onprem", 5432, 6, 1.0, 20e3, 2e6),
        E(etl, "out:peered", 5439, 6, 1.0, 3e6, 50e3),
        E(etl, "out:gcs", 443, 6, 0.7, 1e6, 20e3),
        E(report, f"svc:{svc['redis']}:4", 6379, 6, 1.0, 5e3, 300e3),
        E(report, "out:s3", 443, 6, 1.5, 20e6, 50e3, sigma=1.5),
        E(report, "out:ilb", 443, 6, 1.0, 10e3, 200e3),
        E(backup, f"pods:{kafka}", 9092, 6, 1.0, 20e3, 30e6, sigma=1.2),
        E(backup, "out:s3", 443, 6, 2.0, 80e6, 100e3, sigma=1.2),
        E(backup, "out:vpce", 443, 6, 0.5, 500e3, 10e3),
        E(hooks, "out:hooks", 443, 6, 1.0, 3e3, 1.5e3, sigma=1.5),
        E(hooks, f"svc:{svc['kafka']}:4", 9092, 6, 1.0, 5e3, 200e3),
    ]
