"""Benchmark: the cost job against a DuckDB SQL implementation of the same rules.

    python bench/cost_job.py [--rows 10000000] [--nodes 10] [--flows-per-window 1500]

1. Generates (once; cached under bench/out/) a simulated lake with at least --rows raw flow
   rows through the simulator (`simulator.simulate.simulate`, the agent's writer).
2. OURS, timed: `run_cost_job` on local Ray (2 CPUs) from an empty `_state/` and `costs/`:
   discovery, reading + checking every raw file, as-of inventory and DNS, resolution,
   classification, pricing, egress tiers in time order, writing costs/flows partitions,
   rollups, ledger and manifests. Ray start-up (~5 s) is outside the timed part.
3. DUCKDB, timed: one connection (2 threads) running SQL for the same rules (docs/costing.md:
   as-of inventory with the earliest-snapshot fallback, inbound de-duplication and turning,
   NAT'ed services attributed to the pre-NAT ClusterIP, hostNetwork pods as node traffic,
   endpoints, DNS as-of with same-client preference and lookback, user CIDR rules, IMDS,
   private addresses by domain pattern, cloud IP ranges by longest prefix, cross-zone on both
   sides, monthly egress tiers by cumulative volume) from the same Parquet files to a
   partitioned costs/flows copy. Loading the rate card, rules and IP-range prefixes into
   small tables (setup, < 1 s) is outside the timed part.
Each side runs in its own process; peak memory is the largest sum of PSS (proportional set
size: shared pages split between processes) over that process and its children (Ray workers
included), sampled every 0.1 s.
Prints rows/s for both, the ratio ours/duckdb (target >= 0.5) and whether the totals (bytes
and rows per class, total cost) agree.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

GB = 1 << 30


# ------------------------------------------------------------------------------ lake

def lake_dir(out: Path, nodes: int, fpw: int, hours: int, seed: int) -> Path:
    return out / f"lake-n{nodes}-f{fpw}-h{hours}-s{seed}"


def ensure_lake(out: Path, rows: int, nodes: int, fpw: int, seed: int) -> tuple[Path, dict]:
    """Simulate enough hours for `rows` raw flow rows (cached: reused when already complete)."""
    from simulator.simulate import generate_flow_tables, simulate  # noqa: PLC0415
    from lake.storage import open_lake  # noqa: PLC0415

    for d in sorted(out.glob(f"lake-n{nodes}-f{fpw}-h*-s{seed}")):
        marker = d / "_bench.json"
        if marker.exists():
            info = json.loads(marker.read_text())
            if info["flow_rows"] >= rows:
                return d, info
    probe, n = 0, 0
    for wt in generate_flow_tables(nodes, 1, seed, flows_per_node_window=fpw):
        probe += wt.flows.num_rows
        n += 1
        if n == 5:
            break
    hours = max(1, math.ceil(rows * 1.03 / (probe / n * 60)))
    d = lake_dir(out, nodes, fpw, hours, seed)
    if d.exists():
        shutil.rmtree(d)
    print(f"generating a simulated lake: {nodes} nodes x {hours} h, ~{probe / n * 60 * hours:,.0f} flow rows "
          f"-> {d} (cached for later runs)", flush=True)
    t0 = time.monotonic()
    summ = simulate(open_lake(str(d)), nodes, hours, seed, flows_per_node_window=fpw,
                    progress=lambda m: print("  " + m, flush=True))
    info = {"nodes": nodes, "hours": hours, "seed": seed, "flows_per_window": fpw,
            "flow_rows": summ.flow_rows, "flow_files": summ.flow_files, "seconds": time.monotonic() - t0}
    (d / "_bench.json").write_text(json.dumps(info))
    if summ.flow_rows < rows:
        print(f"warning: simulated {summ.flow_rows:,} rows, fewer than --rows {rows:,}", flush=True)
    return d, info


# ------------------------------------------------------------------- memory sampling

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(p))
    return kids


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mib(root: int) -> float:
    kids = _children_map()
    todo, total = [root], 0
    seen = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _pss_kib(p)
        todo.extend(kids.get(p, []))
    return total / 1024


def run_phase(phase: str, lake: Path, out_dir: Path, timeout: float = 3600) -> dict:
    """Run one side in a child process; sample its process tree's memory; return its JSON."""
    result_file = out_dir / f"result-{phase}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--lake", str(lake),
           "--out", str(out_dir)]
    proc = subprocess.Popen(cmd, cwd=str(REPO))
    peak = 0.0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_pss_mib(proc.pid))
            stop.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        rc = proc.wait(timeout)
    finally:
        stop.set()
        th.join()
    if rc != 0:
        raise SystemExit(f"error: the {phase} phase failed (exit {rc})")
    res = json.loads(result_file.read_text())
    res["peak_mib"] = peak
    return res


