"""Benchmark: the cost job against a DuckDB SQL implementation of the same rules.

    python bench/cost_job.py [--rows 10000000] [--nodes 10] [--flows-per-window 1500]

1. Generates (once; cached under bench/out/) a simulated lake with at least --rows raw flow
   rows through the simulator (`simulator.simulate.simulate`, the agent's writer).
2. OURS, timed: `run_cost_job` on local Ray (2 CPUs) from an empty `_state/` and `costs/`:
   discovery, reading + checking every raw file, as-of inventory and DNS, resolution,
   classification, pricing, egress tiers in time order, writing costs/flows partitions,
   rollups, ledger and manifests. Ray start-up (~5 s) is outside the timed part.
3. DUCKDB, timed: `bench/cost_sql.py`, the same rules in SQL as one would write them (one
   statement of CTEs; attributes per distinct (snapshot set, address); a semi-join before the DNS
   as-of join; integer CIDR prefixes; the job's tie-breaks) from the same Parquet files to a
   partitioned costs/flows copy, on one connection with 2 threads and `memory_limit` set to the
   peak memory our side used (the same budget; DuckDB spills beyond it, and the peak spill is
   reported). Loading the rate card, rules and IP-range prefixes (setup, < 1 s) is untimed.
Each side runs in its own process; peak memory is the largest sum of PSS (proportional set
size: shared pages split between processes) over that process and its children (Ray workers
included), sampled every 0.1 s.
Prints rows/s for both, the ratio ours/duckdb (target >= 0.8, goal >= 1.0) and whether the totals (bytes
and rows per class, total cost) agree.
"""
from __future__ import annotations

import argparse
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


def _group_nice(nice: int) -> None:
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass  # no autogroup scheduling here (or not allowed): start at normal priority


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


def run_phase(phase: str, lake: Path, out_dir: Path, timeout: float = 3600, memory_limit_mib: int | None = None) -> dict:
    """Run one side in a child process; sample its process tree's memory; return its JSON."""
    result_file = out_dir / f"result-{phase}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--lake", str(lake),
           "--out", str(out_dir)] + (["--memory-limit-mib", str(memory_limit_mib)] if memory_limit_mib else [])
    proc = subprocess.Popen(cmd, cwd=str(REPO), start_new_session=True)  # its own scheduler group
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
    # Ray's start-up has fixed deadlines (15-30 s) a busy, shared machine can miss: the start
    # runs at a raised priority for this process's scheduler group (its own session's autogroup),
    # set back to normal before anything is timed, and is tried up to three times.
    _group_nice(-10)
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
            break
        except Exception:  # noqa: BLE001
            ray.shutdown()
            if attempt == 2:
                raise
    _group_nice(0)
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

def phase_duckdb(lake: Path, out_dir: Path, memory_limit_mib: int | None) -> dict:
    from bench import cost_sql  # noqa: PLC0415
    from jobs.config import load_config  # noqa: PLC0415
    cfg = load_config(str(lake / "_expected" / "job-config.json"))
    return cost_sql.run(lake, out_dir / "duckdb-costs", cfg, REPO / "jobs" / "fixtures",
                        memory_limit_mib=memory_limit_mib, threads=2, tmp=out_dir / "duckdb-tmp")


# -------------------------------------------------------------------------- compare

from bench.cost_sql import PRICED_ALIKE  # noqa: E402


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
    ap.add_argument("--memory-limit-mib", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.phase:
        res = phase_ours(Path(a.lake), out) if a.phase == "ours" else phase_duckdb(Path(a.lake), out, a.memory_limit_mib)
        (out / f"result-{a.phase}.json").write_text(json.dumps(res))
        return 0

    lake, info = ensure_lake(out, a.rows, a.nodes, a.flows_per_window, a.seed)
    print(f"lake: {lake} ({info['flow_rows']:,} raw flow rows in {info['flow_files']:,} files, "
          f"{info['nodes']} nodes x {info['hours']} h)", flush=True)
    print("timed, ours:   discovery, read + check raw files, as-of inventory + DNS, resolve, classify, price,\n"
          "               egress tiers, write costs/flows + rollups + state (local Ray, 2 CPUs; Ray start not timed)")
    print("timed, duckdb: read raw + inventory + DNS Parquet, the same rules in SQL (bench/cost_sql.py), write\n"
          "               costs/flows by date/hour (2 threads, memory_limit = our peak; reference tables not timed)",
          flush=True)
    ours = run_phase("ours", lake, out)
    print(f"ours:   {ours['seconds']:.1f} s, {ours['rows_in'] / ours['seconds']:,.0f} rows/s, "
          f"peak {ours['peak_mib']:,.0f} MiB (driver + Ray workers)", flush=True)
    # the same memory budget for both sides: DuckDB may use what our job used (it spills beyond)
    budget = max(256, int(ours["peak_mib"]))
    duck = run_phase("duckdb", lake, out, memory_limit_mib=budget)
    print(f"duckdb: {duck['seconds']:.1f} s, {duck['rows_in'] / duck['seconds']:,.0f} rows/s, "
          f"peak {duck['peak_mib']:,.0f} MiB, memory_limit {budget:,} MiB, "
          f"peak spill {duck['spill_bytes'] / 2**20:,.0f} MiB", flush=True)
    print("duckdb steps (s): " + ", ".join(f"{name}... {sec}" for name, sec in duck["steps"]), flush=True)
    r_ours, r_duck = ours["rows_in"] / ours["seconds"], duck["rows_in"] / duck["seconds"]
    ratio = r_ours / r_duck
    print(f"ratio ours/duckdb (throughput): {ratio:.2f} (target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'}; "
          f"goal >= 1.0)")

    t_ours, t_duck = totals(lake, out)
    ok = True
    print(f"{'class':<18} {'rows ours':>12} {'rows duckdb':>12} {'bytes ours':>18} {'bytes duckdb':>18} "
          f"{'cost ours':>12} {'cost duckdb':>12}")
    for k in sorted(set(t_ours) | set(t_duck)):
        o = t_ours.get(k, (0, 0, 0, 0.0))
        d = t_duck.get(k, (0, 0, 0, 0.0))
        same_rows = o[0] == d[0] and o[1] + o[2] == d[1] + d[2]
        same_cost = math.isclose(o[3], d[3], rel_tol=1e-9, abs_tol=1e-9)
        ok &= same_rows and (same_cost or k not in PRICED_ALIKE)
        note = ("" if same_rows and same_cost else "  <-- rows/bytes differ" if not same_rows
                else "  (dollars: a pricing rule the SQL does not have)" if k not in PRICED_ALIKE else "  <-- differs")
        print(f"{k:<18} {o[0]:>12,} {d[0]:>12,} {o[1] + o[2]:>18,} {d[1] + d[2]:>18,} {o[3]:>12.4f} {d[3]:>12.4f}{note}")
    c_ours = sum(v[3] for v in t_ours.values())
    c_duck = sum(v[3] for v in t_duck.values())
    print(f"total cost: ours ${c_ours:,.6f}, duckdb ${c_duck:,.6f}")
    print(f"rows and bytes per class agree, and dollars of the classes both price alike: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
