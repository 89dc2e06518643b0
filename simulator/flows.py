"""Per-window flow, DNS and ground-truth tables of the simulated cluster, built with NumPy.

One call of `window_tables(cluster, m)` builds window m for every node at once:

1. targets: the members of every talk target (a service's live backends, a workload's
   pods, all pods, all nodes, each node's local pods, outside IP groups), as one CSR table;
2. candidates: every active source pod x its workload's edges x the edge target's members
   (np.repeat expansion, no per-row Python);
3. selection: per node about `flows_per_node_window` candidates, weighted sampling without
   replacement (Gumbel top-k);
4. rows: heavy-tailed byte counts; the duplicate `inbound` row the server's node reports
   for each cross-node flow to a pod or node; aggregation by the flow key, as the agent's
   accounter does;
5. the intent of each row (class, destination kind and name, kept or dropped) is carried
   along from the edge and member it came from: the ground truth is never recomputed.

The random stream of window m depends only on (seed, m), so windows can be generated in
any order (or in parallel) and still give identical files.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from simulator.cluster import CLASS_NAMES, CLS, KIND, KINDS, NODE_PORT, ZONAL, Cluster
from lake import schema as S

#: Ground-truth table: the raw flow key plus what the cost job must conclude.
EXPECTED_FLOWS = pa.schema(
    [
        ("window_start", S.TS),
        ("node", pa.string()),
        ("direction", pa.string()),
        ("src_ip", pa.string()),
        ("dst_ip", pa.string()),
        ("orig_dst_ip", pa.string()),
        ("orig_dst_port", pa.int32()),
        ("dst_port", pa.int32()),
        ("proto", pa.int16()),
        ("keep", pa.bool_()),              # false: a duplicate the job must drop
        ("traffic_class", pa.string()),    # null when keep is false
        ("dst_kind", pa.string()),
        ("src_pod", pa.string()),          # null for node (hostNetwork, kubelet) traffic
        ("src_namespace", pa.string()),
        ("dst_name", pa.string()),
        ("dst_namespace", pa.string()),
        ("nat_gateway", pa.string()),        # the NAT gateway the connection passes (job config)
        ("dst_cloud_service", pa.string()),  # service of the published range holding dst (S3, EC2, ...)
    ],
    metadata={"netmon.table": "_expected/flows", "netmon.schema_version": S.SCHEMA_VERSION},
)

_US = 1_000_000
_DIRECTIONS = np.array(["outbound", "inbound"], dtype=object)


@dataclass
class WindowTables:
    window_start: dt.datetime
    flows: pa.Table        # RAW_FLOWS, all nodes, sorted by node then flow key
    expected: pa.Table     # EXPECTED_FLOWS, row-aligned with `flows`
    dns: pa.Table          # RAW_DNS, all nodes, sorted by node
    flow_bounds: dict[str, tuple[int, int]]   # node -> row slice of flows/expected
    dns_bounds: dict[str, tuple[int, int]]


class _Static:
    """Per-cluster arrays the windows share (built once, cached on the cluster)."""

    def __init__(self, c: Cluster):
        p = c.pod
        self.n_nodes = len(c.node_names)
        self.node_name_code = np.array([c.codes.add(n) for n in c.node_names], dtype=np.int64)
        self.ns_code = np.array([c.codes.add(w.ns) for w in c.workloads], dtype=np.int64)
        for s in c.services:
            c.codes.add(s.name), c.codes.add(s.ns)
        self.strings = pa.array(c.codes.strings, type=pa.string())   # every code exists by now
        self.pod_ns = self.ns_code[p["workload"]]
        self.pod_is_pod = ~(p["host"] | p["virtual"])      # has its own IP and a name to attribute
        # edges grouped by source workload (CSR)
        e_src = np.array([e.src for e in c.edges], dtype=np.int64)
        order = np.argsort(e_src, kind="stable")
        self.e_list = order
        self.e_cnt = np.bincount(e_src, minlength=len(c.workloads))
        self.e_ptr = np.concatenate([[0], np.cumsum(self.e_cnt)[:-1]])
        self.e_port = np.array([e.port for e in c.edges], dtype=np.int64)
        self.e_proto = np.array([e.proto for e in c.edges], dtype=np.int64)
        self.e_w = np.array([e.weight for e in c.edges], dtype=np.float64)
        self.e_tx = np.log(np.array([e.tx for e in c.edges], dtype=np.float64))
        self.e_rx = np.log(np.array([e.rx for e in c.edges], dtype=np.float64))
        self.e_sigma = np.array([e.sigma for e in c.edges], dtype=np.float64)
        self.e_fam6 = np.array([e.family == 6 for e in c.edges])
        self.e_inbound = np.array([e.inbound for e in c.edges])
        self.e_split = np.array([e.target.startswith("svc:") or e.target == "out:s3" for e in c.edges])
        self.e_relay = np.array([e.relay for e in c.edges])
        private = ("10.", "169.254.", "172.16.", "192.168.")
        self.private_outside = np.array([ip for g in c.outside.values() for ip in g.ips
                                         if c.codes.strings[ip].startswith(private)], dtype=np.int64)
        # cloud regions: the cluster's first, then every range's; nodes by region for relays
        self.regions = list(c.regions) + sorted({g.cloud[1] for g in c.outside.values() if g.cloud} - set(c.regions))
        self.region_id = {r: i for i, r in enumerate(self.regions)}
        self.region_nodes = [np.flatnonzero(c.node_region == r) for r in range(len(c.regions))]
        self.nat_code = c.codes.index[c.job_config["nat_gateways"][0]["name"]] if c.job_config.get("nat_gateways") else -1
        self.nat_node = np.array([g in c.job_config.get("nat_gateways", [{}])[0].get("node_groups", [])
                                  and ext < 0 for g, ext in zip(c.node_group, c.node_ext_ip)], bool)
        self.gw_endpoints = {c.codes.index[s] for s in c.job_config.get("gateway_endpoints", [])}
        # target names -> group ids; "local" expands to one group per node at the end
        self.targets = sorted({e.target for e in c.edges if e.target != "local"})
        self.target_id = {t: i for i, t in enumerate(self.targets)}
        self.local_base = len(self.targets)
        self.e_group = np.array([self.target_id.get(e.target, -1) for e in c.edges], dtype=np.int64)
        self.e_local = np.array([e.target == "local" for e in c.edges])
        # outside groups with names, for DNS lookups
        self.e_reresolve = np.array(
            [c.outside[e.target[4:]].reresolve if e.target.startswith("out:") else 0 for e in c.edges],
            dtype=np.int64)
        self.e_named = np.array(
            [e.target.startswith("out:") and any(n is not None for n in c.outside[e.target[4:]].names)
             for e in c.edges])
        self.e_ttl = np.array(
            [c.outside[e.target[4:]].ttl_s if e.target.startswith("out:") else 0 for e in c.edges],
            dtype=np.int64)


def _static(c: Cluster) -> _Static:
    st = getattr(c, "_static", None)
    if st is None:
        st = _Static(c)
        c._static = st  # type: ignore[attr-defined]
    return st


# ---------------------------------------------------------------------------- targets

_MEMBER_COLS = ("dst", "orig", "node", "pod", "kind", "name", "ns", "cls", "dup", "tport", "dname", "creg", "csvc")


def _members(**cols) -> dict[str, np.ndarray]:
    n = len(cols["dst"])
    out = {}
    for k in _MEMBER_COLS:
        v = cols.get(k, -1)
        out[k] = np.asarray(v, dtype=bool if k == "dup" else np.int64) if np.ndim(v) else np.full(n, v, dtype=bool if k == "dup" else np.int64)
    return out


def _targets(c: Cluster, st: _Static, active_pods: np.ndarray):
    """CSR member table of every target group for this window."""
    p = c.pod
    by_w = active_pods[np.argsort(p["workload"][active_pods], kind="stable")]
    w_sorted = p["workload"][by_w]

    def pods_of(w: int) -> np.ndarray:
        lo, hi = np.searchsorted(w_sorted, [w, w + 1])
        return by_w[lo:hi]

    def pod_members(pods: np.ndarray, ips: np.ndarray | None = None, **kw) -> dict:
        ips = p["ip4"][pods] if ips is None else ips
        base = dict(dst=ips, orig=ips, node=p["node"][pods], pod=pods, kind=KIND["pod"],
                    name=p["name"][pods], ns=st.pod_ns[pods], cls=ZONAL, dup=True)
        base.update(kw)
        return _members(**base)

    chunks, sizes = [], []
    for t in st.targets:
        kind, _, arg = t.partition(":")
        if kind == "svc":
            si, fam = (int(x) for x in arg.split(":"))
            s = c.services[si]
            cip = s.ips[0] if fam == 4 else s.ips[1]
            name, ns = c.codes.index[s.name], c.codes.index[s.ns]
            if s.name == "kubernetes" and s.ns == "default":
                cp = np.array(c.cp_endpoints, dtype=np.int64)
                m = _members(dst=cp, orig=cip, kind=KIND["service"], name=name, ns=ns,
                             cls=CLS["k8s_control_plane"], dup=False, tport=s.target_port)
            elif s.workload < 0:   # no endpoints: the connection never leaves the ClusterIP
                m = _members(dst=[cip], orig=cip, kind=KIND["service"], name=name, ns=ns,
                             cls=CLS["unknown"], dup=False, tport=s.target_port)
            else:
                b = pods_of(s.workload)
                ips = p["ip4"][b] if fam == 4 else p["ip6"][b]
                m = pod_members(b, ips, orig=cip, kind=KIND["service"], name=name, ns=ns, tport=s.target_port)
        elif kind == "pods":
            m = pod_members(pods_of(int(arg)))
        elif kind == "allpods":
            m = pod_members(active_pods[st.pod_is_pod[active_pods]])
        elif kind == "nodes":
            nodes = np.arange(st.n_nodes)
            m = _members(dst=c.node_ip, orig=c.node_ip, node=nodes, kind=KIND["node"],
                         name=st.node_name_code, cls=ZONAL, dup=True)
        elif kind == "out":
            g = c.outside[arg]
            ips = np.array(g.ips, dtype=np.int64)
            # a range of the cluster's own provider: its region decides the class per source node
            creg = st.region_id.get(g.cloud[1], -1) if g.cloud and g.cloud[0] == c.provider else -1
            m = _members(dst=ips, orig=ips, kind=g.kind, name=g.dst_name, ns=g.dst_ns, cls=g.cls, dup=False,
                         dname=np.array([-1 if n is None else n for n in g.names], dtype=np.int64),
                         creg=creg, csvc=c.codes.index[g.service] if g.service else -1)
        else:  # pragma: no cover - edges are built in simulator.cluster
            raise ValueError(f"unknown target {t!r}")
        chunks.append(m)
        sizes.append(len(m["dst"]))
    # one "local" group per node: the node's own pods (kubelet probes)
    local = active_pods[st.pod_is_pod[active_pods]]
    local = local[np.argsort(p["node"][local], kind="stable")]
    chunks.append(pod_members(local))
    sizes.extend(np.bincount(p["node"][local], minlength=st.n_nodes).tolist())
    members = {k: np.concatenate([ch[k] for ch in chunks]) for k in _MEMBER_COLS}
    sizes = np.array(sizes, dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return members, ptr, sizes


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each i repeated counts[i] times: (i, 0..counts[i]-1)."""
    idx = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return idx, np.arange(len(idx)) - starts[idx]


