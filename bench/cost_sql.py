"""The cost job's rules (docs/costing.md) as DuckDB SQL: the baseline `bench/cost_job.py` times.

Written as one would write it for production rather than as a strawman:
- one statement of CTEs from the raw Parquet files to the partitioned output; only the small,
  many-times-joined tables are materialized (inventory lookups keyed by (snapshot, key), DNS);
- every attribute is resolved once per distinct (snapshot set, address) - or (snapshot set,
  address, agent-named pod) for sources - and joined back to the rows on that key;
- DNS: a semi-join keeps only destinations that ever appear in DNS before the as-of join;
- CIDRs are integer prefixes (address >> (width - prefix length)) matched by hash joins;
- the job's tie-breaks: the last row in (file, row) order wins a lookup key, Running pods before
  others; endpoints by the smallest (namespace, service, port) (nulls first, as the job's sort
  leaves them last-written); equal DNS instants by the greatest domain; node IPs: internal
  before external;
- pricing as the job prices: a small table of each card's per-byte rates by (provider, region,
  class), an inter-region matrix by (provider, sending region, receiving region) joined for both
  directions, the NAT gateway of each node row computed once in the node lookup.
`run(...)` executes it on a connection with the given memory limit and returns timings and
the peak spill (bytes in DuckDB's temporary directory).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import threading
import time
from pathlib import Path

from lake.schema import TRAFFIC_CLASSES

#: classes whose dollars this SQL prices as the job does: all of them (NAT gateways per node
#: selector, public cloud_api rates, inter-region pair rates both ways, peering's zone and region
#: rules, transit-gateway processing, GCP egress by destination group). Not in SQL (a config
#: using them is refused): IPv6 node CIDRs in NAT selectors.
PRICED_ALIKE = frozenset(TRAFFIC_CLASSES)

PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7",
           "fe80::/10")


def _key(net) -> str:
    width = 32 if net.version == 4 else 128
    return str(int(net.network_address) >> (width - net.prefixlen))


def setup(con, cfg, ranges_dir: Path | None, providers_regions: list[tuple[str, str]]) -> list[tuple]:
    """Small reference tables (IP-range prefixes, user rules, rate cards, tier macros): untimed.
    Returns (provider, region, tier macro, free allowance bytes, destination group or None) per
    pool."""
    import pyarrow as pa  # noqa: PLC0415

    from jobs import ipranges, pricing  # noqa: PLC0415
    from lake import schema as S  # noqa: PLC0415

    rows = []  # cloud ranges in load order: later entries win ties, as in jobs/ipaddr.PrefixTable
    for f in sorted(ranges_dir.iterdir()) if ranges_dir else []:
        if f.suffix.lower() != ".json":
            continue
        doc = json.loads(f.read_text())
        prov = ipranges.detect(doc)
        if prov is None:
            continue
        for cidr, service, region in ipranges._READERS[prov](doc):  # noqa: SLF001 - the providers' formats
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                continue
            specific = (prov, service) not in ipranges._GENERIC and bool(service)  # noqa: SLF001
            rows.append((net, prov, service, region, specific))
    con.register("ranges_src", pa.table({
        "fam": pa.array([n.version for n, *_ in rows], pa.int8()),
        "plen": pa.array([n.prefixlen for n, *_ in rows], pa.int16()),
        "k": pa.array([_key(n) for n, *_ in rows], pa.string()),
        "provider": pa.array([r[1] for r in rows], pa.string()), "service": pa.array([r[2] for r in rows], pa.string()),
        "region": pa.array([r[3] for r in rows], pa.string()),
        "rnk": pa.array([((int(r[4]) * 256 + r[0].prefixlen) * 2 + int(bool(r[3]))) * (1 << 32) + i
                         for i, r in enumerate(rows)], pa.int64()),
    }))
    con.execute("""CREATE OR REPLACE TEMP TABLE ranges AS
                   SELECT fam, plen, k::UHUGEINT AS k, arg_max(provider, rnk) AS provider,
                          arg_max(service, rnk) AS service, arg_max(region, rnk) AS region, max(rnk) AS rnk
                   FROM ranges_src GROUP BY fam, plen, k""")
    from jobs.pipeline import _cards_for as _cf  # noqa: PLC0415
    _cards = _cf(cfg)
    pairs = sorted({(r[1], r[3]) for r in rows}, key=lambda x: (x[0] or "", x[1] or ""))
    con.register("known_src", pa.table({"provider": pa.array([p for p, _ in pairs], pa.string()),
                                        "region": pa.array([g for _, g in pairs], pa.string()),
                                        "known": pa.array([_cards.has_region(p, g) for p, g in pairs], pa.bool_())}))
    con.execute("CREATE OR REPLACE TEMP TABLE range_known AS SELECT * FROM known_src")
    rules = cfg.rules
    nets = [ipaddress.ip_network(r.cidr, strict=False) for r in rules]
    con.register("rules_src", pa.table({
        "fam": pa.array([n.version for n in nets], pa.int8()), "plen": pa.array([n.prefixlen for n in nets], pa.int16()),
        "k": pa.array([_key(n) for n in nets], pa.string()),
        "cls": pa.array([r.cls for r in rules], pa.string()),
        "rate": pa.array([r.rate_per_gb for r in rules], pa.float64()),
        "label": pa.array([f"rule:{r.label}" for r in rules], pa.string()),
        "zone": pa.array([r.zone for r in rules], pa.string()), "region": pa.array([r.region for r in rules], pa.string()),
        "rnk": pa.array([n.prefixlen * (1 << 32) + i for i, n in enumerate(nets)], pa.int64()),
    }))
    con.execute("""CREATE OR REPLACE TEMP TABLE rules AS
                   SELECT fam, plen, k::UHUGEINT AS k, arg_max(cls, rnk) AS cls, arg_max(rate, rnk) AS rate,
                          arg_max(label, rnk) AS label, arg_max(zone, rnk) AS zone, arg_max(region, rnk) AS region,
                          max(rnk) AS rnk
                   FROM rules_src GROUP BY fam, plen, k""")
    subs = list(getattr(cfg, "subnets", []) or [])
    snets = [ipaddress.ip_network(x.cidr, strict=False) for x in subs]
    con.register("subnets_src", pa.table({
        "fam": pa.array([n.version for n in snets], pa.int8()), "plen": pa.array([n.prefixlen for n in snets], pa.int16()),
        "k": pa.array([_key(n) for n in snets], pa.string()),
        "zone": pa.array([x.zone for x in subs], pa.string()),
        "region": pa.array([getattr(x, "region", None) for x in subs], pa.string()),
        "rnk": pa.array([n.prefixlen * (1 << 32) + i for i, n in enumerate(snets)], pa.int64())}))
    con.execute("""CREATE OR REPLACE TEMP TABLE subnets AS
                   SELECT fam, plen, k::UHUGEINT AS k, arg_max(zone, rnk) AS zone, arg_max(region, rnk) AS region,
                          max(rnk) AS rnk
                   FROM subnets_src GROUP BY fam, plen, k""")
    # egress destination groups by CIDR (config.egress_destinations; the longest prefix wins)
    dests = [d for d in getattr(cfg, "egress_destinations", ()) if d.cidr]
    dnets = [ipaddress.ip_network(d.cidr, strict=False) for d in dests]
    con.register("dest_src", pa.table({
        "fam": pa.array([n.version for n in dnets], pa.int8()), "plen": pa.array([n.prefixlen for n in dnets], pa.int16()),
        "k": pa.array([_key(n) for n in dnets], pa.string()), "dest": pa.array([d.destination for d in dests], pa.string()),
        "rnk": pa.array([n.prefixlen * (1 << 32) + i for i, n in enumerate(dnets)], pa.int64())}))
    con.execute("""CREATE OR REPLACE TEMP TABLE dest_nets AS
                   SELECT fam, plen, k::UHUGEINT AS k, arg_max(dest, rnk) AS dest, max(rnk) AS rnk
                   FROM dest_src GROUP BY fam, plen, k""")
    priv = [ipaddress.ip_network(c) for c in PRIVATE]
    con.register("private_src", pa.table({"fam": pa.array([n.version for n in priv], pa.int8()),
                                          "plen": pa.array([n.prefixlen for n in priv], pa.int16()),
                                          "k": pa.array([_key(n) for n in priv], pa.string())}))
    con.execute("CREATE OR REPLACE TEMP TABLE private_nets AS SELECT fam, plen, k::UHUGEINT AS k FROM private_src")
    con.execute("""CREATE OR REPLACE TEMP TABLE plens AS
                   SELECT DISTINCT fam, plen FROM (SELECT fam, plen FROM ranges UNION ALL SELECT fam, plen FROM rules
                                                   UNION ALL SELECT fam, plen FROM private_nets
                                                   UNION ALL SELECT fam, plen FROM subnets
                                                   UNION ALL SELECT fam, plen FROM dest_nets)""")
    from jobs.pipeline import _cards_for  # noqa: PLC0415 - the job's cards for this config
    cards = _cards_for(cfg)
    rate_rows, tiers, unit = [], [], {}
    zero = pricing.Rate(0.0, 1 << 30)
    for prov, region in providers_regions:
        card = cards.card(prov, region)
        R = card.rates
        free = card.free_services
        gp = R.get("global_peering")
        extra = (R["regional_public"].out, R["regional_public"].inn, R["nat_gateway"].out, R["transit_gateway"].out,
                 R["peering"].same_zone_free, gp.out if gp else None, gp.inn if gp else None, "*" in free, list(free))
        # each class's own (out, in) rate: the card's rate of that name; peering and transit
        # gateways use the peering rate (plus processing), cross_region is the `inter` table's
        for c in S.TRAFFIC_CLASSES:
            r = R.get({"transit_gateway": "peering"}.get(c, c), zero)
            if c in ("internet_egress", "cross_region"):
                r = zero
            rate_rows.append((prov, region, card.name, c, r.out, r.inn) + extra)
        unit[(prov, region)] = card.rates[S.TRAFFIC_CLASSES[0]].unit_bytes
        # F(x): the cost of the month's first x bytes, piecewise linear over the card's tiers (and
        # over each destination group's tiers, for cards that price egress by destination)
        used_dests = {d.destination for d in getattr(cfg, "egress_destinations", ())}
        for dest, curve in [(None, card.tiers)] + sorted((d, t) for d, t in card.dest_tiers.items() if d in used_dests):
            lo, terms = 0.0, []
            for up_to_gb, per_gb in curve:
                hi = None if up_to_gb is None else up_to_gb * card.egress_unit
                per_byte = per_gb / card.egress_unit
                seg = f"greatest(0.0, x - {lo!r})" if hi is None else f"greatest(0.0, least(x, {hi!r}) - {lo!r})"
                if per_byte:
                    terms.append(f"{per_byte!r} * {seg}")
                lo = hi if hi is not None else lo
            fname = f"tier_{len(tiers)}"
            con.execute(f"CREATE OR REPLACE TEMP MACRO {fname}(x) AS ({' + '.join(terms) or '0.0'})")
            tiers.append((prov, region, fname, int(card.free_bytes()), dest))
    names = ("provider", "region", "card", "cls", "out_b", "in_b", "rp_out", "rp_in", "nat_out", "tgw_out",
             "szfree", "gp_out", "gp_in", "free_all", "free_list")
    types = [pa.string()] * 4 + [pa.float64()] * 6 + [pa.bool_(), pa.float64(), pa.float64(), pa.bool_(),
                                                     pa.list_(pa.string())]
    cols = {n: pa.array([r[i] for r in rate_rows], t) for i, (n, t) in enumerate(zip(names, types))}
    cols["unit"] = pa.array([float(unit[(r[0], r[1])]) for r in rate_rows], pa.float64())
    con.register("rates_src", pa.table(cols))
    con.execute("CREATE OR REPLACE TEMP TABLE rates AS SELECT * FROM rates_src")
    # inter-region transfer out per byte, by (provider, sending region, receiving region): the
    # sending region's card (or the fallback's) over every region a row can name
    inter = []
    for prov in sorted({p for p, _ in providers_regions} & set(cards.docs)):
        regs = sorted(set(cards.regions(prov)) | {r for p, r in providers_regions if p == prov})
        for a in regs:
            try:
                ca = cards.card(prov, a)
            except pricing.UnknownRegionError:
                continue
            inter += [(prov, a, b, ca.rates["inter_region"].to_region(b)) for b in regs if b != a]
    con.register("inter_src", pa.table({"provider": pa.array([r[0] for r in inter], pa.string()),
                                        "a": pa.array([r[1] for r in inter], pa.string()),
                                        "b": pa.array([r[2] for r in inter], pa.string()),
                                        "per_byte": pa.array([r[3] for r in inter], pa.float64())}))
    con.execute("CREATE OR REPLACE TEMP TABLE inter AS SELECT * FROM inter_src")
    return tiers


def _q(v: str) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def nat_sql(cfg) -> tuple[str, str]:
    """(the NAT gateway index of a node row, the index for a node missing from the inventory) as
    SQL over node_name's columns: the first gateway whose selector matches; never a node with an
    external IP (docs/costing.md, NAT gateways). Node CIDRs match IPv4 internal addresses."""
    gws = cfg.nat_gateways
    if not gws:
        return "NULL::INTEGER", "NULL::INTEGER"
    whens = []
    for i, g in enumerate(gws):
        conds = ["true"] if g.all else []
        for cidr in g.node_cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version != 4:
                raise ValueError(f"bench/cost_sql.py: NAT gateway {g.name}: IPv6 node CIDR {cidr} is not in the SQL")
            shift = 32 - net.prefixlen
            conds.append(f"(ip4 IS NOT NULL AND ip4 >> {shift} = {int(net.network_address) >> shift})")
        conds += [f"name GLOB {_q(pat)}" for pat in g.nodes]
        if g.node_groups:
            conds.append(f"node_group IN ({', '.join(_q(x) for x in g.node_groups)})")
        if g.zones:
            conds.append(f"zone IN ({', '.join(_q(x) for x in g.zones)})")
        whens.append(f"WHEN {' OR '.join(conds) or 'false'} THEN {i}")
    default = next((i for i, g in enumerate(gws) if g.all), None)
    return (f"CASE WHEN external_ip IS NOT NULL THEN NULL {' '.join(whens)} END",
            "NULL::INTEGER" if default is None else str(default))


def statements(lake: Path, out: Path, cfg, tiers: list[tuple], node_cols: set[str] | None = None) -> list[str]:
    """The timed SQL, in order: small lookup tables, then one COPY statement. `node_cols`: the
    columns inventory/nodes has (older lakes lack node_group)."""
    L = str(lake)
    node_cols = node_cols if node_cols is not None else {"node_group", "external_ip"}
    nat_of, nat_default = nat_sql(cfg)
    eps = ", ".join(_q(e) for e in cfg.gateway_endpoints) or "NULL"
    lookback = int(cfg.dns_lookback_s * 1_000_000)
    region, provider = cfg.region.replace("'", "''"), cfg.provider.lower().replace("'", "''")
    # the provider's account-wide free allowance covers its month's first tiered bytes of any
    # region, in (window_start, pool) order: a row's free part comes from the provider's running sum
    tier_case = " ".join(
        f"WHEN src_provider = '{p}' AND src_region = '{r}' AND egress_dest IS NOT DISTINCT FROM "
        f"{'NULL' if d is None else _q(d)} THEN {f}(cum) - "
        f"{f}(cum - tx_bytes + least(tx_bytes, greatest(0.0, {a}.0 - (pcum - tx_bytes))))"
        for p, r, f, a, d in tiers) or "WHEN false THEN 0.0"
    # destination groups: a CIDR first, then the first domain glob that matches
    priced_dest = sorted({(p, r, d) for p, r, _, _, d in tiers if d is not None})
    dom_dest = " ".join(f"WHEN rtrim(lower(dst_domain), '.') GLOB {_q(d.domain)} THEN {_q(d.destination)}"
                        for d in getattr(cfg, "egress_destinations", ()) if d.domain)
    dest_sql = (f"CASE WHEN traffic_class <> 'internet_egress' THEN NULL WHEN cidr_dest IS NOT NULL THEN cidr_dest "
                f"{dom_dest} END")
    dest_ok = " OR ".join(f"(src_provider = {_q(p)} AND src_region = {_q(r)} AND dest0 = {_q(d)})"
                          for p, r, d in priced_dest) or "false"
    inv = lambda kind: (f"(SELECT *, filename AS fn, file_row_number AS rn FROM read_parquet("  # noqa: E731
                        f"'{L}/inventory/{kind}/*/*.parquet', filename = true, file_row_number = true))")
    last = "fn DESC, rn DESC"  # the job's lookups: the last row (in file, row order) wins a key
    raw = f"read_parquet('{L}/raw/flows/*/*/*/*.parquet')"
    glob = lambda d: rtrim_glob("lower(dst_domain)", d)  # noqa: E731
    return [
        # ---- snapshot sets: per window end, the as-of snapshot of each kind (latest <= end, else
        # the earliest); `sk` numbers the distinct sets (about one per window)
        f"""CREATE OR REPLACE TEMP TABLE snap AS
            WITH w AS (SELECT DISTINCT window_end AS we FROM {raw}),
                 p AS (SELECT DISTINCT snapshot_time AS t FROM read_parquet('{L}/inventory/pods/*/*.parquet')),
                 n AS (SELECT DISTINCT snapshot_time AS t FROM read_parquet('{L}/inventory/nodes/*/*.parquet')),
                 s AS (SELECT DISTINCT snapshot_time AS t FROM read_parquet('{L}/inventory/services/*/*.parquet')),
                 e AS (SELECT DISTINCT snapshot_time AS t FROM read_parquet('{L}/inventory/endpoints/*/*.parquet')),
                 j AS (SELECT w.we,
                         coalesce(p.t, (SELECT min(t) FROM p)) AS ps, coalesce(n.t, (SELECT min(t) FROM n)) AS ns,
                         coalesce(s.t, (SELECT min(t) FROM s)) AS ss, coalesce(e.t, (SELECT min(t) FROM e)) AS es
                       FROM w ASOF LEFT JOIN p ON w.we >= p.t ASOF LEFT JOIN n ON w.we >= n.t
                              ASOF LEFT JOIN s ON w.we >= s.t ASOF LEFT JOIN e ON w.we >= e.t)
            SELECT *, dense_rank() OVER (ORDER BY ps, ns, ss, es) AS sk FROM j""",
        # ---- inventory lookups keyed by (snapshot, key): small, joined several times
        f"""CREATE OR REPLACE TEMP TABLE pods AS
            SELECT snapshot_time AS t, ip, name, namespace, node, workload_kind, workload_name,
                   coalesce(host_network, false) AS hostnet, coalesce(phase = 'Running', false) AS running, fn, rn
            FROM {inv('pods')} WHERE snapshot_time IN (SELECT ps FROM snap)""",
        f"""CREATE OR REPLACE TEMP TABLE pod_ip AS
            SELECT t, ip, name, namespace, node, workload_kind, workload_name FROM pods
            WHERE NOT hostnet AND ip IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY t, ip ORDER BY running DESC, {last}) = 1""",
        f"""CREATE OR REPLACE TEMP TABLE hostnet_ip AS
            SELECT t, ip, node FROM pods WHERE hostnet AND ip IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY t, ip ORDER BY running DESC, {last}) = 1""",
        f"""CREATE OR REPLACE TEMP TABLE pod_name AS
            SELECT t, namespace, name, workload_kind, workload_name FROM pods
            WHERE name IS NOT NULL AND namespace IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY t, namespace, name ORDER BY {last}) = 1""",
        f"""CREATE OR REPLACE TEMP TABLE node_name AS
            SELECT t, name, zone, region, provider, {nat_of} AS nat FROM (
              SELECT snapshot_time AS t, name, zone, coalesce(region, '{region}') AS region,
                     lower(coalesce(provider, '{provider}')) AS provider,
                     {'node_group' if 'node_group' in node_cols else 'NULL::VARCHAR AS node_group'},
                     {'external_ip' if 'external_ip' in node_cols else 'NULL::VARCHAR AS external_ip'},
                     CASE WHEN regexp_full_match(internal_ip, '[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+')
                          THEN list_reduce(list_transform(string_split(internal_ip, '.'), lambda x: x::UBIGINT),
                                           lambda a, b: a * 256 + b) END AS ip4
              FROM {inv('nodes')} WHERE name IS NOT NULL
              QUALIFY row_number() OVER (PARTITION BY snapshot_time, name ORDER BY {last}) = 1)""",
        f"""CREATE OR REPLACE TEMP TABLE node_ip AS
            SELECT t, ip, name FROM (
                SELECT snapshot_time AS t, internal_ip AS ip, name, 2 AS pri, fn, rn
                FROM {inv('nodes')} WHERE internal_ip IS NOT NULL
                UNION ALL
                SELECT snapshot_time, external_ip, name, 1, fn, rn
                FROM {inv('nodes')} WHERE external_ip IS NOT NULL)
            QUALIFY row_number() OVER (PARTITION BY t, ip ORDER BY pri DESC, {last}) = 1""",
        f"""CREATE OR REPLACE TEMP TABLE svc_ip AS
            SELECT snapshot_time AS t, cluster_ip AS ip, name, namespace FROM {inv('services')}
            WHERE cluster_ip IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY snapshot_time, cluster_ip ORDER BY {last}) = 1""",
        f"""CREATE OR REPLACE TEMP TABLE ep_ip AS
            SELECT snapshot_time AS t, ip, service, namespace, node, zone FROM {inv('endpoints')}
            WHERE ip IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY snapshot_time, ip
                                       ORDER BY namespace NULLS FIRST, service NULLS FIRST, port NULLS FIRST,
                                                {last}) = 1""",
        # ---- DNS answers, latest per instant (equal instants: the greatest name)
        f"""CREATE OR REPLACE TEMP TABLE dns AS
            SELECT ip, client_ip, coalesce(seen_at, window_end) AS seen, max(lower(domain)) AS domain
            FROM read_parquet('{L}/raw/dns/*/*/*/*.parquet')
            WHERE ip IS NOT NULL AND domain IS NOT NULL AND coalesce(seen_at, window_end) IS NOT NULL
            GROUP BY ALL""",
        # ---- one pass: orient -> resolve (per distinct key) -> classify -> price -> tiers -> files
        f"""COPY (
          WITH
          r AS (SELECT f.*, s.sk, f.direction = 'inbound' AS inb
                FROM {raw} f JOIN snap s ON f.window_end = s.we),
          sets AS (SELECT DISTINCT sk, ps, ns, ss, es FROM snap),
          -- inbound rows from cluster peers are dropped (the peer's node reported them outbound)
          peer AS (SELECT k.sk, k.ip, n.name AS owner
                   FROM (SELECT DISTINCT sk, src_ip AS ip FROM r WHERE inb) k JOIN sets s USING (sk)
                   LEFT JOIN node_ip n ON n.t = s.ns AND n.ip = k.ip
                   WHERE n.name IS NOT NULL
                      OR EXISTS (SELECT 1 FROM pod_ip p WHERE p.t = s.ps AND p.ip = k.ip)
                      OR EXISTS (SELECT 1 FROM hostnet_ip h WHERE h.t = s.ps AND h.ip = k.ip)),
          -- ... except the second hop of a connection node A relayed (NodePort / load balancer,
          -- SNAT to A): A reported an outside client's row to the same backend in that window
          clients AS (SELECT DISTINCT r.window_start, r.node, r.dst_ip, coalesce(r.dst_port, -1) AS port
                      FROM r LEFT JOIN peer ON peer.sk = r.sk AND peer.ip = r.src_ip
                      WHERE r.inb AND peer.ip IS NULL),
          f AS (SELECT r.window_start, r.window_end, r.sk, r.node, r.direction, r.proto,
                  CASE WHEN inb THEN r.dst_ip ELSE r.src_ip END AS src_ip,
                  CASE WHEN inb THEN r.src_ip ELSE r.dst_ip END AS dst_ip,
                  CASE WHEN inb THEN r.src_ip ELSE r.orig_dst_ip END AS orig_dst_ip,
                  CASE WHEN inb THEN r.orig_dst_port ELSE r.dst_port END AS dst_port,
                  CASE WHEN inb THEN r.rx_bytes ELSE r.tx_bytes END AS tx_bytes,
                  CASE WHEN inb THEN r.tx_bytes ELSE r.rx_bytes END AS rx_bytes,
                  CASE WHEN inb THEN r.rx_packets ELSE r.tx_packets END AS tx_packets,
                  CASE WHEN inb THEN r.tx_packets ELSE r.rx_packets END AS rx_packets,
                  CASE WHEN inb THEN r.dst_pod ELSE r.src_pod END AS src_pod,
                  CASE WHEN inb THEN r.dst_namespace ELSE r.src_namespace END AS src_namespace
                FROM r LEFT JOIN peer ON r.inb AND peer.sk = r.sk AND peer.ip = r.src_ip
                LEFT JOIN clients c ON peer.owner IS NOT NULL AND c.window_start = r.window_start
                     AND c.node = peer.owner AND c.dst_ip IS NOT DISTINCT FROM r.dst_ip
                     AND c.port = coalesce(r.dst_port, -1)
                WHERE peer.ip IS NULL OR c.node IS NOT NULL),
          -- sources, once per (snapshot set, address, agent-named pod)
          src AS (
            SELECT k.sk, k.src_ip, k.src_pod, k.src_namespace,
              (ni.name IS NOT NULL OR hn.node IS NOT NULL) AS is_node,
              sp.ip IS NOT NULL AND sp.name = k.src_pod AND sp.namespace = k.src_namespace AS agree,
              sp.name AS sp_name, sp.namespace AS sp_ns, sp.workload_kind AS sp_wk, sp.workload_name AS sp_wn,
              pn.workload_kind AS pn_wk, pn.workload_name AS pn_wn
            FROM (SELECT DISTINCT sk, src_ip, src_pod, src_namespace FROM f) k JOIN sets s USING (sk)
            LEFT JOIN node_ip ni ON ni.t = s.ns AND ni.ip = k.src_ip
            LEFT JOIN hostnet_ip hn ON hn.t = s.ps AND hn.ip = k.src_ip
            LEFT JOIN pod_ip sp ON sp.t = s.ps AND sp.ip = k.src_ip
            LEFT JOIN pod_name pn ON pn.t = s.ps AND pn.namespace = k.src_namespace AND pn.name = k.src_pod),
          src_node AS (
            SELECT k.sk, k.node, n.zone, n.region, n.provider,
                   CASE WHEN n.name IS NULL THEN {nat_default} ELSE n.nat END AS nat
            FROM (SELECT DISTINCT sk, node FROM f) k JOIN sets s USING (sk)
            LEFT JOIN node_name n ON n.t = s.ns AND n.name = k.node),
          -- destinations, once per (snapshot set, address, dialed address)
          dk AS (SELECT DISTINCT sk, dst_ip, orig_dst_ip FROM f),
          dj AS (
            SELECT k.sk, k.dst_ip, k.orig_dst_ip, s.ns,
              dp.ip IS NOT NULL AS dp_found, dp.name AS dp_name, dp.namespace AS dp_ns, dp.node AS dp_node,
              dp.workload_kind AS dp_wk, dp.workload_name AS dp_wn,
              coalesce(sv1.name, sv2.name) AS svc_name,
              CASE WHEN sv1.ip IS NOT NULL THEN sv1.namespace ELSE sv2.namespace END AS svc_ns,
              sv1.ip IS NOT NULL OR sv2.ip IS NOT NULL AS svc_found,
              coalesce(dni.name, dhn.node) AS dn_ip,
              ep.ip IS NOT NULL AS ep_found, ep.service AS ep_svc, ep.namespace AS ep_ns, ep.node AS ep_node,
              ep.zone AS ep_zone
            FROM dk k JOIN sets s USING (sk)
            LEFT JOIN pod_ip dp ON dp.t = s.ps AND dp.ip = k.dst_ip
            LEFT JOIN svc_ip sv1 ON sv1.t = s.ss AND sv1.ip = k.orig_dst_ip
            LEFT JOIN svc_ip sv2 ON sv2.t = s.ss AND sv2.ip = k.dst_ip
            LEFT JOIN node_ip dni ON dni.t = s.ns AND dni.ip = k.dst_ip
            LEFT JOIN hostnet_ip dhn ON dhn.t = s.ps AND dhn.ip = k.dst_ip
            LEFT JOIN ep_ip ep ON ep.t = s.es AND ep.ip = k.dst_ip),
          dk2 AS (
            SELECT dj.*,
              CASE WHEN svc_found THEN 'service' WHEN dp_found THEN 'pod' WHEN dn_ip IS NOT NULL THEN 'node'
                   WHEN ep_found THEN 'endpoint' ELSE 'external' END AS dst_kind,
              CASE WHEN dp_found THEN dp_node WHEN dn_ip IS NOT NULL THEN dn_ip WHEN ep_found THEN ep_node END AS dst_node
            FROM dj),
          -- external addresses: integer prefixes of every length in use, matched by equality
          ext AS (
            SELECT ip, fam, CASE WHEN fam = 4 THEN list_reduce(list_transform(string_split(ip, '.'),
                                                                               lambda x: x::UHUGEINT),
                                                                lambda a, b: a * 256 + b)
                                 ELSE list_reduce(list_transform(groups, lambda x: ('0x' || x)::USMALLINT::UHUGEINT),
                                                  lambda a, b: a * 65536 + b) END AS n
            FROM (SELECT ip, CASE WHEN contains(ip, ':') THEN 6 ELSE 4 END AS fam,
                    CASE WHEN NOT contains(ip, ':') THEN NULL
                         WHEN contains(ip, '::') THEN list_concat(
                           list_filter(string_split(split_part(ip, '::', 1), ':'), lambda x: x <> ''),
                           list_transform(range(8 - len(list_filter(string_split(split_part(ip, '::', 1), ':'),
                                                                    lambda x: x <> ''))
                                                  - len(list_filter(string_split(split_part(ip, '::', 2), ':'),
                                                                    lambda x: x <> ''))), lambda x: '0'),
                           list_filter(string_split(split_part(ip, '::', 2), ':'), lambda x: x <> ''))
                         ELSE string_split(ip, ':') END AS groups
                  FROM (SELECT DISTINCT dst_ip AS ip FROM dk2 WHERE dst_kind = 'external' AND dst_ip IS NOT NULL))),
          ek AS (SELECT e.ip, l.fam, l.plen,
                   CASE WHEN l.plen = 0 THEN 0::UHUGEINT
                        ELSE e.n >> ((CASE WHEN l.fam = 4 THEN 32 ELSE 128 END) - l.plen)::UHUGEINT END AS k
                 FROM ext e JOIN plens l ON l.fam = e.fam),
          rg AS (SELECT ek.ip, arg_max(g.provider, g.rnk) AS provider, arg_max(g.service, g.rnk) AS service,
                        arg_max(g.region, g.rnk) AS region
                 FROM ek JOIN ranges g USING (fam, plen, k) GROUP BY ek.ip),
          ru AS (SELECT ek.ip, arg_max(u.cls, u.rnk) AS cls, arg_max(u.rate, u.rnk) AS rate,
                        arg_max(u.label, u.rnk) AS label, arg_max(u.zone, u.rnk) AS zone,
                        arg_max(u.region, u.rnk) AS region
                 FROM ek JOIN rules u USING (fam, plen, k) GROUP BY ek.ip),
          su AS (SELECT ek.ip, arg_max(x.zone, x.rnk) AS zone, arg_max(x.region, x.rnk) AS region
                 FROM ek JOIN subnets x USING (fam, plen, k) GROUP BY ek.ip),
          pv AS (SELECT DISTINCT ek.ip FROM ek JOIN private_nets USING (fam, plen, k)),
          de AS (SELECT ek.ip, arg_max(x.dest, x.rnk) AS dest FROM ek JOIN dest_nets x USING (fam, plen, k) GROUP BY ek.ip),
          dst AS (
            SELECT d.sk, d.dst_ip, d.orig_dst_ip, d.dst_kind, d.dst_node,
              CASE d.dst_kind WHEN 'service' THEN svc_ns WHEN 'pod' THEN dp_ns WHEN 'endpoint' THEN ep_ns END
                AS dst_namespace,
              CASE d.dst_kind WHEN 'service' THEN svc_name WHEN 'pod' THEN dp_name WHEN 'node' THEN dn_ip
                              WHEN 'endpoint' THEN ep_svc END AS dst_name,
              svc_name AS dst_service, dp_name AS dst_pod, dp_wk AS dst_workload_kind, dp_wn AS dst_workload,
              CASE WHEN ru.ip IS NOT NULL THEN ru.zone WHEN su.ip IS NOT NULL THEN su.zone
                   ELSE coalesce(CASE WHEN dp_found OR dn_ip IS NOT NULL THEN dn.zone END,
                                 CASE WHEN ep_found THEN ep_zone END, CASE WHEN ep_found THEN dn.zone END) END
                AS dst_zone,
              CASE WHEN ru.ip IS NOT NULL THEN ru.region WHEN su.ip IS NOT NULL THEN su.region ELSE dn.region END
                AS dst_region0,
              su.ip IS NOT NULL AND ru.ip IS NULL AND su.region IS NULL AS subnet_src_region,
              rg.provider AS dst_cloud_provider, rg.service AS dst_cloud_service, rg.region AS dst_cloud_region,
              coalesce(rk.known, false) AS range_known,
              ru.cls AS rule_cls, ru.rate AS rule_rate, ru.label AS rule_label, pv.ip IS NOT NULL AS private,
              d.dst_ip IN ('169.254.169.254', 'fd00:ec2::254', '168.63.129.16') AS imds, de.dest AS cidr_dest
            FROM dk2 d
            LEFT JOIN node_name dn ON dn.t = d.ns AND dn.name = d.dst_node
            LEFT JOIN rg ON d.dst_kind = 'external' AND rg.ip = d.dst_ip
            LEFT JOIN ru ON d.dst_kind = 'external' AND ru.ip = d.dst_ip
            LEFT JOIN pv ON d.dst_kind = 'external' AND pv.ip = d.dst_ip
            LEFT JOIN su ON d.dst_kind = 'external' AND su.ip = d.dst_ip
            LEFT JOIN de ON d.dst_kind = 'external' AND de.ip = d.dst_ip
            LEFT JOIN range_known rk ON rk.provider = rg.provider AND rk.region = rg.region),
          -- DNS as of the window end, only for destinations DNS ever answered (a semi-join)
          dq AS (SELECT DISTINCT src_ip, dst_ip, window_end FROM f WHERE dst_ip IN (SELECT ip FROM dns)),
          dom AS (
            SELECT q.src_ip, q.dst_ip, q.window_end,
                   coalesce(CASE WHEN epoch_us(q.window_end) - epoch_us(a.seen) <= {lookback} THEN a.domain END,
                            CASE WHEN epoch_us(q.window_end) - epoch_us(b.seen) <= {lookback} THEN b.domain END) AS domain
            FROM dq q
            ASOF LEFT JOIN (SELECT client_ip, ip, seen, max(domain) AS domain FROM dns GROUP BY ALL) a
                 ON a.client_ip = q.src_ip AND a.ip = q.dst_ip AND q.window_end >= a.seen
            ASOF LEFT JOIN (SELECT ip, seen, max(domain) AS domain FROM dns GROUP BY ALL) b
                 ON b.ip = q.dst_ip AND q.window_end >= b.seen),
          res AS (
            SELECT f.window_start, f.window_end, f.direction, f.node AS src_node, sn.zone AS src_zone,
              coalesce(sn.region, '{region}') AS src_region, coalesce(sn.provider, '{provider}') AS src_provider,
              f.src_ip,
              CASE WHEN s.is_node THEN NULL WHEN f.src_pod IS NOT NULL THEN f.src_namespace ELSE s.sp_ns END
                AS src_namespace,
              CASE WHEN s.is_node THEN NULL WHEN f.src_pod IS NOT NULL THEN f.src_pod ELSE s.sp_name END AS src_pod,
              CASE WHEN s.is_node THEN NULL WHEN f.src_pod IS NULL OR s.agree THEN s.sp_wk ELSE s.pn_wk END
                AS src_workload_kind,
              CASE WHEN s.is_node THEN NULL WHEN f.src_pod IS NULL OR s.agree THEN s.sp_wn ELSE s.pn_wn END
                AS src_workload,
              d.dst_kind, d.dst_namespace, d.dst_name, d.dst_service, d.dst_pod, d.dst_workload_kind, d.dst_workload,
              d.dst_node, d.dst_zone, d.dst_region0, d.subnet_src_region, d.range_known, dom.domain AS dst_domain,
              d.dst_cloud_provider, d.dst_cloud_service, d.dst_cloud_region,
              f.dst_ip, f.dst_port, f.proto, f.tx_bytes, f.rx_bytes, f.tx_packets, f.rx_packets,
              d.rule_cls, d.rule_rate, d.rule_label, d.private, d.imds, sn.nat AS src_nat, d.cidr_dest
            FROM f
            JOIN src s ON s.sk = f.sk AND s.src_ip IS NOT DISTINCT FROM f.src_ip
                      AND s.src_pod IS NOT DISTINCT FROM f.src_pod AND s.src_namespace IS NOT DISTINCT FROM f.src_namespace
            JOIN src_node sn ON sn.sk = f.sk AND sn.node IS NOT DISTINCT FROM f.node
            JOIN dst d ON d.sk = f.sk AND d.dst_ip IS NOT DISTINCT FROM f.dst_ip
                      AND d.orig_dst_ip IS NOT DISTINCT FROM f.orig_dst_ip
            LEFT JOIN dom ON dom.src_ip = f.src_ip AND dom.dst_ip = f.dst_ip AND dom.window_end = f.window_end),
          r2 AS (
            SELECT res.* EXCLUDE (dst_region0, subnet_src_region, range_known),
              dst_kind = 'external' AND dst_ip IS NOT NULL AND NOT private AND NOT imds AND rule_cls IS NULL
                AND dst_cloud_provider = src_provider AND range_known AS same_cloud,
              CASE WHEN subnet_src_region THEN src_region ELSE dst_region0 END AS dst_region1
            FROM res),
          r3 AS (
            SELECT r2.* EXCLUDE (dst_region1),
              CASE WHEN same_cloud THEN dst_cloud_region ELSE dst_region1 END AS dst_region,
              CASE WHEN dst_namespace = 'default' AND ((dst_kind = 'service' AND dst_service = 'kubernetes')
                                                   OR (dst_kind = 'endpoint' AND dst_name = 'kubernetes'))
                     THEN 'k8s_control_plane'
                   WHEN src_region IS NOT NULL AND (CASE WHEN same_cloud THEN dst_cloud_region ELSE dst_region1 END)
                        IS NOT NULL AND src_region <> (CASE WHEN same_cloud THEN dst_cloud_region ELSE dst_region1 END)
                     THEN 'cross_region'
                   WHEN src_zone IS NULL OR dst_zone IS NULL THEN 'unknown'
                   WHEN src_zone <> dst_zone THEN 'cross_zone'
                   ELSE 'same_zone' END AS internal_class,
              CASE WHEN {glob(['*.vpce.amazonaws.com', '*.privatelink.*'])} THEN 'private_link'
                   WHEN {glob(['*.eks.amazonaws.com', '*.azmk8s.io', '*.gke.googleapis.com'])} THEN 'k8s_control_plane'
                   WHEN {glob(['internal-*.elb.amazonaws.com', '*.internal.cloudapp.azure.com'])} THEN 'load_balancer'
                   WHEN {glob(['*.rds.amazonaws.com', '*.cache.amazonaws.com'])} THEN 'zonal'
                   WHEN {glob(['*.amazonaws.com'])} THEN 'private_link'
                   WHEN {glob(['*.googleapis.com', '*.vault.azure.net', '*.azure.com', '*.windows.net'])} THEN 'cloud_api'
                   ELSE 'external_private' END AS domain_class
            FROM r2),
          cls AS (
            SELECT r3.* EXCLUDE (internal_class, domain_class, same_cloud),
              CASE WHEN dst_kind <> 'external' THEN internal_class
                   WHEN rule_cls IS NOT NULL THEN rule_cls
                   WHEN imds THEN 'imds'
                   WHEN private AND domain_class = 'zonal' THEN internal_class
                   WHEN private THEN domain_class
                   WHEN same_cloud THEN CASE WHEN internal_class = 'cross_region' THEN 'cross_region' ELSE 'cloud_api' END
                   ELSE 'internet_egress' END AS traffic_class
            FROM r3),
          -- price: each class by the source's card (docs/costing.md §6); `out_b`/`in_b` are the
          -- class's per-byte rates out of the sender and into the receiver
          p0 AS (
            SELECT c.*, r.card, r.unit, r.out_b, r.in_b, r.rp_out, r.rp_in, r.nat_out, r.tgw_out, r.szfree,
              r.gp_out, r.gp_in, r.free_all, r.free_list, ir.per_byte AS ir_out, ib.per_byte AS ir_back,
              c.dst_kind = 'external' AND c.dst_ip IS NOT NULL AND NOT c.private AND NOT coalesce(c.imds, false)
                AS public,
              {dest_sql} AS dest0
            FROM cls c LEFT JOIN rates r ON r.provider = c.src_provider AND r.region = c.src_region
                                         AND r.cls = c.traffic_class
            LEFT JOIN inter ir ON c.traffic_class IN ('cross_region', 'peering', 'transit_gateway')
                 AND ir.provider = c.src_provider AND ir.a = c.src_region AND ir.b = c.dst_region
            LEFT JOIN inter ib ON c.traffic_class = 'cross_region'
                 AND ib.provider = c.src_provider AND ib.a = c.dst_region AND ib.b = c.src_region),
          priced AS (
            SELECT p0.* EXCLUDE (card, unit, out_b, in_b, rp_out, rp_in, nat_out, tgw_out, szfree, gp_out, gp_in,
                                 free_all, free_list, ir_out, ir_back, public, src_nat, cidr_dest, dest0),
              CASE WHEN {dest_ok} THEN dest0 END AS egress_dest,
              CASE WHEN rule_rate IS NOT NULL THEN (tx_bytes + rx_bytes) / unit * rule_rate
                   ELSE coalesce(CASE
                     WHEN traffic_class IN ('same_zone', 'cross_zone', 'imds', 'k8s_control_plane', 'load_balancer',
                                            'external_private', 'unknown')
                       -- the source pays tx out and rx in; an in-cluster destination its own end
                       THEN tx_bytes * out_b + rx_bytes * in_b
                            + CASE WHEN dst_kind <> 'external' THEN rx_bytes * out_b + tx_bytes * in_b ELSE 0.0 END
                     WHEN traffic_class = 'cloud_api'
                       THEN CASE WHEN public AND NOT (free_all OR coalesce(list_contains(free_list, dst_cloud_service), false))
                                 THEN tx_bytes * rp_out + rx_bytes * rp_in
                                 ELSE tx_bytes * out_b + rx_bytes * in_b END
                     WHEN traffic_class = 'cross_region'
                       THEN tx_bytes * coalesce(ir_out, 0.0) + rx_bytes * coalesce(ir_back, 0.0)
                     WHEN traffic_class IN ('peering', 'transit_gateway')
                       THEN CASE WHEN dst_region IS NULL OR dst_region = src_region
                                 THEN CASE WHEN szfree AND src_zone = dst_zone THEN 0.0
                                           ELSE tx_bytes * out_b + rx_bytes * in_b END
                                 WHEN gp_out IS NOT NULL THEN tx_bytes * gp_out + rx_bytes * gp_in
                                 ELSE tx_bytes * coalesce(ir_out, 0.0) END
                            + CASE WHEN traffic_class = 'transit_gateway' THEN tx_bytes * tgw_out ELSE 0.0 END
                     WHEN traffic_class = 'private_link' THEN (tx_bytes + rx_bytes) * out_b
                     ELSE 0.0 END, 0.0)
                     -- NAT gateway processing: outbound to public addresses from nodes behind one,
                     -- not to services a gateway endpoint of the source region serves
                     + CASE WHEN src_nat IS NOT NULL AND direction = 'outbound' AND public
                                 AND traffic_class IN ('internet_egress', 'cloud_api', 'cross_region')
                                 AND NOT coalesce(upper(dst_cloud_service) IN ({eps})
                                                  AND dst_cloud_region = src_region, false)
                            THEN (tx_bytes + rx_bytes) * coalesce(nat_out, 0.0) ELSE 0.0 END END AS base_cost,
              CASE WHEN rule_rate IS NOT NULL THEN rule_label ELSE coalesce(card, 'none') END AS rate_card,
              traffic_class = 'internet_egress' AND rule_rate IS NULL AS tiered
            FROM p0),
          -- monthly egress tiers: F(cum_after) - F(cum_before), rows in (window_start, src_ip,
          -- dst_ip, dst_port, proto) order per card and month
          -- (untiered rows share one partition with constant sort keys: no real sort for them)
          t AS (SELECT *, CASE WHEN tiered THEN sum(tx_bytes) OVER (
                            PARTITION BY tiered, CASE WHEN tiered THEN src_provider END,
                                         CASE WHEN tiered THEN src_region END, CASE WHEN tiered THEN egress_dest END,
                                         CASE WHEN tiered THEN date_trunc('month', window_start) END
                            ORDER BY CASE WHEN tiered THEN window_start END, CASE WHEN tiered THEN src_ip END,
                                     CASE WHEN tiered THEN dst_ip END, CASE WHEN tiered THEN dst_port END,
                                     CASE WHEN tiered THEN proto END
                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)::DOUBLE END AS cum,
                          CASE WHEN tiered THEN sum(tx_bytes) OVER (
                            PARTITION BY tiered, CASE WHEN tiered THEN src_provider END,
                                         CASE WHEN tiered THEN date_trunc('month', window_start) END
                            ORDER BY CASE WHEN tiered THEN window_start END,
                                     CASE WHEN tiered THEN src_region || coalesce('@' || egress_dest, '') END,
                                     CASE WHEN tiered THEN src_ip END, CASE WHEN tiered THEN dst_ip END,
                                     CASE WHEN tiered THEN dst_port END, CASE WHEN tiered THEN proto END
                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)::DOUBLE END AS pcum
                FROM priced)
          SELECT window_start, window_end, direction, src_node, src_zone, src_region, src_provider, src_ip,
                 src_namespace, src_pod, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_name,
                 dst_service, dst_pod, dst_workload_kind, dst_workload, dst_node, dst_zone, dst_region,
                 dst_domain, dst_cloud_provider, dst_cloud_service, dst_cloud_region, dst_ip, dst_port, proto,
                 traffic_class, tx_bytes, rx_bytes, tx_packets, rx_packets,
                 base_cost + CASE WHEN tiered THEN CASE {tier_case} ELSE 0.0 END ELSE 0.0 END AS cost_usd, rate_card,
                 strftime(window_start, '%Y-%m-%d') AS date, strftime(window_start, '%H') AS hour
          FROM t)
        TO '{out}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date, hour), OVERWRITE_OR_IGNORE)""",
    ]