# ----------------------------------------------------------------------------- ours

def phase_ours(lake: Path, out_dir: Path) -> dict:
    import logging  # noqa: PLC0415

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray  # noqa: PLC0415

    from jobs import run as R  # noqa: PLC0415
    for d in ("_state", "costs"):
        shutil.rmtree(lake / d, ignore_errors=True)
    cfg = out_dir / "job-config.json"
    cfg.write_text((lake / "_expected" / "job-config.json").read_text())
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        opts = R.JobOptions(lake_url=str(lake), config_path=str(cfg),
                            ip_ranges_dir=str(REPO / "jobs" / "fixtures"), num_cpus=2)
        t0 = time.perf_counter()
        res = R.run_cost_job(opts)
        seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"seconds": seconds, "rows_in": res.rows_in, "rows_out": res.rows_out, "hours": len(res.hours_computed),
            "quarantined": len(res.quarantined)}


# --------------------------------------------------------------------------- duckdb

def _bits(net) -> str:
    width = 32 if net.version == 4 else 128
    return format(int(net.network_address), f"0{width}b")[: net.prefixlen]


def _setup_tables(con, cfg, ranges_dir: Path, providers_regions: list[tuple[str, str]]) -> dict:
    """Small reference tables (rate cards, rules, IP-range prefixes): untimed setup."""
    import pyarrow as pa  # noqa: PLC0415

    from jobs import ipranges  # noqa: PLC0415
    from jobs.pricing import RateCards  # noqa: PLC0415
    from lake import schema as S  # noqa: PLC0415

    # cloud ranges, in load order (later entries win ties, as in jobs/ipaddr.PrefixTable)
    rows = []
    for f in sorted(ranges_dir.iterdir()):
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
        "fam": [n.version for n, *_ in rows], "plen": [n.prefixlen for n, *_ in rows],
        "bits": [_bits(n) for n, *_ in rows],
        "provider": [r[1] for r in rows], "service": [r[2] for r in rows], "region": [r[3] for r in rows],
        "rnk": [((int(r[4]) * 256 + r[0].prefixlen) * 2 + int(bool(r[3]))) * (1 << 32) + i for i, r in enumerate(rows)],
    }))
    con.execute("CREATE TEMP TABLE ranges AS SELECT * FROM ranges_src")
    rules = cfg.rules
    nets = [ipaddress.ip_network(r.cidr, strict=False) for r in rules]
    con.register("rules_src", pa.table({
        "fam": pa.array([n.version for n in nets], pa.int64()), "plen": pa.array([n.prefixlen for n in nets], pa.int64()),
        "bits": pa.array([_bits(n) for n in nets], pa.string()),
        "cls": pa.array([r.cls for r in rules], pa.string()),
        "rate": pa.array([r.rate_per_gb for r in rules], pa.float64()),
        "label": pa.array([f"rule:{r.label}" for r in rules], pa.string()),
        "rnk": pa.array([n.prefixlen * (1 << 32) + i for i, n in enumerate(nets)], pa.int64()),
    }))
    con.execute("CREATE TEMP TABLE rules AS SELECT * FROM rules_src")
    priv = [ipaddress.ip_network(c) for c in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                              "169.254.0.0/16", "fc00::/7", "fe80::/10")]
    con.register("private_src", pa.table({"fam": [n.version for n in priv], "plen": [n.prefixlen for n in priv],
                                          "bits": [_bits(n) for n in priv]}))
    con.execute("CREATE TEMP TABLE private_nets AS SELECT * FROM private_src")
    # rate cards of the (provider, region) pairs in the inventory
    cards = RateCards.load()
    rate_rows, tier_exprs, unit = [], [], {}
    for prov, region in providers_regions:
        card = cards.card(prov, region)
        for c in S.TRAFFIC_CLASSES:
            if c != "internet_egress":
                rate_rows.append((prov, region, card.name, c, card.per_byte(c)))
        rate_rows.append((prov, region, card.name, "internet_egress",
                          card.per_byte("nat_gateway") if cfg.nat_gateway else 0.0))
        unit[(prov, region)] = card.rates[S.TRAFFIC_CLASSES[0]].unit_bytes
        # F(x): cost of the month's first x bytes, piecewise linear over the card's tiers
        lo, terms = 0.0, []
        for up_to_gb, per_gb in card.tiers:
            hi = None if up_to_gb is None else up_to_gb * card.egress_unit
            per_byte = per_gb / card.egress_unit
            seg = f"greatest(0.0, x - {lo!r})" if hi is None else f"greatest(0.0, least(x, {hi!r}) - {lo!r})"
            if per_byte:
                terms.append(f"{per_byte!r} * {seg}")
            lo = hi if hi is not None else lo
        fname = f"tier_{len(tier_exprs)}"
        con.execute(f"CREATE TEMP MACRO {fname}(x) AS ({' + '.join(terms) or '0.0'})")
        tier_exprs.append((prov, region, fname))
    con.register("rates_src", pa.table({
        "provider": [r[0] for r in rate_rows], "region": [r[1] for r in rate_rows], "card": [r[2] for r in rate_rows],
        "cls": [r[3] for r in rate_rows], "per_byte": [r[4] for r in rate_rows],
        "unit": [float(unit[(r[0], r[1])]) for r in rate_rows],
    }))
    con.execute("CREATE TEMP TABLE rates AS SELECT * FROM rates_src")
    return {"tiers": tier_exprs}


