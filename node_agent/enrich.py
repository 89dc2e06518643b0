"""Attribution: which addresses are this node's, and which pod holds an address.

The accounter asks `Attribution.resolve(packed_ip)` when an address is first seen in a
window (node_agent/accounter.py), so a pod deleted later in the window keeps its bytes;
at the cut, `is_local` and `lookup` complete what was not known then (an informer that
synced in the meantime). An address is local when it is one of the host's own, a pod IP
the node-filtered informer knows (deleted pods' IPs are kept for a while, see
`PodIndex`), or inside the node's pod CIDRs (`spec.podCIDRs`): before the informer has
synced and after a pod is gone, its flows are still this node's, never transit.

hostNetwork pods carry the node's IP: their traffic is the node's, so their names stay
null (never an arbitrary hostNetwork pod).

`enrich(table, lookup)` fills pod columns into an existing RAW_FLOWS table (tools, tests).
"""
from __future__ import annotations

import socket
from typing import Callable, Optional

# lookup(ip) -> (pod name, namespace, host_network) or None; PodIndex.lookup has this shape.
Lookup = Callable[[str], Optional[tuple]]


class Attribution:
    def __init__(self, local_addrs: Callable[[], set[str]], pod_index=None):
        self.local_addrs = local_addrs   # the host's own addresses (cached by LocalAddrs)
        self.pod_index = pod_index

    def resolve(self, packed: bytes) -> tuple[bool, str | None, str | None]:
        ip = socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)
        pod = ns = None
        local = False
        if self.pod_index is not None:
            hit = self.pod_index.lookup(ip)
            if hit is not None:
                local = True
                if not hit[2]:
                    pod, ns = hit[0], hit[1]
            elif self.pod_index.in_pod_cidr(ip):
                local = True
        if not local:
            local = ip in self.local_addrs()
        return local, pod, ns

    def is_local(self, ip: str) -> bool:
        if ip in self.local_addrs():
            return True
        idx = self.pod_index
        return idx is not None and (idx.lookup(ip) is not None or idx.in_pod_cidr(ip))

    def lookup(self, ip: str):
        return self.pod_index.lookup(ip) if self.pod_index is not None else None


def enrich(table, lookup: Lookup | None):
    """RAW_FLOWS -> the same table with src/dst pod and namespace looked up by src_ip and
    dst_ip (the real peer after NAT), once per unique IP, filled with vectorized take."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if lookup is None or table.num_rows == 0:
        return table
    src = table.column("src_ip").combine_chunks()
    dst = table.column("dst_ip").combine_chunks()
    unique = pc.unique(pa.concat_arrays([src, dst]).drop_null())
    ips, names, namespaces = [], [], []
    for ip in unique.to_pylist():
        hit = lookup(ip)
        if hit and not hit[2]:
            ips.append(ip)
            names.append(hit[0])
            namespaces.append(hit[1])
    if not ips:
        return table
    keys = pa.array(ips, pa.string())
    names_arr = pa.array(names, pa.string())
    ns_arr = pa.array(namespaces, pa.string())
    for side, col in (("src", src), ("dst", dst)):
        idx = pc.index_in(col, value_set=keys)
        table = _set(table, f"{side}_pod", pc.take(names_arr, idx))
        table = _set(table, f"{side}_namespace", pc.take(ns_arr, idx))
    return table


def _set(table, name: str, values):
    i = table.schema.get_field_index(name)
    return table.set_column(i, table.schema.field(i), values)
