"""`netmon-jobs simulate`: write a realistic lake of a simulated cluster, with ground truth.

The lake is written through lake.writer (the agent's own writer): raw/flows and raw/dns one
file per node per 60 s window, inventory snapshots of the four kinds every minute, and
`_expected/flows/...` with what the cost job must conclude for every raw flow row (class,
destination kind and name, source pod, keep or drop). `_expected/job-config.json` holds the
user rules those expectations assume (a peered VPC). docs/simulator.md describes the cluster.

Deterministic: the same arguments give byte-identical files.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simulator.cluster import Cluster, build_cluster
from simulator.flows import EXPECTED_FLOWS, WindowTables, window_tables
from lake import schema as S
from lake.storage import Lake, LakeError, open_lake
from lake.writer import write_inventory, write_raw

__all__ = ["simulate", "main", "SimSummary", "generate_flow_tables", "build_cluster", "window_tables",
           "EXPECTED_FLOWS", "expected_file_path", "inventory_tables", "SimulationError", "SimulateError"]

EXPECTED_CONFIG = f"{S.EXPECTED_DIR}/job-config.json"


class SimulationError(ValueError):
    """Bad simulator arguments (one clear line)."""


SimulateError = SimulationError   # the name jobs/cli.py looks for


@dataclass
class SimSummary:
    lake: str
    nodes: int
    hours: int
    seed: int
    flow_files: int = 0
    dns_files: int = 0
    inventory_files: int = 0
    expected_files: int = 0
    flow_rows: int = 0
    dns_rows: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0
    classes: dict[str, int] = field(default_factory=dict)   # kept rows per expected class
    dropped_rows: int = 0                                    # inbound duplicates (keep=false)
    seconds: float = 0.0

    @property
    def files(self) -> int:
        return self.flow_files + self.dns_files + self.inventory_files + self.expected_files

    def __str__(self) -> str:
        rate = self.flow_rows / self.seconds if self.seconds else 0.0
        lines = [
            f"simulated {self.nodes} nodes x {self.hours} h (seed {self.seed}) into {self.lake}",
            f"  files: {self.files} (flows {self.flow_files}, dns {self.dns_files}, "
            f"inventory {self.inventory_files}, expected {self.expected_files})",
            f"  flow rows: {self.flow_rows:,} ({self.dropped_rows:,} inbound duplicates to drop); "
            f"dns rows: {self.dns_rows:,}",
            f"  bytes: tx {self.tx_bytes:,} rx {self.rx_bytes:,}",
            f"  {self.seconds:.1f} s, {rate:,.0f} flow rows/s",
            "  expected classes (kept rows):",
        ]
        lines += [f"    {k:<18} {v:>12,}" for k, v in sorted(self.classes.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


# --------------------------------------------------------------------------- tables


def expected_file_path(node: str, window_start: dt.datetime) -> str:
    """`_expected/flows/date=/hour=/node=/expected-NODE-STAMP.parquet`, beside its raw file."""
    raw = S.raw_file_path("raw/flows", node, window_start)
    rel = raw[len("raw/"):].replace("/flows-", "/expected-")
    return f"{S.EXPECTED_DIR}/{rel}"


class _Inventory:
    """Every pod row and endpoint row of the whole run, with its alive interval; a snapshot
    is a filter on `start <= s < end`."""

    def __init__(self, c: Cluster):
        p, codes = c.pod, c.codes
        w = c.workloads
        pods = np.flatnonzero(~p["virtual"])
        fam6 = pods[p["ip6"][pods] >= 0]
        rows = np.concatenate([pods, fam6])
        ips = np.concatenate([p["ip4"][pods], p["ip6"][fam6]])
        order = np.lexsort((ips, rows))
        rows, ips = rows[order], ips[order]
        strings = codes.strings
        wk = p["workload"][rows]
        self.pod_start, self.pod_end = p["start"][rows], p["end"][rows]
        self.pods = pa.table({
            "name": [strings[i] for i in p["name"][rows]],
            "namespace": [w[i].ns for i in wk],
            "uid": [c.pod_uid[i] for i in rows],
            "node": [c.node_names[i] for i in p["node"][rows]],
            "ip": [strings[i] for i in ips],
            "host_network": p["host"][rows],
            "workload_kind": [w[i].kind for i in wk],
            "workload_name": [w[i].name for i in wk],
            "phase": ["Running"] * len(rows),
        })
        ep, ep_start, ep_end = [], [], []
        for s in c.services:
            if s.name == "kubernetes" and s.ns == "default":
                for i, ip in enumerate(c.cp_endpoints):   # control-plane ENIs in the VPC, not pods
                    ep.append((s.name, s.ns, strings[ip], s.target_port, s.proto, None, None, c.zones[i % 3]))
                    ep_start.append(-S_FOREVER)
                    ep_end.append(S_FOREVER)
            elif s.workload >= 0:
                for pi in np.flatnonzero((p["workload"] == s.workload)):
                    fams = [p["ip4"][pi]] + ([p["ip6"][pi]] if len(s.ips) > 1 and p["ip6"][pi] >= 0 else [])
                    for ip in fams:
                        ep.append((s.name, s.ns, strings[ip], s.target_port, s.proto, strings[p["name"][pi]],
                                   c.node_names[p["node"][pi]], c.zones[c.node_zone[p["node"][pi]]]))
                        ep_start.append(p["start"][pi])
                        ep_end.append(p["end"][pi])
        cols = list(zip(*ep))
        self.endpoints = pa.table({
            "service": pa.array(cols[0], pa.string()), "namespace": pa.array(cols[1], pa.string()),
            "ip": pa.array(cols[2], pa.string()), "port": pa.array(cols[3], pa.int32()),
            "proto": pa.array(cols[4], pa.int16()), "pod": pa.array(cols[5], pa.string()),
            "node": pa.array(cols[6], pa.string()), "zone": pa.array(cols[7], pa.string()),
        })
        self.ep_start, self.ep_end = np.array(ep_start), np.array(ep_end)
        self.services = pa.table({
            "name": [s.name for s in c.services for _ in s.ips],
            "namespace": [s.ns for s in c.services for _ in s.ips],
            "cluster_ip": [strings[ip] for s in c.services for ip in s.ips],
            "type": [s.type for s in c.services for _ in s.ips],
        })
        self.nodes = pa.table({
            "name": c.node_names,
            "internal_ip": [strings[i] for i in c.node_ip],
            "external_ip": pa.array([strings[i] if i >= 0 else None for i in c.node_ext_ip], pa.string()),
            "zone": [c.zones[z] for z in c.node_zone],
            "region": [c.regions[r] for r in c.node_region],
            "provider": [c.provider] * len(c.node_names),
            "instance_type": c.node_instance,
            "node_group": c.node_group,
        })

    def at(self, s: int, when: dt.datetime) -> dict[str, pa.Table]:
        def stamp(t: pa.Table, mask: np.ndarray | None = None) -> pa.Table:
            if mask is not None:
                t = t.filter(pa.array(mask))
            ts = pa.array(np.full(t.num_rows, int(when.timestamp()) * 1_000_000, dtype=np.int64)).cast(S.TS)
            return t.add_column(0, "snapshot_time", ts)
        return {
            "pods": stamp(self.pods, (self.pod_start <= s) & (s < self.pod_end)),
            "services": stamp(self.services),
            "nodes": stamp(self.nodes),
            "endpoints": stamp(self.endpoints, (self.ep_start <= s) & (s < self.ep_end)),
        }


S_FOREVER = 10**9


def inventory_tables(c: Cluster) -> Iterator[tuple[dt.datetime, dict[str, pa.Table]]]:
    """The four inventory snapshots at every minute boundary, 0..minutes inclusive (the last
    one is the end of the last window, which the cost job's as-of rule reads)."""
    inv = _Inventory(c)
    for s in range(c.minutes + 1):
        when = c.start + dt.timedelta(minutes=s)
        yield when, inv.at(s, when)


def generate_flow_tables(nodes: int, hours: int, seed: int, regions: int = 1,
                         start: dt.datetime | None = None, flows_per_node_window: int | None = None,
                         provider: str = "aws") -> Iterator[WindowTables]:
    """Every window of the simulation as in-memory tables (all nodes per window; slice a node
    with `wt.flow_bounds[node]`). For benchmarks that want rows without the files."""
    c = build_cluster(nodes, hours, seed, regions, start, flows_per_node_window, provider)
    for m in range(c.minutes):
        yield window_tables(c, m)


# --------------------------------------------------------------------------- simulate


def simulate(lake: Lake, nodes: int, hours: int, seed: int, regions: int = 1,
             start: dt.datetime | None = None, flows_per_node_window: int | None = None,
             provider: str = "aws", progress: Callable[[str], None] | None = None,
             workers: int = 4) -> SimSummary:
    """Write the simulated cluster's raw files, inventory and ground truth into `lake`."""
    t0 = time.monotonic()
    try:
        c = build_cluster(nodes, hours, seed, regions, start, flows_per_node_window, provider)
    except ValueError as exc:
        raise SimulationError(str(exc)) from exc
    summary = SimSummary(lake=lake.url, nodes=nodes, hours=hours, seed=seed)
    classes: Counter[str] = Counter()
    # Parquet encoding and uploads release the GIL: overlap them with the next window.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = []
        for m in range(c.minutes):
            wt = window_tables(c, m)
            ws = wt.window_start
            for node, (a, b) in wt.flow_bounds.items():
                pending.append(pool.submit(write_raw, lake, "raw/flows", node, ws, wt.flows.slice(a, b - a)))
                pending.append(pool.submit(lake.write_table, expected_file_path(node, ws), wt.expected.slice(a, b - a)))
            for node, (a, b) in wt.dns_bounds.items():
                pending.append(pool.submit(write_raw, lake, "raw/dns", node, ws, wt.dns.slice(a, b - a)))
            summary.flow_files += len(wt.flow_bounds)
            summary.expected_files += len(wt.flow_bounds)
            summary.dns_files += len(wt.dns_bounds)
            summary.flow_rows += wt.flows.num_rows
            summary.dns_rows += wt.dns.num_rows
            summary.tx_bytes += int(pc.sum(wt.flows["tx_bytes"]).as_py() or 0)
            summary.rx_bytes += int(pc.sum(wt.flows["rx_bytes"]).as_py() or 0)
            keep = wt.expected["keep"]
            summary.dropped_rows += wt.expected.num_rows - int(pc.sum(keep).as_py() or 0)
            for v in pc.value_counts(wt.expected["traffic_class"].drop_null()).to_pylist():
                classes[v["values"]] += v["counts"]
            if len(pending) > 256:
                _drain(pending)
            if progress and (m + 1) % 60 == 0:
                progress(f"simulate: hour {(m + 1) // 60}/{hours} done, {summary.flow_rows:,} flow rows")
        for when, tables in inventory_tables(c):
            for kind, table in tables.items():
                pending.append(pool.submit(write_inventory, lake, kind, when, table))
            summary.inventory_files += len(tables)
            if len(pending) > 256:
                _drain(pending)
        _drain(pending)
    config = {"provider": provider, "region": c.regions[0], "rules": c.job_rules, **c.job_config}
    lake.write_bytes(EXPECTED_CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    summary.classes = dict(sorted(classes.items()))
    summary.seconds = time.monotonic() - t0
    return summary


def _drain(pending: list) -> None:
    for f in pending:
        f.result()
    pending.clear()


# --------------------------------------------------------------------------------- CLI


def parse_start(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise SimulationError(f"invalid --start {text!r} (expected e.g. 2026-01-05T00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)   # the lake is UTC; a bare time means UTC
    return when.astimezone(dt.timezone.utc)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="netmon-jobs simulate",
                                          description="Write a simulated cluster's lake with ground truth.")
    p.add_argument("--lake", default=os.environ.get("NETMON_LAKE"), help="lake URL [NETMON_LAKE]")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--hours", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--regions", type=int, choices=(1, 2), default=1)
    p.add_argument("--start", default=None, help="first window, UTC (default 2026-01-05T00:00Z)")
    p.add_argument("--flows-per-window", type=int, default=None, dest="flows_per_window",
                   help="outbound flow rows per node per 60 s window (default 80)")
    p.add_argument("--provider", default="aws", choices=("aws", "gcp", "azure"))
    p.add_argument("--s3-endpoint", default=os.environ.get("NETMON_S3_ENDPOINT"),
                   help="S3 endpoint override, e.g. MinIO [NETMON_S3_ENDPOINT]")
    return p


def run(args: argparse.Namespace) -> SimSummary:
    if not args.lake:
        raise SimulationError("no lake given: pass --lake URL or set NETMON_LAKE")
    start = parse_start(args.start) if args.start else None
    lake = open_lake(args.lake, s3_endpoint=args.s3_endpoint)
    return simulate(lake, args.nodes, args.hours, args.seed, regions=args.regions, start=start,
                    flows_per_node_window=args.flows_per_window, provider=args.provider,
                    progress=lambda msg: print(msg, file=sys.stderr, flush=True))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (SimulationError, LakeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: writing the lake failed: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
