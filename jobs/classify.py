"""Classification stage (docs/costing.md §4 cloud tags, §5 traffic_class).

Input: the table `resolve.resolve` returns (dst_ip a dictionary column of unique addresses).
Output: the same table plus `traffic_class`, `dst_cloud_provider|service|region`, dst_zone /
dst_region completed from rules, config.subnets and cloud ranges, and hidden columns for
pricing (conform drops them): `_rule` (int32 index into config.rules, -1 for none), `_public`
(a globally routable external address), `_internal` (a cluster destination). Address properties (user rule, IMDS, private, cloud range) are computed
once per unique address; domain patterns once per unique domain.
"""
from __future__ import annotations

import fnmatch
import re

import numpy as np
import pyarrow as pa

from jobs.ipaddr import PrefixTable, is_platform, is_private, parse_ips
from jobs.resolve import KIND, choose, common_codes, dict_parts, equals, pick, valid
from lake import schema as S

CLASS = {c: i for i, c in enumerate(S.TRAFFIC_CLASSES)}

#: private-link names: a DNS answer whose name or any CNAME in its chain matches is a private
#: endpoint (jobs/dns.py keeps the first matching chain name as dst_cname)
PRIVATE_LINK_PATTERNS = ("*.vpce.amazonaws.com", "*.privatelink.*")

#: private destinations by DNS name, checked in this order (case-insensitive globs). "zonal":
#: managed databases and caches inside the VPC, priced by the zones of the two ends (their zone
#: comes from config.subnets or a rule; unknown without one). Any other *.amazonaws.com name at
#: a private address is an interface endpoint with private DNS.
DOMAIN_PATTERNS = (
    ("private_link", PRIVATE_LINK_PATTERNS),
    ("k8s_control_plane", ("*.eks.amazonaws.com", "*.azmk8s.io", "*.gke.googleapis.com")),
    ("load_balancer", ("internal-*.elb.amazonaws.com", "*.internal.cloudapp.azure.com")),
    ("zonal", ("*.rds.amazonaws.com", "*.cache.amazonaws.com")),
    ("private_link", ("*.amazonaws.com",)),
    ("cloud_api", ("*.googleapis.com", "*.vault.azure.net", "*.azure.com", "*.windows.net")),
)
ZONAL = -1  # domain class code: decided by zones, like an in-cluster destination


_DOMAIN_RES = [(cls, re.compile("|".join(fnmatch.translate(p) for p in patterns))) for cls, patterns in DOMAIN_PATTERNS]
PRIVATE_LINK_RE = re.compile("|".join(fnmatch.translate(p) for p in PRIVATE_LINK_PATTERNS))


def domain_class(domain: str | None, cname: str | None = None) -> str:
    """Class of a private destination by its DNS name (and the private-link name of its CNAME
    chain, which wins); "zonal" for managed databases; external_private when nothing matches."""
    if cname and PRIVATE_LINK_RE.match(cname.lower().rstrip(".")):
        return "private_link"
    if domain:
        d = domain.lower().rstrip(".")
        for cls, rx in _DOMAIN_RES:
            if rx.match(d):
                return cls
    return "external_private"


def rules_table(rules) -> PrefixTable | None:
    return PrefixTable([r.cidr for r in rules]) if rules else None