# ----------------------------------------------------------------------------- window


def window_tables(c: Cluster, m: int) -> WindowTables:
    st = _static(c)
    p = c.pod
    rng = np.random.default_rng(np.random.SeedSequence([c.seed, 0xF10, m]))
    ws = c.start + dt.timedelta(minutes=m)
    ws_us = int(ws.timestamp()) * _US

    active = np.flatnonzero((p["first"] <= m) & (m <= p["last"]))
    members, gptr, gsize = _targets(c, st, active)

    # -- candidates: active pod x edge of its workload x member of the edge's target
    wk = p["workload"][active]
    pi, off = _expand(st.e_cnt[wk])
    src = active[pi]
    edge = st.e_list[st.e_ptr[wk[pi]] + off]
    group = np.where(st.e_local[edge], st.local_base + p["node"][src], st.e_group[edge])

    # DNS lookups happen when a pod starts and every `reresolve` minutes after.
    lookup = st.e_named[edge] & ((m - p["first"][src]) % np.maximum(st.e_reresolve[edge], 1) == 0)
    dns = _dns_rows(c, st, rng, src[lookup], edge[lookup], members, gptr[group[lookup]], gsize[group[lookup]], ws_us)

    ci, off = _expand(gsize[group])
    c_src, c_edge = src[ci], edge[ci]
    c_mem = gptr[group[ci]] + off
    src_ip = np.where(st.e_fam6[c_edge], p["ip6"][c_src], p["ip4"][c_src])
    ok = members["dst"][c_mem] != src_ip
    c_src, c_edge, c_mem, src_ip = c_src[ok], c_edge[ok], c_mem[ok], src_ip[ok]
    c_node = p["node"][c_src]

    # -- selection: weighted sampling without replacement per node (Gumbel top-k)
    size = gsize[group[ci]][ok]
    key = np.log(st.e_w[c_edge] / np.maximum(size, 1) ** 0.75) + rng.gumbel(size=len(c_edge))
    order = np.lexsort((-key, c_node))
    node_sorted = c_node[order]
    first_of_node = np.searchsorted(node_sorted, np.arange(st.n_nodes))
    rank = np.arange(len(order)) - first_of_node[node_sorted]
    quota = rng.poisson(c.flows_per_node_window, size=st.n_nodes)
    sel = np.sort(order[rank < quota[node_sorted]])
    c_src, c_edge, c_mem, src_ip, c_node = c_src[sel], c_edge[sel], c_mem[sel], src_ip[sel], c_node[sel]
    n = len(sel)

    # -- counters: heavy-tailed (lognormal) bytes around the edge's medians
    # A pod's traffic to a service (or to S3) is spread over the backends it lands on.
    sigma = st.e_sigma[c_edge]
    spread = np.where(st.e_split[c_edge], np.log(np.minimum(1.0, 2.0 / np.maximum(size[sel], 1))), 0.0)
    tx = np.maximum(np.exp(st.e_tx[c_edge] + spread + sigma * rng.standard_normal(n)), 40).astype(np.int64)
    rx = np.maximum(np.exp(st.e_rx[c_edge] + spread + sigma * rng.standard_normal(n)), 40).astype(np.int64)
    udp = st.e_proto[c_edge] == 17
    seg = np.where(udp, rng.uniform(60, 180, n), rng.uniform(300, 1448, n))
    tx_pk = np.maximum(np.ceil(tx / seg), 1).astype(np.int64)
    rx_pk = np.maximum(np.ceil(rx / seg), 1).astype(np.int64)
    conns = 1 + rng.poisson(np.where(udp, 3.0, 0.6), n).astype(np.int64)

    # -- the rows each node reports
    inbound = st.e_inbound[c_edge]
    mdst, morig, mnode, mpod = members["dst"][c_mem], members["orig"][c_mem], members["node"][c_mem], members["pod"][c_mem]
    port = st.e_port[c_edge]
    tport = np.where(members["tport"][c_mem] >= 0, members["tport"][c_mem], port)
    is_pod_src = st.pod_is_pod[c_src]
    src_pod = np.where(is_pod_src, p["name"][c_src], -1)
    src_ns = np.where(is_pod_src, st.pod_ns[c_src], -1)
    mpod_name = np.where(mpod >= 0, p["name"][np.maximum(mpod, 0)], -1)
    mpod_ns = np.where(mpod >= 0, st.pod_ns[np.maximum(mpod, 0)], -1)
    local_dst = (mpod >= 0) & (mnode == c_node)

    cls = members["cls"][c_mem]
    zonal = cls == ZONAL
    dn = np.maximum(mnode, 0)
    zcls = np.where(c.node_region[c_node] != c.node_region[dn], CLS["cross_region"],
                    np.where(c.node_zone[c_node] != c.node_zone[dn], CLS["cross_zone"], CLS["same_zone"]))
    cls = np.where(zonal, zcls, cls)
    # cloud services of the cluster's provider: free-of-egress in the node's region, else inter-region
    creg, csvc = members["creg"][c_mem], members["csvc"][c_mem]
    in_region = creg == c.node_region[c_node]
    cls = np.where(creg >= 0, np.where(in_region, CLS["cloud_api"], CLS["cross_region"]), cls)
    # NAT gateway: outbound to public cloud or internet addresses from nodes behind one, except
    # services the region's gateway endpoints serve
    public_dst = np.isin(cls, [CLS["internet_egress"], CLS["cloud_api"], CLS["cross_region"]]) & (members["kind"][c_mem] == KIND["external"]) \
        & ~np.isin(members["dst"][c_mem], st.private_outside)
    gw_ep = np.isin(csvc, list(st.gw_endpoints)) & in_region & (creg >= 0)
    nat = np.where(st.nat_node[c_node] & public_dst & ~inbound & ~gw_ep, st.nat_code, -1)
    # NodePort clients: the load balancer picks a node of the pod's region (by the client's address)
    relay = st.e_relay[c_edge] & inbound
    via = c_node.copy()
    for r, nodes in enumerate(st.region_nodes):
        m = relay & (c.node_region[c_node] == r)
        via[m] = nodes[mdst[m] % len(nodes)]

    out = {
        "node": via,
        "dir": inbound.astype(np.int64),
        # outside clients dial the pod: the pod is the peer, the client the originator
        "src": np.where(inbound, mdst, src_ip),
        "dst": np.where(inbound, src_ip, mdst),
        "orig": np.where(relay, c.node_ip[via], np.where(inbound, src_ip, morig)),
        "oport": np.where(relay, NODE_PORT, port),
        "dport": np.where(inbound, port, tport),
        "proto": st.e_proto[c_edge],
        "tx": tx, "txp": tx_pk, "rx": rx, "rxp": rx_pk, "conn": conns,
        "r_src_pod": np.where(inbound, -1, src_pod),
        "r_src_ns": np.where(inbound, -1, src_ns),
        "r_dst_pod": np.where(inbound, np.where(via == c_node, src_pod, -1), np.where(local_dst, mpod_name, -1)),
        "r_dst_ns": np.where(inbound, np.where(via == c_node, src_ns, -1), np.where(local_dst, mpod_ns, -1)),
        "keep": np.ones(n, dtype=bool),
        "cls": np.where(inbound, CLS["internet_egress"], cls),
        "kind": np.where(inbound, KIND["external"], members["kind"][c_mem]),
        "x_src_pod": src_pod,
        "x_src_ns": src_ns,
        "dst_name": np.where(inbound, -1, members["name"][c_mem]),
        "dst_ns": np.where(inbound, -1, members["ns"][c_mem]),
        "nat": nat,
        "csvc": np.where(inbound, -1, csvc),
    }
    # The server's node sees the same connection arrive: an inbound duplicate to drop.
    d = members["dup"][c_mem] & (mnode != c_node) & ~inbound
    dup = {
        "node": mnode[d], "dir": np.ones(d.sum(), dtype=np.int64),
        "src": src_ip[d], "dst": mdst[d], "orig": mdst[d], "oport": tport[d], "dport": tport[d],
        "proto": out["proto"][d], "tx": tx[d], "txp": tx_pk[d], "rx": rx[d], "rxp": rx_pk[d], "conn": conns[d],
        "r_src_pod": np.full(d.sum(), -1), "r_src_ns": np.full(d.sum(), -1),
        "r_dst_pod": mpod_name[d], "r_dst_ns": mpod_ns[d],
        "keep": np.zeros(d.sum(), dtype=bool),
        "cls": np.full(d.sum(), -1), "kind": np.full(d.sum(), -1), "x_src_pod": np.full(d.sum(), -1),
        "x_src_ns": np.full(d.sum(), -1), "dst_name": np.full(d.sum(), -1), "dst_ns": np.full(d.sum(), -1),
        "nat": np.full(d.sum(), -1), "csvc": np.full(d.sum(), -1),
    }
    # The relayed hop: the pod's node sees the connection arrive from the relay node's address
    # (SNAT); the job keeps it, as transfer between the two nodes charged to the pod.
    h = relay & (via != c_node)
    nh = int(h.sum())
    hop_cls = np.where(c.node_zone[c_node[h]] != c.node_zone[via[h]], CLS["cross_zone"], CLS["same_zone"])
    hop = {
        "node": c_node[h], "dir": np.ones(nh, dtype=np.int64),
        "src": c.node_ip[via[h]], "dst": src_ip[h], "orig": src_ip[h], "oport": port[h], "dport": port[h],
        "proto": out["proto"][h], "tx": tx[h], "txp": tx_pk[h], "rx": rx[h], "rxp": rx_pk[h], "conn": conns[h],
        "r_src_pod": np.full(nh, -1), "r_src_ns": np.full(nh, -1), "r_dst_pod": src_pod[h], "r_dst_ns": src_ns[h],
        "keep": np.ones(nh, dtype=bool), "cls": hop_cls, "kind": np.full(nh, KIND["node"]),
        "x_src_pod": src_pod[h], "x_src_ns": src_ns[h], "dst_name": st.node_name_code[via[h]],
        "dst_ns": np.full(nh, -1), "nat": np.full(nh, -1), "csvc": np.full(nh, -1),
    }
    rows = {k: np.concatenate([out[k], dup[k], hop[k]]) for k in out}
    rows = _aggregate(rows)
    flows, expected = _flow_tables(c, st, rows, ws_us)
    nodes_sorted = rows["node"]
    return WindowTables(
        window_start=ws, flows=flows, expected=expected, dns=dns[0],
        flow_bounds=_bounds(c, nodes_sorted), dns_bounds=_bounds(c, dns[1]),
    )


