"""Classification stage (docs/costing.md §4 cloud tags, §5 traffic_class).

Input: the table `resolve.resolve` returns (dst_ip a dictionary column of unique addresses).
Output: the same table plus `traffic_class`, `dst_cloud_provider|service|region`, and
`_rule` (int32 index into config.rules, -1 when no user rule matched; pricing uses it and
conform drops it). Address properties (user rule, IMDS, private, cloud range) are computed
once per unique address; domain patterns once per unique domain.
"""
from __future__ import annotations

import fnmatch
import re

import numpy as np
import pyarrow as pa

from jobs.ipaddr import PrefixTable, is_imds, is_private, parse_ips
from jobs.resolve import KIND, choose, common_codes, dict_parts, equals, pick, valid
from lake import schema as S

CLASS = {c: i for i, c in enumerate(S.TRAFFIC_CLASSES)}

#: private destinations by DNS name, checked in this order (case-insensitive globs)
DOMAIN_PATTERNS = (
    ("private_link", ("*.vpce.amazonaws.com", "*.privatelink.*", "*.privatelink.*.azure.com")),
    ("k8s_control_plane", ("*.eks.amazonaws.com", "*.azmk8s.io", "*.gke.googleapis.com")),
    ("load_balancer", ("internal-*.elb.amazonaws.com", "*.internal.cloudapp.azure.com")),
    ("cloud_api", ("*.amazonaws.com", "*.googleapis.com", "*.vault.azure.net", "*.azure.com", "*.windows.net")),
)


_DOMAIN_RES = [(cls, re.compile("|".join(fnmatch.translate(p) for p in patterns))) for cls, patterns in DOMAIN_PATTERNS]


def domain_class(domain: str | None) -> str:
    """Class of a private destination by its DNS name; external_private when nothing matches."""
    if domain:
        d = domain.lower().rstrip(".")
        for cls, rx in _DOMAIN_RES:
            if rx.match(d):
                return cls
    return "external_private"


def rules_table(rules) -> PrefixTable | None:
    return PrefixTable([r.cidr for r in rules]) if rules else None


def classify(t: pa.Table, ctx) -> pa.Table:
    n = t.num_rows
    kd, kcodes = dict_parts(t.column("dst_kind"))
    kmap = np.array([KIND.get(k, KIND["external"]) for k in kd.to_pylist()], np.int64)
    kind = kmap[np.maximum(kcodes, 0)] if len(kmap) else np.full(n, KIND["external"])
    external = kind == KIND["external"]

    # ---- per unique destination address
    ipd, did = dict_parts(t.column("dst_ip"))
    ips = parse_ips(ipd)
    u_rule = ctx.rules.lookup(ips) if ctx.rules is not None else np.full(len(ipd), -1, np.int32)
    u_imds, u_private = is_imds(ips), is_private(ips)
    safe = np.maximum(did, 0)
    has_ip = did >= 0
    rule = np.where(external & has_ip, u_rule[safe] if len(ipd) else -1, -1).astype(np.int64)
    imds = external & has_ip & (u_imds[safe] if len(ipd) else False)
    private = external & has_ip & (u_private[safe] if len(ipd) else False)

    # ---- per unique domain
    dd, dcodes = dict_parts(t.column("dst_domain"))
    u_dom = np.array([CLASS[domain_class(d)] for d in dd.to_pylist()], np.int64)
    dom_cls = np.where(dcodes >= 0, u_dom[np.maximum(dcodes, 0)] if len(u_dom) else 0, CLASS["external_private"])

    # ---- rule 1: in-cluster destinations
    kube = (((kind == KIND["service"]) & equals(t.column("dst_service"), "kubernetes"))
            | ((kind == KIND["endpoint"]) & equals(t.column("dst_name"), "kubernetes"))) \
        & equals(t.column("dst_namespace"), "default")
    zone_known = valid(t.column("src_zone")) & valid(t.column("dst_zone"))
    sr, dr = common_codes(t.column("src_region"), t.column("dst_region"))
    sz, dz = common_codes(t.column("src_zone"), t.column("dst_zone"))
    cross_region = (sr >= 0) & (dr >= 0) & (sr != dr)  # an unknown region is not a crossing
    internal = np.select(
        [kube, ~zone_known, cross_region, sz != dz],
        [CLASS["k8s_control_plane"], CLASS["unknown"], CLASS["cross_region"], CLASS["cross_zone"]],
        CLASS["same_zone"])

    # ---- rule 2: external destinations
    rule_cls = np.array([CLASS[r.cls] for r in ctx.config.rules] or [0], np.int64)
    ext = np.select(
        [rule >= 0, imds, private],
        [rule_cls[np.maximum(rule, 0)], CLASS["imds"], dom_cls],
        CLASS["internet_egress"])
    cls = np.where(external, ext, internal)

    out = {name: t.column(name) for name in t.column_names}
    out["traffic_class"] = pick(pa.array(S.TRAFFIC_CLASSES), cls)
    # cloud tags for external destinations, from the published ranges
    if ctx.ranges is not None and len(ipd):
        prov, serv, reg = ctx.ranges.lookup(ips)
        ext_ids = np.where(external, did, -1)
        out["dst_cloud_provider"] = pick(prov, ext_ids)
        out["dst_cloud_service"] = pick(serv, ext_ids)
        out["dst_cloud_region"] = pick(reg, ext_ids)
    # a user rule may name the destination's zone and region
    rules = ctx.config.rules
    if rules:
        rz = pa.array([r.zone for r in rules], pa.string())
        rr = pa.array([r.region for r in rules], pa.string())
        out["dst_zone"] = choose(n, [(rule < 0, dict_parts(t.column("dst_zone"))[0], dict_parts(t.column("dst_zone"))[1]),
                                     (rule >= 0, rz, rule)])
        out["dst_region"] = choose(n, [(rule < 0, dict_parts(t.column("dst_region"))[0], dict_parts(t.column("dst_region"))[1]),
                                       (rule >= 0, rr, rule)])
    out["_rule"] = pa.array(rule.astype(np.int32))
    return pa.table(out)