def subnets_table(subnets) -> PrefixTable | None:
    return PrefixTable([s.cidr for s in subnets]) if subnets else None


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
    subnets = getattr(ctx, "subnets", None)
    u_sub = subnets.lookup(ips) if subnets is not None else np.full(len(ipd), -1, np.int32)
    u_imds, u_private = is_platform(ips), is_private(ips)
    safe = np.maximum(did, 0)
    has_ip = did >= 0
    rule = np.where(external & has_ip, u_rule[safe] if len(ipd) else -1, -1).astype(np.int64)
    sub = np.where(external & has_ip & (rule < 0), u_sub[safe] if len(ipd) else -1, -1).astype(np.int64)
    imds = external & has_ip & (u_imds[safe] if len(ipd) else False)
    private = external & has_ip & (u_private[safe] if len(ipd) else False)

    # ---- per unique (domain, private-link CNAME) pair
    dd, dcodes = dict_parts(t.column("dst_domain"))
    if "dst_cname" in t.column_names:
        ld, lcodes = dict_parts(t.column("dst_cname"))
    else:
        ld, lcodes = pa.array([], pa.string()), np.full(n, -1, np.int64)
    u_dom = np.array([ZONAL if (c := domain_class(d)) == "zonal" else CLASS[c] for d in dd.to_pylist()], np.int64)
    dom_cls = np.where(dcodes >= 0, u_dom[np.maximum(dcodes, 0)] if len(u_dom) else 0, CLASS["external_private"])
    dom_cls = np.where(lcodes >= 0, CLASS["private_link"], dom_cls)

    # ---- zones and regions: cluster destinations from the inventory; private addresses from
    # a rule or config.subnets; cloud services from their published range
    zone_col, region_col = t.column("dst_zone"), t.column("dst_region")
    rules, subs = ctx.config.rules, getattr(ctx.config, "subnets", [])
    if rules or subs:
        zd, zc = dict_parts(zone_col)
        rd_, rc_ = dict_parts(region_col)
        rz, rr = pa.array([r.zone for r in rules], pa.string()), pa.array([r.region for r in rules], pa.string())
        sz_, sr_ = pa.array([x.zone for x in subs], pa.string()), pa.array([x.region for x in subs], pa.string())
        # a subnet without a region is in the source's region
        src_rd, src_rc = dict_parts(t.column("src_region"))
        sub_has_region = np.array([x.region is not None for x in subs] + [False], bool)
        sub_r = np.where(sub_has_region[np.where(sub >= 0, sub, len(subs))], sub, -1)
        zone_col = choose(n, [(rule < 0, zd, np.where(sub < 0, zc, -1)), (rule >= 0, rz, rule), (sub >= 0, sz_, sub)])
        region_col = choose(n, [(rule < 0, rd_, np.where(sub < 0, rc_, -1)), (rule >= 0, rr, rule), (sub >= 0, sr_, sub_r),
                                (sub >= 0, src_rd, src_rc)])

    # cloud tags for external destinations, from the published ranges
    prov = serv = reg = None
    same_cloud = np.zeros(n, bool)
    if ctx.ranges is not None and len(ipd):
        u_prov, u_serv, u_reg = ctx.ranges.lookup(ips)
        ext_ids = np.where(external, did, -1)
        prov, serv, reg = pick(u_prov, ext_ids), pick(u_serv, ext_ids), pick(u_reg, ext_ids)
        # the source's provider and a region its cards price: a cloud service, not the internet
        pc_s, pc_d = common_codes(t.column("src_provider"), prov)
        known = np.array([ctx.cards.has_region(p, r) for p, r in zip(u_prov.to_pylist(), u_reg.to_pylist())] + [False], bool)
        same_cloud = external & has_ip & ~private & ~imds & (rule < 0) & (pc_s >= 0) & (pc_s == pc_d) \
            & known[np.where(ext_ids >= 0, ext_ids, len(ipd))]
        if same_cloud.any():
            rd_, rc_ = dict_parts(region_col)
            cd_, cc_ = dict_parts(reg)
            region_col = choose(n, [(~same_cloud, rd_, rc_), (same_cloud, cd_, cc_)])

    # ---- rule 1: in-cluster destinations (and zonal private ones)
    kube = (((kind == KIND["service"]) & equals(t.column("dst_service"), "kubernetes"))
            | ((kind == KIND["endpoint"]) & equals(t.column("dst_name"), "kubernetes"))) \
        & equals(t.column("dst_namespace"), "default")
    zone_known = valid(t.column("src_zone")) & valid(zone_col)
    sr, dr = common_codes(t.column("src_region"), region_col)
    sz, dz = common_codes(t.column("src_zone"), zone_col)
    cross_region = (sr >= 0) & (dr >= 0) & (sr != dr)  # an unknown region is not a crossing
    internal = np.select(
        [kube, cross_region, ~zone_known, sz != dz],
        [CLASS["k8s_control_plane"], CLASS["cross_region"], CLASS["unknown"], CLASS["cross_zone"]],
        CLASS["same_zone"])

    # ---- rule 2: external destinations
    rule_cls = np.array([CLASS[r.cls] for r in ctx.config.rules] or [0], np.int64)
    cloud_cls = np.where(cross_region, CLASS["cross_region"], CLASS["cloud_api"])
    ext = np.select(
        [rule >= 0, imds, private & (dom_cls == ZONAL), private, same_cloud],
        [rule_cls[np.maximum(rule, 0)], CLASS["imds"], internal, dom_cls, cloud_cls],
        CLASS["internet_egress"])
    cls = np.where(external, ext, internal)

    out = {name: t.column(name) for name in t.column_names}
    out["traffic_class"] = pick(pa.array(S.TRAFFIC_CLASSES), cls)
    if prov is not None:
        out["dst_cloud_provider"], out["dst_cloud_service"], out["dst_cloud_region"] = prov, serv, reg
    out["dst_zone"], out["dst_region"] = zone_col, region_col
    out["_rule"] = pa.array(rule.astype(np.int32))
    out["_public"] = pa.array(external & has_ip & ~private & ~imds)
    out["_internal"] = pa.array(~external)
    return pa.table(out)