def duckdb_sql(lake: Path, out: Path, cfg, tiers: list[tuple[str, str, str]]) -> list[str]:
    """The cost computation as SQL statements (executed in order)."""
    L = str(lake)
    lookback = int(cfg.dns_lookback_s * 1_000_000)
    region, provider = cfg.region.replace("'", "''"), cfg.provider.lower().replace("'", "''")
    tier_case = " ".join(f"WHEN src_provider = '{p}' AND src_region = '{r}' THEN {f}(cum) - {f}(cum - tx_bytes)"
                         for p, r, f in tiers) or "WHEN false THEN 0.0"
    return [
        # ---- inputs (raw flows are read once, below, straight into the oriented table)
        f"CREATE TEMP VIEW raw AS SELECT * FROM read_parquet('{L}/raw/flows/*/*/*/*.parquet')",
        f"CREATE TEMP TABLE pods AS SELECT * FROM read_parquet('{L}/inventory/pods/*/*.parquet')",
        f"CREATE TEMP TABLE services AS SELECT * FROM read_parquet('{L}/inventory/services/*/*.parquet')",
        f"CREATE TEMP TABLE nodes AS SELECT * FROM read_parquet('{L}/inventory/nodes/*/*.parquet')",
        f"CREATE TEMP TABLE endpoints AS SELECT * FROM read_parquet('{L}/inventory/endpoints/*/*.parquet')",
        f"""CREATE TEMP TABLE dns AS
            SELECT ip, client_ip, lower(domain) AS domain, coalesce(seen_at, window_end) AS seen
            FROM read_parquet('{L}/raw/dns/*/*/*/*.parquet')
            WHERE ip IS NOT NULL AND domain IS NOT NULL AND coalesce(seen_at, window_end) IS NOT NULL""",
        # ---- as-of snapshots per window end (latest <= window_end, else the earliest)
        """CREATE TEMP TABLE snap AS
           WITH w AS (SELECT DISTINCT window_end AS we FROM raw),
                p AS (SELECT DISTINCT snapshot_time AS t FROM pods),
                n AS (SELECT DISTINCT snapshot_time AS t FROM nodes),
                s AS (SELECT DISTINCT snapshot_time AS t FROM services),
                e AS (SELECT DISTINCT snapshot_time AS t FROM endpoints)
           SELECT w.we,
                  coalesce(p.t, (SELECT min(t) FROM p)) AS ps, coalesce(n.t, (SELECT min(t) FROM n)) AS ns,
                  coalesce(s.t, (SELECT min(t) FROM s)) AS ss, coalesce(e.t, (SELECT min(t) FROM e)) AS es
           FROM w ASOF LEFT JOIN p ON w.we >= p.t ASOF LEFT JOIN n ON w.we >= n.t
                  ASOF LEFT JOIN s ON w.we >= s.t ASOF LEFT JOIN e ON w.we >= e.t""",
        # ---- lookups keyed by (snapshot, key)
        """CREATE TEMP TABLE pod_ip AS
           SELECT snapshot_time AS t, ip, name, namespace, node, workload_kind, workload_name FROM pods
           WHERE NOT coalesce(host_network, false) AND ip IS NOT NULL
           QUALIFY row_number() OVER (PARTITION BY snapshot_time, ip
                                      ORDER BY coalesce(phase = 'Running', false) DESC, name DESC) = 1""",
        """CREATE TEMP TABLE pod_name AS
           SELECT snapshot_time AS t, namespace, name, any_value(workload_kind) AS workload_kind,
                  any_value(workload_name) AS workload_name
           FROM pods WHERE name IS NOT NULL AND namespace IS NOT NULL GROUP BY ALL""",
        """CREATE TEMP TABLE hostnet_ip AS
           SELECT snapshot_time AS t, ip, max(node) AS node FROM pods
           WHERE coalesce(host_network, false) AND ip IS NOT NULL GROUP BY ALL""",
        """CREATE TEMP TABLE node_ip AS
           SELECT t, ip, arg_max(name, pri) AS name FROM (
               SELECT snapshot_time AS t, internal_ip AS ip, name, 2 AS pri FROM nodes WHERE internal_ip IS NOT NULL
               UNION ALL
               SELECT snapshot_time, external_ip, name, 1 FROM nodes WHERE external_ip IS NOT NULL) GROUP BY ALL""",
        f"""CREATE TEMP TABLE node_name AS
            SELECT snapshot_time AS t, name, any_value(zone) AS zone,
                   any_value(coalesce(region, '{region}')) AS region,
                   any_value(lower(coalesce(provider, '{provider}'))) AS provider
            FROM nodes GROUP BY ALL""",
        """CREATE TEMP TABLE svc_ip AS
           SELECT snapshot_time AS t, cluster_ip AS ip, arg_max(name, name) AS name,
                  arg_max(namespace, name) AS namespace
           FROM services WHERE cluster_ip IS NOT NULL GROUP BY ALL""",
        """CREATE TEMP TABLE ep_ip AS
           SELECT snapshot_time AS t, ip, service, namespace, node, zone FROM endpoints WHERE ip IS NOT NULL
           QUALIFY row_number() OVER (PARTITION BY snapshot_time, ip ORDER BY namespace, service, port) = 1""",
        # ---- orientation: keep outbound; drop inbound from cluster peers; turn the rest around
        """CREATE TEMP TABLE f AS
           SELECT r.window_start, r.window_end, r.node, r.direction,
                  CASE WHEN inb THEN r.dst_ip ELSE r.src_ip END AS src_ip,
                  CASE WHEN inb THEN r.src_ip ELSE r.dst_ip END AS dst_ip,
                  CASE WHEN inb THEN r.src_ip ELSE r.orig_dst_ip END AS orig_dst_ip,
                  CASE WHEN inb THEN r.orig_dst_port ELSE r.dst_port END AS dst_port, r.proto,
                  CASE WHEN inb THEN r.rx_bytes ELSE r.tx_bytes END AS tx_bytes,
                  CASE WHEN inb THEN r.tx_bytes ELSE r.rx_bytes END AS rx_bytes,
                  CASE WHEN inb THEN r.rx_packets ELSE r.tx_packets END AS tx_packets,
                  CASE WHEN inb THEN r.tx_packets ELSE r.rx_packets END AS rx_packets,
                  CASE WHEN inb THEN r.dst_pod ELSE r.src_pod END AS src_pod,
                  CASE WHEN inb THEN r.dst_namespace ELSE r.src_namespace END AS src_namespace,
                  r.ps, r.ns, r.ss, r.es
           FROM (SELECT raw.*, raw.direction = 'inbound' AS inb, snap.ps, snap.ns, snap.ss, snap.es
                 FROM raw JOIN snap ON raw.window_end = snap.we) r
           LEFT JOIN pod_ip p ON r.inb AND p.t = r.ps AND p.ip = r.src_ip
           LEFT JOIN node_ip n ON r.inb AND n.t = r.ns AND n.ip = r.src_ip
           LEFT JOIN hostnet_ip h ON r.inb AND h.t = r.ps AND h.ip = r.src_ip
           WHERE NOT r.inb OR (p.ip IS NULL AND n.ip IS NULL AND h.ip IS NULL)""",
        # ---- DNS as of each (client, destination, window end)
        f"""CREATE TEMP TABLE dst_dom AS
            WITH q AS (SELECT DISTINCT src_ip, dst_ip, window_end FROM f),
                 d1 AS (SELECT client_ip, ip, seen, max(domain) AS domain FROM dns GROUP BY ALL),
                 d2 AS (SELECT ip, seen, max(domain) AS domain FROM dns GROUP BY ALL)
            SELECT q.src_ip, q.dst_ip, q.window_end,
                   coalesce(CASE WHEN epoch_us(q.window_end) - epoch_us(a.seen) <= {lookback} THEN a.domain END,
                            CASE WHEN epoch_us(q.window_end) - epoch_us(b.seen) <= {lookback} THEN b.domain END) AS domain
            FROM q ASOF LEFT JOIN d1 a ON a.client_ip = q.src_ip AND a.ip = q.dst_ip AND q.window_end >= a.seen
                   ASOF LEFT JOIN d2 b ON b.ip = q.dst_ip AND q.window_end >= b.seen""",
        # ---- resolution
        """CREATE TEMP VIEW res AS
           WITH j AS (
             SELECT f.*,
               sn.zone AS src_zone, sn.region AS sn_region, sn.provider AS sn_provider,
               (sni.name IS NOT NULL OR shn.node IS NOT NULL) AS src_is_node,
               sp.ip IS NOT NULL AS sp_found, sp.name AS sp_name, sp.namespace AS sp_ns,
               sp.workload_kind AS sp_wk, sp.workload_name AS sp_wn,
               pn.workload_kind AS pn_wk, pn.workload_name AS pn_wn,
               dp.ip IS NOT NULL AS dp_found, dp.name AS dp_name, dp.namespace AS dp_ns, dp.node AS dp_node,
               dp.workload_kind AS dp_wk, dp.workload_name AS dp_wn,
               CASE WHEN sv1.ip IS NOT NULL THEN sv1.name ELSE sv2.name END AS svc_name,
               CASE WHEN sv1.ip IS NOT NULL THEN sv1.namespace ELSE sv2.namespace END AS svc_ns,
               coalesce(dni.name, dhn.node) AS dn_ip,
               ep.ip IS NOT NULL AS ep_found, ep.service AS ep_svc, ep.namespace AS ep_ns, ep.node AS ep_node,
               ep.zone AS ep_zone
             FROM f
             LEFT JOIN node_name sn ON sn.t = f.ns AND sn.name = f.node
             LEFT JOIN node_ip sni ON sni.t = f.ns AND sni.ip = f.src_ip
             LEFT JOIN hostnet_ip shn ON shn.t = f.ps AND shn.ip = f.src_ip
             LEFT JOIN pod_ip sp ON sp.t = f.ps AND sp.ip = f.src_ip
             LEFT JOIN pod_name pn ON pn.t = f.ps AND pn.namespace = f.src_namespace AND pn.name = f.src_pod
             LEFT JOIN pod_ip dp ON dp.t = f.ps AND dp.ip = f.dst_ip
             LEFT JOIN svc_ip sv1 ON sv1.t = f.ss AND sv1.ip = f.orig_dst_ip
             LEFT JOIN svc_ip sv2 ON sv2.t = f.ss AND sv2.ip = f.dst_ip
             LEFT JOIN node_ip dni ON dni.t = f.ns AND dni.ip = f.dst_ip
             LEFT JOIN hostnet_ip dhn ON dhn.t = f.ps AND dhn.ip = f.dst_ip
             LEFT JOIN ep_ip ep ON ep.t = f.es AND ep.ip = f.dst_ip),
           k AS (
             SELECT j.*,
               CASE WHEN svc_name IS NOT NULL THEN 'service' WHEN dp_found THEN 'pod' WHEN dn_ip IS NOT NULL THEN 'node'
                    WHEN ep_found THEN 'endpoint' ELSE 'external' END AS dst_kind,
               CASE WHEN dp_found THEN dp_node WHEN dn_ip IS NOT NULL THEN dn_ip WHEN ep_found THEN ep_node END AS dst_node,
               src_pod IS NOT NULL AND NOT src_is_node AS raw_src
             FROM j)
           SELECT k.window_start, k.window_end, k.direction, k.node AS src_node, k.src_zone,
             coalesce(k.sn_region, '""" + region + """') AS src_region,
             coalesce(k.sn_provider, '""" + provider + """') AS src_provider,
             k.src_ip,
             CASE WHEN src_is_node THEN NULL WHEN src_pod IS NOT NULL THEN src_namespace ELSE sp_ns END AS src_namespace,
             CASE WHEN src_is_node THEN NULL WHEN src_pod IS NOT NULL THEN src_pod ELSE sp_name END AS src_pod,
             CASE WHEN src_is_node THEN NULL
                  WHEN src_pod IS NULL THEN sp_wk
                  WHEN sp_found AND sp_name = src_pod AND sp_ns IS NOT DISTINCT FROM src_namespace THEN sp_wk
                  ELSE pn_wk END AS src_workload_kind,
             CASE WHEN src_is_node THEN NULL
                  WHEN src_pod IS NULL THEN sp_wn
                  WHEN sp_found AND sp_name = src_pod AND sp_ns IS NOT DISTINCT FROM src_namespace THEN sp_wn
                  ELSE pn_wn END AS src_workload,
             dst_kind,
             CASE dst_kind WHEN 'service' THEN svc_ns WHEN 'pod' THEN dp_ns WHEN 'endpoint' THEN ep_ns END AS dst_namespace,
             CASE dst_kind WHEN 'service' THEN svc_name WHEN 'pod' THEN dp_name WHEN 'node' THEN dn_ip
                           WHEN 'endpoint' THEN ep_svc END AS dst_name,
             svc_name AS dst_service, dp_name AS dst_pod, dp_wk AS dst_workload_kind, dp_wn AS dst_workload,
             dst_node,
             CASE WHEN (dp_found OR dn_ip IS NOT NULL) AND dn.name IS NOT NULL THEN dn.zone
                  WHEN ep_found THEN ep_zone END AS dst_zone,
             dn.region AS dst_region,
             dd.domain AS dst_domain,
             k.dst_ip, k.dst_port, k.proto, k.tx_bytes, k.rx_bytes, k.tx_packets, k.rx_packets,
             ep_svc, ep_ns
           FROM k
           LEFT JOIN node_name dn ON dn.t = k.ns AND dn.name = k.dst_node
           LEFT JOIN dst_dom dd ON dd.src_ip = k.src_ip AND dd.dst_ip = k.dst_ip AND dd.window_end = k.window_end""",
        # ---- address properties of external destinations (longest prefix by bit-string prefixes)
        """CREATE TEMP TABLE ext_ip AS
           WITH u AS (SELECT DISTINCT dst_ip AS ip FROM f),
                g AS (SELECT ip, contains(ip, ':') AS v6,
                        CASE WHEN contains(ip, '::') THEN list_concat(
                               list_filter(string_split(split_part(ip, '::', 1), ':'), lambda x: x <> ''),
                               list_transform(range(8 - len(list_filter(string_split(split_part(ip, '::', 1), ':'), lambda x: x <> ''))
                                                      - len(list_filter(string_split(split_part(ip, '::', 2), ':'), lambda x: x <> ''))),
                                              lambda x: '0'),
                               list_filter(string_split(split_part(ip, '::', 2), ':'), lambda x: x <> ''))
                             ELSE string_split(ip, ':') END AS groups
                      FROM u)
           SELECT ip, CASE WHEN v6 THEN 6 ELSE 4 END AS fam,
                  CASE WHEN v6 THEN list_reduce(list_transform(groups, lambda x: lpad(bin(('0x' || x)::USMALLINT), 16, '0')),
                                                lambda a, b: a || b)
                       ELSE list_reduce(list_transform(string_split(ip, '.'), lambda x: lpad(bin(x::UTINYINT), 8, '0')),
                                        lambda a, b: a || b) END AS bits
           FROM g""",
        """CREATE TEMP TABLE ext_attr AS
           WITH c AS (SELECT e.ip, e.fam, l.plen, left(e.bits, l.plen) AS k
                      FROM ext_ip e JOIN (SELECT DISTINCT fam, plen FROM ranges UNION SELECT DISTINCT fam, plen FROM rules
                                          UNION SELECT DISTINCT fam, plen FROM private_nets) l ON l.fam = e.fam),
                rg AS (SELECT c.ip, arg_max(r.provider, r.rnk) AS provider, arg_max(r.service, r.rnk) AS service,
                              arg_max(r.region, r.rnk) AS region
                       FROM c JOIN ranges r ON r.fam = c.fam AND r.plen = c.plen AND r.bits = c.k GROUP BY c.ip),
                ru AS (SELECT c.ip, arg_max(u.cls, u.rnk) AS cls, arg_max(u.rate, u.rnk) AS rate,
                              arg_max(u.label, u.rnk) AS label
                       FROM c JOIN rules u ON u.fam = c.fam AND u.plen = c.plen AND u.bits = c.k GROUP BY c.ip),
                pv AS (SELECT DISTINCT c.ip FROM c JOIN private_nets p ON p.fam = c.fam AND p.plen = c.plen AND p.bits = c.k)
           SELECT e.ip, rg.provider, rg.service, rg.region, ru.cls AS rule_cls, ru.rate AS rule_rate, ru.label AS rule_label,
                  pv.ip IS NOT NULL AS private, e.ip IN ('169.254.169.254', 'fd00:ec2::254') AS imds
           FROM ext_ip e LEFT JOIN rg USING (ip) LEFT JOIN ru USING (ip) LEFT JOIN pv USING (ip)""",
        # ---- classes and per-row (untiered) cost
        """CREATE TEMP TABLE cls AS
           WITH c AS (
             SELECT res.*, a.provider AS dst_cloud_provider, a.service AS dst_cloud_service, a.region AS dst_cloud_region,
               a.rule_rate, a.rule_label,
               CASE WHEN res.dst_kind <> 'external' THEN
                      CASE WHEN dst_namespace = 'default' AND ((dst_kind = 'service' AND dst_service = 'kubernetes')
                                                           OR (dst_kind = 'endpoint' AND dst_name = 'kubernetes'))
                             THEN 'k8s_control_plane'
                           WHEN src_zone IS NULL OR dst_zone IS NULL THEN 'unknown'
                           WHEN src_region IS NOT NULL AND dst_region IS NOT NULL AND src_region <> dst_region THEN 'cross_region'
                           WHEN src_zone <> dst_zone THEN 'cross_zone'
                           ELSE 'same_zone' END
                    WHEN a.rule_cls IS NOT NULL THEN a.rule_cls
                    WHEN a.imds THEN 'imds'
                    WHEN a.private THEN
                      CASE WHEN rtrim(dst_domain, '.') GLOB '*.vpce.amazonaws.com' OR rtrim(dst_domain, '.') GLOB '*.privatelink.*'
                                OR rtrim(dst_domain, '.') GLOB '*.privatelink.*.azure.com' THEN 'private_link'
                           WHEN rtrim(dst_domain, '.') GLOB '*.eks.amazonaws.com' OR rtrim(dst_domain, '.') GLOB '*.azmk8s.io'
                                OR rtrim(dst_domain, '.') GLOB '*.gke.googleapis.com' THEN 'k8s_control_plane'
                           WHEN rtrim(dst_domain, '.') GLOB 'internal-*.elb.amazonaws.com'
                                OR rtrim(dst_domain, '.') GLOB '*.internal.cloudapp.azure.com' THEN 'load_balancer'
                           WHEN rtrim(dst_domain, '.') GLOB '*.amazonaws.com' OR rtrim(dst_domain, '.') GLOB '*.googleapis.com'
                                OR rtrim(dst_domain, '.') GLOB '*.vault.azure.net' OR rtrim(dst_domain, '.') GLOB '*.azure.com'
                                OR rtrim(dst_domain, '.') GLOB '*.windows.net' THEN 'cloud_api'
                           ELSE 'external_private' END
                    ELSE 'internet_egress' END AS traffic_class
             FROM res LEFT JOIN ext_attr a ON res.dst_kind = 'external' AND a.ip = res.dst_ip)
           SELECT c.*,
             CASE WHEN c.rule_rate IS NOT NULL THEN (c.tx_bytes + c.rx_bytes) / r.unit * c.rule_rate
                  ELSE (c.tx_bytes + c.rx_bytes) * coalesce(r.per_byte, 0.0) END AS base_cost,
             CASE WHEN c.rule_rate IS NOT NULL THEN c.rule_label ELSE coalesce(r.card, 'none') END AS rate_card,
             c.traffic_class = 'internet_egress' AND c.rule_rate IS NULL AS tiered
           FROM c LEFT JOIN rates r ON r.provider = c.src_provider AND r.region = c.src_region AND r.cls = c.traffic_class""",
        # ---- monthly egress tiers (F(cum_after) - F(cum_before), rows in (window_start, src_ip,
        # dst_ip, dst_port, proto) order per card and month) and the output, partitioned like ours
        f"""COPY (
              WITH t AS (
                SELECT *, sum(tx_bytes) OVER (PARTITION BY src_provider, src_region, date_trunc('month', window_start)
                                              ORDER BY window_start, src_ip, dst_ip, dst_port, proto
                                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)::DOUBLE AS cum
                FROM cls WHERE tiered),
              c AS (SELECT * EXCLUDE (cum), base_cost + CASE {tier_case} ELSE 0.0 END AS cost_usd FROM t
                    UNION ALL
                    SELECT *, base_cost AS cost_usd FROM cls WHERE NOT tiered)
              SELECT window_start, window_end, direction, src_node, src_zone, src_region, src_provider, src_ip,
                     src_namespace, src_pod, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_name,
                     dst_service, dst_pod, dst_workload_kind, dst_workload, dst_node, dst_zone, dst_region,
                     dst_domain, dst_cloud_provider, dst_cloud_service, dst_cloud_region, dst_ip, dst_port, proto,
                     traffic_class, tx_bytes, rx_bytes, tx_packets, rx_packets, cost_usd, rate_card,
                     strftime(window_start, '%Y-%m-%d') AS date, strftime(window_start, '%H') AS hour
              FROM c)
            TO '{out}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date, hour), OVERWRITE_OR_IGNORE)""",
    ]


