"""Resolution stages: raw flow rows -> oriented rows -> rows with source and destination
attributed as of their window (docs/costing.md §1-4).

Stages (all pure, Arrow in, Arrow out):
- `encode(raw)`: RAW_FLOWS with src_ip/dst_ip/orig_dst_ip as dictionary<int32, string>
  columns sharing ONE dictionary of unique addresses (everything downstream resolves that
  dictionary once and maps back by index), window_end and node dictionary-encoded.
- `orient(t, ctx)`: drops inbound rows whose peer is a cluster pod or node (the peer's node
  reports the same flow as outbound) and turns the remaining inbound rows around so src_* is
  always the cluster side.
- `resolve(t, ctx)`: the COST_FLOWS attribution columns (src_* and dst_* up to dst_domain)
  as dictionary-encoded arrays; traffic_class, cloud tags and cost come later.

Per call, each inventory kind contributes only the snapshots the rows' windows select, and
each lookup is keyed by (snapshot, id into a per-call dictionary): integer indexing over the
rows, never string joins.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.inventory import KeyLookup, ids_in, to_us
from lake import schema as S

IP_COLS = ("src_ip", "dst_ip", "orig_dst_ip")
KIND = {k: i for i, k in enumerate(S.DST_KINDS)}


# ------------------------------------------------------------------ helpers

def _single(col) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        if pa.types.is_dictionary(col.type) and col.num_chunks > 1:
            d0 = col.chunk(0).dictionary
            if not all(c.dictionary.equals(d0) for c in col.chunks[1:]):
                try:
                    col = col.unify_dictionaries()
                except pa.ArrowInvalid:  # dictionaries holding nulls: decode, re-encode
                    col = pc.dictionary_encode(col.cast(col.type.value_type))
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def dict_parts(col) -> tuple[pa.Array, np.ndarray]:
    """(dictionary, int64 codes with -1 for null) of a column, encoding it if needed."""
    col = _single(col)
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    ind = col.indices
    if ind.null_count:
        codes = ind.cast(pa.int64()).fill_null(-1).to_numpy()
    else:
        codes = ind.to_numpy().astype(np.int64)
    if col.dictionary.null_count:  # `pick` encodes null as a null dictionary entry
        null_entry = col.dictionary.is_null().to_numpy(zero_copy_only=False)
        codes = np.where(null_entry[np.maximum(codes, 0)], -1, codes)
    return col.dictionary, codes


def value_parts(col) -> tuple[pa.Array, np.ndarray]:
    """Like dict_parts, but with a dictionary of distinct values (stage outputs reuse large
    dictionaries with repeated values)."""
    d, codes = dict_parts(col)
    u = pc.unique(d.cast(pa.string()).drop_null())
    remap = ids_in(d, u)
    return u, (np.where(codes >= 0, remap[np.maximum(codes, 0)], -1) if len(remap) else codes)


def pick(dictionary: pa.Array, idx: np.ndarray) -> pa.DictionaryArray:
    """dictionary[idx] as a dictionary array; idx < 0 gives null (a null entry appended to
    the dictionary, so the indices need no validity bitmap)."""
    dictionary = dictionary.cast(pa.string())
    n = len(dictionary)
    ind = idx.astype(np.int32)  # a copy, never a view of the caller's array
    ind[ind < 0] = n
    return pa.DictionaryArray.from_arrays(pa.array(ind), pa.concat_arrays([dictionary, pa.nulls(1, pa.string())]))


def choose(n: int, parts: list[tuple[np.ndarray | None, pa.Array, np.ndarray]]) -> pa.DictionaryArray:
    """First part whose mask is true (None: every row) and whose index is >= 0 gives the
    row's value, else null."""
    offsets = np.cumsum([0] + [len(d) for _, d, _ in parts])
    out = np.full(n, -1, np.int32)
    for (mask, _, idx), off in reversed(list(zip(parts, offsets))):
        idx = idx.astype(np.int32, copy=False)
        sel = idx >= 0
        if mask is not None:
            sel &= mask
        np.copyto(out, idx + np.int32(off), where=sel)
    dictionary = pa.concat_arrays([d.cast(pa.string()) for _, d, _ in parts]) if parts else pa.array([], pa.string())
    return pick(dictionary, out)