_KEY = ("node", "dir", "src", "dst", "orig", "oport", "dport", "proto")
_SUMS = ("tx", "txp", "rx", "rxp", "conn")


def _aggregate(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sum rows sharing (node, flow key), as the accounter does; sorted by node then key."""
    order = np.lexsort(tuple(rows[k] for k in reversed(_KEY)))
    rows = {k: v[order] for k, v in rows.items()}
    n = len(order)
    if n == 0:
        return rows
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in _KEY:
        change[1:] |= rows[k][1:] != rows[k][:-1]
    starts = np.flatnonzero(change)
    out = {k: v[starts] for k, v in rows.items()}
    for k in _SUMS:
        out[k] = np.add.reduceat(rows[k], starts)
    return out


def _bounds(c: Cluster, nodes_sorted: np.ndarray) -> dict[str, tuple[int, int]]:
    lo = np.searchsorted(nodes_sorted, np.arange(len(c.node_names)), side="left")
    hi = np.searchsorted(nodes_sorted, np.arange(len(c.node_names)), side="right")
    return {name: (int(a), int(b)) for name, a, b in zip(c.node_names, lo, hi) if b > a}


def _str(st: _Static, codes: np.ndarray) -> pa.Array:
    """Code array -> string array (-1 -> null), one vectorized take."""
    return st.strings.take(pa.array(codes, mask=codes < 0, type=pa.int64()))


def _ts(value_us: int, n: int) -> pa.Array:
    return pa.array(np.full(n, value_us, dtype=np.int64), type=pa.int64()).cast(S.TS)


def _flow_tables(c: Cluster, st: _Static, r: dict, ws_us: int) -> tuple[pa.Table, pa.Table]:
    n = len(r["node"])
    node = _str(st, st.node_name_code[r["node"]])
    direction = pa.array(_DIRECTIONS[r["dir"]], type=pa.string())
    src, dst, orig = _str(st, r["src"]), _str(st, r["dst"]), _str(st, r["orig"])
    oport = pa.array(r["oport"].astype(np.int32))
    dport = pa.array(r["dport"].astype(np.int32))
    proto = pa.array(r["proto"].astype(np.int16))
    ws = _ts(ws_us, n)
    flows = pa.Table.from_arrays(
        [ws, _ts(ws_us + 60 * _US, n), node, direction, src, dst, orig, oport, dport, proto,
         pa.array(r["tx"]), pa.array(r["txp"]), pa.array(r["rx"]), pa.array(r["rxp"]), pa.array(r["conn"]),
         _str(st, r["r_src_pod"]), _str(st, r["r_src_ns"]), _str(st, r["r_dst_pod"]), _str(st, r["r_dst_ns"])],
        schema=S.RAW_FLOWS,
    )
    cls_names = pa.array(CLASS_NAMES, type=pa.string())
    kind_names = pa.array(KINDS, type=pa.string())
    expected = pa.Table.from_arrays(
        [ws, node, direction, src, dst, orig, oport, dport, proto, pa.array(r["keep"]),
         cls_names.take(pa.array(r["cls"], mask=r["cls"] < 0)),
         kind_names.take(pa.array(r["kind"], mask=r["kind"] < 0)),
         _str(st, r["x_src_pod"]), _str(st, r["x_src_ns"]), _str(st, r["dst_name"]), _str(st, r["dst_ns"]),
         _str(st, r["nat"]), _str(st, r["csvc"])],
        schema=EXPECTED_FLOWS,
    )
    return flows, expected


def _dns_rows(c: Cluster, st: _Static, rng: np.random.Generator, src: np.ndarray, edge: np.ndarray,
              members: dict, ptr: np.ndarray, size: np.ndarray, ws_us: int) -> tuple[pa.Table, np.ndarray]:
    """One row per (resolving pod, name, answer IP): the client asked the name it uses."""
    p = c.pod
    i, off = _expand(size)
    mem = ptr[i] + off
    named = members["dname"][mem] >= 0
    i, mem = i[named], mem[named]
    client = p["ip4"][src[i]]       # the resolver answers over the pod's primary address
    node = p["node"][src[i]]
    order = np.lexsort((members["dst"][mem], members["dname"][mem], client, node))
    i, mem, client, node = i[order], mem[order], client[order], node[order]
    n = len(i)
    # Lookups of one pod in one window happen together, 0.05-3 s into the window.
    pod_t = rng.integers(50_000, 3_000_000, size=len(p["node"]))
    seen = ws_us + pod_t[src[i]]
    table = pa.Table.from_arrays(
        [_ts(ws_us, n), _ts(ws_us + 60 * _US, n), _str(st, st.node_name_code[node]), _str(st, client),
         _str(st, members["dname"][mem]), _str(st, members["dst"][mem]),
         pa.array(st.e_ttl[edge[i]].astype(np.int32)),
         pa.array(seen.astype(np.int64), type=pa.int64()).cast(S.TS),
         pa.ListArray.from_arrays(np.zeros(n + 1, np.int32), pa.array([], pa.string()))],  # answered directly
        schema=S.RAW_DNS,
    )
    return table, node