def phase_duckdb(lake: Path, out_dir: Path) -> dict:
    import duckdb  # noqa: PLC0415

    from jobs.config import load_config  # noqa: PLC0415
    cfg = load_config(str(lake / "_expected" / "job-config.json"))
    out = out_dir / "duckdb-costs"
    shutil.rmtree(out, ignore_errors=True)
    tmp = out_dir / "duckdb-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET memory_limit = '8GB'")
    con.execute(f"SET temp_directory = '{tmp}'")
    pr = con.execute(f"SELECT DISTINCT lower(coalesce(provider, '{cfg.provider}')), coalesce(region, '{cfg.region}') "
                     f"FROM read_parquet('{lake}/inventory/nodes/*/*.parquet')").fetchall()
    setup = _setup_tables(con, cfg, REPO / "jobs" / "fixtures", sorted(set(pr)))
    stmts = duckdb_sql(lake, out, cfg, setup["tiers"])
    t0 = time.perf_counter()
    steps = []
    for s in stmts:
        t = time.perf_counter()
        con.execute(s)
        steps.append((" ".join(s.split())[:60], round(time.perf_counter() - t, 2)))
    seconds = time.perf_counter() - t0
    rows_in = con.execute("SELECT count(*) FROM raw").fetchone()[0]
    rows_out = con.execute(f"SELECT count(*) FROM read_parquet('{out}/*/*/*.parquet')").fetchone()[0]
    con.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"seconds": seconds, "rows_in": rows_in, "rows_out": rows_out, "steps": steps}