def valid(col) -> np.ndarray:
    return pc.is_valid(_single(col)).to_numpy(zero_copy_only=False)


def equals(col, value: str) -> np.ndarray:
    """col == value per row (false for null), computed on the dictionary."""
    d, codes = dict_parts(col)
    hit = pc.fill_null(pc.equal(d.cast(pa.string()), value), False).to_numpy(zero_copy_only=False)
    return np.where(codes >= 0, hit[np.maximum(codes, 0)], False) if len(hit) else np.zeros(len(codes), bool)


def common_codes(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Codes of two string columns in one shared dictionary (-1 for null)."""
    da, ca = dict_parts(a)
    db, cb = dict_parts(b)
    u = pc.unique(pa.concat_arrays([da.cast(pa.string()), db.cast(pa.string())]))
    ma, mb = ids_in(da, u), ids_in(db, u)
    ra = np.where(ca >= 0, ma[np.maximum(ca, 0)] if len(ma) else -1, -1)
    rb = np.where(cb >= 0, mb[np.maximum(cb, 0)] if len(mb) else -1, -1)
    return ra, rb


# ------------------------------------------------------------------ encode

def encode(raw: pa.Table) -> pa.Table:
    """RAW_FLOWS with the three IP columns sharing one dictionary (input may already be
    dictionary-encoded, e.g. read with read_dictionary)."""
    if any(c.num_chunks > 1 for c in raw.columns):
        raw = raw.combine_chunks()  # one chunk per file otherwise; the stages work on whole columns
    cols = {}
    for field in S.RAW_FLOWS:
        if field.name not in raw.column_names:
            cols[field.name] = pa.nulls(raw.num_rows, field.type)
            continue
        col = raw.column(field.name)
        if pa.types.is_dictionary(col.type) or col.type.equals(field.type):
            cols[field.name] = col
        else:
            try:
                cols[field.name] = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"raw flows column {field.name!r}: cannot cast {col.type} to {field.type}") from exc
    parts = [dict_parts(cols[c]) for c in IP_COLS]
    ipd = pc.unique(pa.concat_arrays([d.cast(pa.string()) for d, _ in parts]).drop_null())
    for name, (d, codes) in zip(IP_COLS, parts):
        remap = ids_in(d, ipd)
        ids = np.where(codes >= 0, remap[np.maximum(codes, 0)] if len(remap) else -1, -1)
        cols[name] = pick(ipd, ids)
    cols["node"] = _single(cols["node"])
    if not pa.types.is_dictionary(cols["node"].type):
        cols["node"] = pc.dictionary_encode(cols["node"])
    return pa.table(cols)


def shared_ip_dictionary(t: pa.Table) -> tuple[pa.Array, dict[str, np.ndarray]]:
    """The IP dictionary and codes of the three IP columns (re-unified if needed)."""
    cols = [_single(t.column(c)) for c in IP_COLS]
    if all(pa.types.is_dictionary(c.type) for c in cols) and cols[0].dictionary.equals(cols[1].dictionary) \
            and cols[0].dictionary.equals(cols[2].dictionary):
        ipd = cols[0].dictionary
        return ipd, {c: a.indices.cast(pa.int64()).fill_null(-1).to_numpy() for c, a in zip(IP_COLS, cols)}
    e = encode(t.select(list(IP_COLS) + ["node"]))
    return shared_ip_dictionary(e)


# ------------------------------------------------------------------ as-of selection

class AsOf:
    """One inventory kind restricted to the snapshots a batch of rows needs."""

    def __init__(self, snaps, we_codes: np.ndarray, we_unique: np.ndarray):
        g = snaps.snap_of(we_unique)
        used = np.unique(g[g >= 0])
        self.table, self.local, g2l = snaps.select(used)
        self.n = len(used)
        self.snap = np.where(g >= 0, g2l[np.maximum(g, 0)], -1)[we_codes] if len(g) else np.zeros(0, np.int64)
        self.rows = np.arange(self.table.num_rows)


def window_codes(t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes per row, unique window_end in us, window_end per row in us)."""
    enc = _single(t.column("window_end"))
    if not pa.types.is_dictionary(enc.type):
        enc = pc.dictionary_encode(enc)
    uniq = to_us(enc.dictionary)
    codes = enc.indices.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return codes, uniq, uniq[codes] if len(uniq) else np.zeros(0, np.int64)


class Inventory:
    """Per-call lookups over the as-of inventory (pods, nodes, services, endpoints)."""

    def __init__(self, ctx, t: pa.Table, ipd: pa.Array, node_dict: pa.Array | None = None):
        codes, uniq, self.we = window_codes(t)
        self.pods = AsOf(ctx.pods, codes, uniq)
        self.nodes = AsOf(ctx.nodes, codes, uniq)
        self.services = AsOf(ctx.services, codes, uniq)
        self.endpoints = AsOf(ctx.endpoints, codes, uniq)
        n_ip = len(ipd)
        P, N, E = self.pods.table, self.nodes.table, self.endpoints.table
        # node names: one dictionary for the reporting node, pods' nodes, endpoints' nodes
        names = [N.column("name"), P.column("node"), E.column("node")]
        if node_dict is not None:
            names.append(node_dict)
        self.names = pc.unique(pa.concat_arrays([_single(c).cast(pa.string()) for c in names]).drop_null())
        n_names = len(self.names)
        # pods: non-hostNetwork by IP; Running pods win over others holding the same IP
        hostnet = pc.fill_null(_single(P.column("host_network")), False).to_numpy(zero_copy_only=False)
        running = pc.fill_null(pc.equal(_single(P.column("phase")), "Running"), False).to_numpy(zero_copy_only=False)
        order = np.lexsort((running,))
        pod_ip = ids_in(P.column("ip"), ipd)
        self.pod_node = ids_in(P.column("node"), self.names)
        o = order[~hostnet[order]]
        self.pod_by_ip = KeyLookup(self.pods.local[o], pod_ip[o], o, self.pods.n, n_ip)
        h = order[hostnet[order]]
        self.hostnet_by_ip = KeyLookup(self.pods.local[h], pod_ip[h], self.pod_node[h], self.pods.n, n_ip)
        # nodes: by name (row) and by internal/external IP (name id)
        node_name = ids_in(N.column("name"), self.names)
        self.node_by_name = KeyLookup(self.nodes.local, node_name, self.nodes.rows, self.nodes.n, n_names)
        loc2 = np.concatenate([self.nodes.local, self.nodes.local])
        ips2 = np.concatenate([ids_in(N.column("external_ip"), ipd), ids_in(N.column("internal_ip"), ipd)])
        self.node_by_ip = KeyLookup(loc2, ips2, np.concatenate([node_name, node_name]), self.nodes.n, n_ip)
        fill = lambda col, v: pc.fill_null(_single(col).cast(pa.string()), v)
        self.node_zone = _single(N.column("zone")).cast(pa.string())
        self.node_region = fill(N.column("region"), ctx.config.region)
        self.node_provider = pc.utf8_lower(fill(N.column("provider"), ctx.config.provider))
        # services by ClusterIP
        Sv = self.services.table
        self.svc_by_ip = KeyLookup(self.services.local, ids_in(Sv.column("cluster_ip"), ipd),
                                   self.services.rows, self.services.n, n_ip)
        # endpoints by IP: the smallest (namespace, service, port) wins, so written last
        if E.num_rows:
            eorder = pc.sort_indices(E, sort_keys=[("namespace", "descending"), ("service", "descending"),
                                                  ("port", "descending")]).to_numpy()
        else:
            eorder = np.zeros(0, np.int64)
        self.ep_by_ip = KeyLookup(self.endpoints.local[eorder], ids_in(E.column("ip"), ipd)[eorder],
                                  eorder, self.endpoints.n, n_ip)
        self.ep_node = ids_in(E.column("node"), self.names)

    def node_ip_owner(self, ip_ids: np.ndarray) -> np.ndarray:
        """Node name id when the address is a node's (or a hostNetwork pod's), else -1."""
        a = self.node_by_ip(self.nodes.snap, ip_ids)
        return np.where(a >= 0, a, self.hostnet_by_ip(self.pods.snap, ip_ids))

    def pod_row_by_name(self, snap: np.ndarray, ns_d, ns_code: np.ndarray, pod_d, pod_code: np.ndarray) -> np.ndarray:
        """Pod row per (snapshot, namespace code, pod name code), -1 where none (the agent
        named a pod the IP lookup did not find); the last row of a snapshot wins."""
        P = self.pods.table
        inv_pod_code, inv_ns_code = ids_in(P.column("name"), pod_d), ids_in(P.column("namespace"), ns_d)
        n_pod = max(len(pod_d), 1)
        key = np.where((inv_pod_code >= 0) & (inv_ns_code >= 0), inv_ns_code * n_pod + inv_pod_code, -1)
        by_name = KeyLookup(self.pods.local, key, self.pods.rows, self.pods.n, (len(ns_d) + 1) * n_pod)
        return by_name(snap, np.where((ns_code >= 0) & (pod_code >= 0), ns_code * n_pod + pod_code, -1))


class _Kind:
    """One kind's distinct rows (`table`), the snapshots the batch's windows pick (`used`,
    global indices) and each row's position among them (`snap`, -1 without any)."""

    def __init__(self, kind, codes: np.ndarray, uniq: np.ndarray):
        self.table = kind.table
        g = kind.snap_of(uniq)
        self.used = np.unique(g[g >= 0])
        local = np.searchsorted(self.used, g) if len(self.used) else np.zeros(len(g), np.int64)
        self.snap = np.where(g >= 0, local, -1)[codes] if len(g) else np.zeros(0, np.int64)


class _Keyed:
    """An interval lookup called like KeyLookup: (position in `kind.used` per row, key ids
    into a per-call dictionary) -> payload. The intervals holding the batch's few snapshots
    become one KeyLookup over (snapshot, key id): integer indexing per row, as before."""

    def __init__(self, lookup, dictionary: pa.Array, kind: _Kind):
        used = kind.used
        kid = ids_in(lookup.keys, dictionary) if len(lookup.keys) else np.zeros(0, np.int64)
        ik = kid[lookup.key] if len(lookup.key) else np.zeros(0, np.int64)
        snaps, keys, pays = [], [], []
        for u, g in enumerate(used):  # a key has at most one interval holding a snapshot
            idx = np.flatnonzero((ik >= 0) & (lookup.start <= g) & (lookup.stop > g))
            snaps.append(np.full(len(idx), u, np.int64))
            keys.append(ik[idx])
            pays.append(lookup.payload[idx])
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
        self.kl = KeyLookup(cat(snaps), cat(keys), cat(pays), len(used), len(dictionary))

    def __call__(self, snap: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return self.kl(snap, ids)


class IntervalInventory(Inventory):
    """Inventory's lookups over the hour's validity intervals (jobs/intervals.py): the same
    rows, found by interval instead of by (snapshot, key) over every snapshot's rows."""

    def __init__(self, ctx, t: pa.Table, ipd: pa.Array, node_dict: pa.Array | None = None):
        iv = ctx.intervals
        codes, uniq, self.we = window_codes(t)
        self.pods, self.nodes = _Kind(iv.pods, codes, uniq), _Kind(iv.nodes, codes, uniq)
        self.services, self.endpoints = _Kind(iv.services, codes, uniq), _Kind(iv.endpoints, codes, uniq)
        self._iv = iv
        P, N, E = self.pods.table, self.nodes.table, self.endpoints.table
        names = [iv.names] + ([_single(node_dict).cast(pa.string())] if node_dict is not None else [])
        self.names = pc.unique(pa.concat_arrays(names).drop_null())  # the context's names keep their ids
        self.pod_node = ids_in(P.column("node"), self.names)
        self.pod_by_ip = _Keyed(iv.pods.lookups["by_ip"], ipd, self.pods)
        self.hostnet_by_ip = _Keyed(iv.pods.lookups["hostnet_by_ip"], ipd, self.pods)
        self.node_by_name = _Keyed(iv.nodes.lookups["by_name"], self.names, self.nodes)
        self.node_by_ip = _Keyed(iv.nodes.lookups["by_ip"], ipd, self.nodes)
        self.svc_by_ip = _Keyed(iv.services.lookups["by_ip"], ipd, self.services)
        self.ep_by_ip = _Keyed(iv.endpoints.lookups["by_ip"], ipd, self.endpoints)
        self.ep_node = ids_in(E.column("node"), self.names)
        fill = lambda col, v: pc.fill_null(_single(col).cast(pa.string()), v)  # noqa: E731
        self.node_zone = _single(N.column("zone")).cast(pa.string())
        self.node_region = fill(N.column("region"), ctx.config.region)
        self.node_provider = pc.utf8_lower(fill(N.column("provider"), ctx.config.provider))

    def pod_row_by_name(self, snap, ns_d, ns_code, pod_d, pod_code) -> np.ndarray:
        from jobs.intervals import nsname_keys  # noqa: PLC0415
        lk = self._iv.pods.lookups["by_name"]
        keys = nsname_keys(ns_d, ns_code, pod_d, pod_code)
        used = self.pods.used
        g = np.where(snap >= 0, used[np.maximum(snap, 0)] if len(used) else -1, -1)
        return lk.query(g, ids_in(keys, lk.keys))


def inventory(ctx, t: pa.Table, ipd: pa.Array, node_dict: pa.Array | None = None) -> Inventory:
    """The lookups for a batch: over the context's validity intervals when it has them, else
    over its snapshots."""
    if getattr(ctx, "intervals", None) is not None:
        return IntervalInventory(ctx, t, ipd, node_dict)
    return Inventory(ctx, t, ipd, node_dict)


# ------------------------------------------------------------------ orient

#: columns of `outside_clients`: what the relay rule needs of another cell's rows
CLIENT_COLS = ("window_start", "node", "dst_ip", "dst_port")


def _inbound(t: pa.Table, ctx, direction: np.ndarray):
    """The inbound rows' (`direction`) indices, the IP dictionary and codes, the inventory of
    their windows, each source's node (if it is a node's own address) and whether it is in the
    cluster."""
    ipd, ids = shared_ip_dictionary(t)
    inb_idx = np.flatnonzero(direction)
    inv = inventory(ctx, t.select(["window_end"]).take(pa.array(inb_idx)), ipd)
    src = ids["src_ip"][inb_idx]
    owner = inv.node_by_ip(inv.nodes.snap, src)  # a node's own address (relays SNAT to it)
    cluster = (inv.pod_by_ip(inv.pods.snap, src) >= 0) | (inv.node_ip_owner(src) >= 0)
    return inb_idx, ipd, ids, inv, owner, cluster


def outside_clients(t: pa.Table, ctx) -> pa.Table:
    """CLIENT_COLS of the inbound rows whose peer is outside the cluster (encoded rows in):
    the connections a node may have relayed to a backend on another node. A cell holding only
    part of a window's files gets these of the whole window (jobs/tasks.relay_clients)."""
    inb_idx, _, _, _, _, cluster = _inbound(t, ctx, equals(t.column("direction"), "inbound"))
    return t.select(list(CLIENT_COLS)).take(pa.array(inb_idx[~cluster], pa.int64()))


def orient(t: pa.Table, ctx, clients: pa.Table | None = None) -> pa.Table:
    """Keep outbound rows; drop inbound rows from cluster peers, except the second hop of a
    load-balancer or NodePort connection relayed by another node (externalTrafficPolicy:
    Cluster); turn the kept inbound rows around. `clients`: outside_clients of the rows of the
    same windows that are not in `t` (the relaying node's row may be in another cell)."""
    direction = equals(t.column("direction"), "inbound")
    if not direction.any():
        return t
    inb_idx, ipd, ids, inv, owner, cluster = _inbound(t, ctx, direction)
    keep_in = np.zeros(t.num_rows, bool)
    keep_in[inb_idx[~cluster]] = True
    relay = _relays(t, inb_idx, ipd, ids, owner, cluster, inv, clients)
    keep_in[inb_idx[relay]] = True
    out = t.filter(pa.array(~direction))
    inb = t.filter(pa.array(keep_in))
    swap = {"src_ip": "dst_ip", "dst_ip": "src_ip", "orig_dst_ip": "src_ip", "dst_port": "orig_dst_port",
            "tx_bytes": "rx_bytes", "rx_bytes": "tx_bytes", "tx_packets": "rx_packets", "rx_packets": "tx_packets",
            "src_pod": "dst_pod", "dst_pod": "src_pod", "src_namespace": "dst_namespace",
            "dst_namespace": "src_namespace"}
    turned = pa.table({name: inb.column(swap.get(name, name)) for name in t.column_names}, schema=t.schema)
    res = pa.concat_tables([out, turned])
    return res


def _relays(t: pa.Table, inb_idx: np.ndarray, ipd: pa.Array, ids: dict, owner: np.ndarray, cluster: np.ndarray,
            inv: "Inventory", clients: pa.Table | None = None) -> np.ndarray:
    """Among the inbound rows: those whose originator is node A's own address while node A,
    in the same window, reported an outside client's connection to the same backend address
    and port. That is the node-to-node hop of a connection A relayed (NodePort or load
    balancer with externalTrafficPolicy: Cluster, SNAT to A): A's row carries the client's
    traffic, this one the hop between the nodes, which is billed on its own. A's row is
    looked for among `t`'s rows and `clients` (outside_clients of other rows)."""
    relay = np.zeros(len(inb_idx), bool)
    cand = cluster & (owner >= 0)
    if not cand.any():
        return relay
    node_d, node_codes = dict_parts(t.column("node"))
    name_map = ids_in(node_d, inv.names)
    reporter = np.where(node_codes >= 0, name_map[np.maximum(node_codes, 0)] if len(name_map) else -1, -1)[inb_idx]
    ws = t.column("window_start").cast(pa.int64()).to_numpy()[inb_idx]
    port = pc.fill_null(t.column("dst_port"), -1).to_numpy().astype(np.int64)[inb_idx]
    dst = ids["dst_ip"][inb_idx]
    ext = ~cluster
    # A's client rows: (window, reporting node, backend ip, backend port)
    a_ws, a_node, a_dst, a_port = ws[ext], reporter[ext], dst[ext], port[ext]
    if clients is not None and clients.num_rows:
        c_ws = clients.column("window_start").cast(pa.int64()).to_numpy()
        c_node = ids_in(clients.column("node").cast(pa.string()), inv.names)
        c_dst = ids_in(clients.column("dst_ip").cast(pa.string()), ipd)
        c_port = pc.fill_null(clients.column("dst_port"), -1).to_numpy().astype(np.int64)
        use = (c_node >= 0) & (c_dst >= 0) & np.isin(c_ws, ws[cand])  # others can match no row here
        a_ws, a_node = np.concatenate([a_ws, c_ws[use]]), np.concatenate([a_node, c_node[use]])
        a_dst, a_port = np.concatenate([a_dst, c_dst[use]]), np.concatenate([a_port, c_port[use]])
    if not len(a_ws):
        return relay
    # vs the candidates' (window, source's node, backend ip, backend port)
    b = (ws[cand], owner[cand], dst[cand], port[cand])
    # one int64 key per row: (window rank, node, address, port), mixed-radix
    wu, wr = np.unique(np.concatenate([a_ws, b[0]]), return_inverse=True)
    wr = wr.reshape(-1)
    n_names, n_ip = len(inv.names) + 1, int(max(dst.max(initial=0), a_dst.max(initial=0), 0)) + 2
    if len(wu) * n_names * n_ip * 65537 >= (1 << 62):  # cannot pack: compare rows
        a = np.stack([a_ws, a_node, a_dst, a_port], axis=1)
        bb = np.stack(b, axis=1)
        keys, inv_codes = np.unique(np.concatenate([a, bb]), axis=0, return_inverse=True)
        inv_codes = inv_codes.reshape(-1)
        seen = np.zeros(len(keys), bool)
        seen[inv_codes[: len(a)]] = True
        relay[np.flatnonzero(cand)] = seen[inv_codes[len(a):]]
        return relay
    key = lambda w, nd, ip, pt: ((w * n_names + (nd + 1)) * n_ip + (ip + 1)) * 65537 + (pt + 1)  # noqa: E731
    ka = key(wr[: len(a_ws)], a_node, a_dst, a_port)
    kb = key(wr[len(a_ws):], *b[1:])
    relay[np.flatnonzero(cand)] = np.isin(kb, ka)
    return relay


# ------------------------------------------------------------------ resolve

def resolve(t: pa.Table, ctx) -> pa.Table:
    """Attribute every row's source and destination as of its window (docs/costing.md §3-4)."""
    n = t.num_rows
    ipd, ids = shared_ip_dictionary(t)
    sid, did, oid = ids["src_ip"], ids["dst_ip"], ids["orig_dst_ip"]
    node_dict, node_codes = dict_parts(t.column("node"))
    inv = inventory(ctx, t, ipd, node_dict)
    P, Sv, E = inv.pods.table, inv.services.table, inv.endpoints.table
    psnap, nsnap, ssnap, esnap = inv.pods.snap, inv.nodes.snap, inv.services.snap, inv.endpoints.snap

    # ---- source (§3)
    name_map = ids_in(node_dict, inv.names)
    src_node_id = np.where(node_codes >= 0, name_map[np.maximum(node_codes, 0)] if len(name_map) else -1, -1)
    srow = inv.node_by_name(nsnap, src_node_id)
    src_is_node = inv.node_ip_owner(sid) >= 0
    r_ip = inv.pod_by_ip(psnap, sid)
    pod_d, pod_code = dict_parts(t.column("src_pod"))
    ns_d, ns_code = dict_parts(t.column("src_namespace"))
    raw = pod_code >= 0
    # does the raw (agent-enriched) pod name agree with the as-of pod at src_ip?
    inv_pod_code, inv_ns_code = ids_in(P.column("name"), pod_d), ids_in(P.column("namespace"), ns_d)
    rsafe = np.maximum(r_ip, 0)
    if P.num_rows:
        agree = (r_ip >= 0) & (inv_pod_code[rsafe] == pod_code) & (inv_ns_code[rsafe] == ns_code)
    else:
        agree = np.zeros(n, bool)
    w_row = np.where(raw, np.where(agree, r_ip, -1), r_ip)
    other = np.flatnonzero(raw & ~agree & ~src_is_node)
    if len(other) and P.num_rows:
        # the agent named a pod the IP lookup did not find: find it by namespace/name
        w_row[other] = inv.pod_row_by_name(psnap[other], ns_d, ns_code[other], pod_d, pod_code[other])
    w_row = np.where(src_is_node, -1, w_row)
    app = ~src_is_node
    cfg = ctx.config
    cols = {
        "window_start": t.column("window_start"),
        "window_end": t.column("window_end"),
        "direction": t.column("direction"),
        "src_node": t.column("node"),
        "src_zone": pick(inv.node_zone, srow),
        "src_region": choose(n, [(None, inv.node_region, srow), (None, pa.array([cfg.region]), np.zeros(n, np.int32))]),
        "src_provider": choose(n, [(None, inv.node_provider, srow), (None, pa.array([cfg.provider]), np.zeros(n, np.int32))]),
        "src_ip": t.column("src_ip"),
        "src_namespace": choose(n, [(raw & app, ns_d, ns_code), (~raw & app, P.column("namespace").combine_chunks(), r_ip)]),
        "src_pod": choose(n, [(raw & app, pod_d, pod_code), (~raw & app, P.column("name").combine_chunks(), r_ip)]),
        "src_workload_kind": pick(_single(P.column("workload_kind")), w_row),
        "src_workload": pick(_single(P.column("workload_name")), w_row),
    }

    # ---- destination (§4)
    r_pod = inv.pod_by_ip(psnap, did)
    svc = inv.svc_by_ip(ssnap, oid)
    svc = np.where(svc >= 0, svc, inv.svc_by_ip(ssnap, did))
    dn_ip = inv.node_ip_owner(did)
    ep = inv.ep_by_ip(esnap, did)
    kind = np.full(n, KIND["external"], np.int64)
    kind = np.where(ep >= 0, KIND["endpoint"], kind)
    kind = np.where(dn_ip >= 0, KIND["node"], kind)
    kind = np.where(r_pod >= 0, KIND["pod"], kind)
    kind = np.where(svc >= 0, KIND["service"], kind)
    pod_node = inv.pod_node[np.maximum(r_pod, 0)] if P.num_rows else np.full(n, -1)
    ep_node = inv.ep_node[np.maximum(ep, 0)] if E.num_rows else np.full(n, -1)
    dst_node = np.where(r_pod >= 0, pod_node, np.where(dn_ip >= 0, dn_ip, np.where(ep >= 0, ep_node, -1)))
    drow = inv.node_by_name(nsnap, dst_node)
    backend = (r_pod >= 0) | (dn_ip >= 0)
    is_svc, is_pod, is_node, is_ep = (kind == KIND[k] for k in ("service", "pod", "node", "endpoint"))
    s_ = lambda c: _single(c)
    cols.update({
        "dst_kind": pick(pa.array(S.DST_KINDS), kind),
        "dst_namespace": choose(n, [(is_svc, s_(Sv.column("namespace")), svc), (is_pod, s_(P.column("namespace")), r_pod),
                                    (is_ep, s_(E.column("namespace")), ep)]),
        "dst_name": choose(n, [(is_svc, s_(Sv.column("name")), svc), (is_pod, s_(P.column("name")), r_pod),
                               (is_node, inv.names, dn_ip), (is_ep, s_(E.column("service")), ep)]),
        "dst_service": pick(s_(Sv.column("name")), svc),
        "dst_pod": pick(s_(P.column("name")), r_pod),
        "dst_workload_kind": pick(s_(P.column("workload_kind")), r_pod),
        "dst_workload": pick(s_(P.column("workload_name")), r_pod),
        "dst_node": pick(inv.names, dst_node),
        "dst_zone": choose(n, [(backend, inv.node_zone, drow), (ep >= 0, s_(E.column("zone")), ep),
                               (ep >= 0, inv.node_zone, drow)]),
        "dst_region": pick(inv.node_region, drow),
        **dict(zip(("dst_domain", "dst_cname"), ctx.dns.lookup(ipd, sid, did, inv.we, with_cname=True))),
        "dst_ip": t.column("dst_ip"),
        "dst_port": t.column("dst_port"),
        "proto": t.column("proto"),
        "tx_bytes": t.column("tx_bytes"),
        "rx_bytes": t.column("rx_bytes"),
        "tx_packets": t.column("tx_packets"),
        "rx_packets": t.column("rx_packets"),
        "_src_nat": pa.array(_src_nat(ctx, inv, srow), pa.int32()),
    })
    return pa.table(cols)


def _src_nat(ctx, inv: "Inventory", srow: np.ndarray) -> np.ndarray:
    """The NAT gateway (index into config.nat_gateways, -1 none) of each row's source node; a
    node missing from the inventory uses the first gateway that selects every node, if any."""
    from jobs.pricing import nat_for_nodes  # noqa: PLC0415 (pricing imports resolve)
    gws = ctx.config.nat_gateways
    if not gws:
        return np.full(len(srow), -1, np.int64)
    per_node = nat_for_nodes(inv.nodes.table, ctx.config)
    default = next((i for i, g in enumerate(gws) if g.all), -1)
    return np.where(srow >= 0, per_node[np.maximum(srow, 0)] if len(per_node) else default, default)