def rtrim_glob(col: str, patterns: list[str]) -> str:
    return "(" + " OR ".join(f"rtrim({col}, '.') GLOB '{p}'" for p in patterns) + ")"


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def run(lake: Path, out: Path, cfg, ranges_dir: Path | None, memory_limit_mib: int | None = None,
        threads: int = 2, tmp: Path | None = None) -> dict:
    """Compute `out` (costs/flows, partitioned date=/hour=) from `lake` with DuckDB. Returns
    seconds (timed part), per-statement seconds, rows in/out and the peak spill in bytes."""
    import duckdb  # noqa: PLC0415

    shutil.rmtree(out, ignore_errors=True)
    tmp = tmp or out.parent / f"{out.name}-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    if memory_limit_mib:
        con.execute(f"SET memory_limit = '{int(memory_limit_mib)}MiB'")
    con.execute(f"SET temp_directory = '{tmp}'")
    pr = con.execute(f"SELECT DISTINCT lower(coalesce(provider, '{cfg.provider}')), coalesce(region, '{cfg.region}') "
                     f"FROM read_parquet('{lake}/inventory/nodes/*/*.parquet')").fetchall()
    tiers = setup(con, cfg, ranges_dir, sorted(set(pr)))
    node_cols = {r[0] for r in con.execute(
        f"DESCRIBE SELECT * FROM read_parquet('{lake}/inventory/nodes/*/*.parquet')").fetchall()}
    stmts = statements(lake, out, cfg, tiers, node_cols)
    spill, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            spill[0] = max(spill[0], _dir_bytes(tmp))
            stop.wait(0.2)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    steps = []
    t0 = time.perf_counter()
    try:
        for s in stmts:
            t = time.perf_counter()
            con.execute(s)
            steps.append((" ".join(s.split())[:50], round(time.perf_counter() - t, 2)))
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        th.join()
    rows_in = con.execute(f"SELECT count(*) FROM read_parquet('{lake}/raw/flows/*/*/*/*.parquet')").fetchone()[0]
    rows_out = con.execute(f"SELECT count(*) FROM read_parquet('{out}/*/*/*.parquet')").fetchone()[0]
    con.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"seconds": seconds, "steps": steps, "rows_in": rows_in, "rows_out": rows_out, "spill_bytes": spill[0]}