# -------------------------------------------------------------------------- compare

def totals(lake: Path, out_dir: Path) -> tuple[dict, dict]:
    import duckdb  # noqa: PLC0415
    con = duckdb.connect()
    q = ("SELECT traffic_class, count(*), sum(tx_bytes), sum(rx_bytes), sum(cost_usd) "
         "FROM read_parquet('{}', hive_partitioning = true) GROUP BY 1")
    ours = {r[0]: r[1:] for r in con.execute(q.format(f"{lake}/costs/flows/*/*/*.parquet")).fetchall()}
    duck = {r[0]: r[1:] for r in con.execute(q.format(f"{out_dir}/duckdb-costs/*/*/*.parquet")).fetchall()}
    return ours, duck


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="at least this many raw flow rows (default 10M)")
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--flows-per-window", type=int, default=1500, help="outbound rows per node per window")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "out"))
    ap.add_argument("--phase", choices=("ours", "duckdb"), help=argparse.SUPPRESS)
    ap.add_argument("--lake", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.phase:
        res = phase_ours(Path(a.lake), out) if a.phase == "ours" else phase_duckdb(Path(a.lake), out)
        (out / f"result-{a.phase}.json").write_text(json.dumps(res))
        return 0

    lake, info = ensure_lake(out, a.rows, a.nodes, a.flows_per_window, a.seed)
    print(f"lake: {lake} ({info['flow_rows']:,} raw flow rows in {info['flow_files']:,} files, "
          f"{info['nodes']} nodes x {info['hours']} h)", flush=True)
    print("timed, ours:   discovery, read + check raw files, as-of inventory + DNS, resolve, classify, price,\n"
          "               egress tiers, write costs/flows + rollups + state (local Ray, 2 CPUs; Ray start not timed)")
    print("timed, duckdb: read raw + inventory + DNS Parquet, the same rules in SQL, write costs/flows\n"
          "               partitioned by date/hour (2 threads; loading rate card / rules / IP-range prefixes not timed)",
          flush=True)
    duck = run_phase("duckdb", lake, out)
    print(f"duckdb: {duck['seconds']:.1f} s, {duck['rows_in'] / duck['seconds']:,.0f} rows/s, "
          f"peak {duck['peak_mib']:,.0f} MiB", flush=True)
    ours = run_phase("ours", lake, out)
    print(f"ours:   {ours['seconds']:.1f} s, {ours['rows_in'] / ours['seconds']:,.0f} rows/s, "
          f"peak {ours['peak_mib']:,.0f} MiB (driver + Ray workers)", flush=True)
    r_ours, r_duck = ours["rows_in"] / ours["seconds"], duck["rows_in"] / duck["seconds"]
    ratio = r_ours / r_duck
    print(f"ratio ours/duckdb: {ratio:.2f} (target >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'})")

    t_ours, t_duck = totals(lake, out)
    ok = True
    print(f"{'class':<18} {'rows ours':>12} {'rows duckdb':>12} {'bytes ours':>18} {'bytes duckdb':>18} "
          f"{'cost ours':>12} {'cost duckdb':>12}")
    for k in sorted(set(t_ours) | set(t_duck)):
        o = t_ours.get(k, (0, 0, 0, 0.0))
        d = t_duck.get(k, (0, 0, 0, 0.0))
        same = o[0] == d[0] and o[1] + o[2] == d[1] + d[2] and math.isclose(o[3], d[3], rel_tol=1e-9, abs_tol=1e-9)
        ok &= same
        print(f"{k:<18} {o[0]:>12,} {d[0]:>12,} {o[1] + o[2]:>18,} {d[1] + d[2]:>18,} {o[3]:>12.4f} {d[3]:>12.4f}"
              f"{'' if same else '  <-- differs'}")
    c_ours = sum(v[3] for v in t_ours.values())
    c_duck = sum(v[3] for v in t_duck.values())
    ok &= math.isclose(c_ours, c_duck, rel_tol=1e-9)
    print(f"total cost: ours ${c_ours:,.6f}, duckdb ${c_duck:,.6f}")
    print(f"totals agree: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
