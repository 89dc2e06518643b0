"""Inventory as validity intervals (jobs/intervals.py) resolves exactly as the snapshots do.

Today's resolution (per-snapshot lookups over every snapshot's rows) and the interval form
must give identical cost rows: on a world built for the as-of rule's hard cases (an IP held by
two pods of one snapshot, a pod deleted between snapshots, an IP reused by another pod, a gap
without snapshots, windows before the first snapshot, hostNetwork pods, endpoint ties, pods the
agent named that the IP lookup does not find), with many random flows over them; and for a
whole simulated lake run by the job with either form.
"""
from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs import load
from jobs import state as st
from jobs import tasks as T
from jobs import pipeline as PL
from jobs import run as R
from jobs.config import JobConfig
from jobs.pipeline import compact, cost_flows
from lake import schema as S
from lake.storage import open_lake
from simulator.simulate import simulate
from test_jobs_cells import assert_close
from test_jobs_load_state import all_costs
from test_jobs_stages_world import T0, World, three_zone_world

POD_IPS = [f"10.0.{z}.{i}" for z in (1, 2, 3) for i in (21, 22, 50, 60, 70)]


def hard_world() -> World:
    w = three_zone_world()
    w.node("n-x", "10.0.9.10", "us-east-1a", external_ip="54.0.0.9")
    w.pod("hn-1", "kube-system", "n-b", "10.0.2.10", host_network=True, kind="DaemonSet")
    # two pods of one snapshot on one IP: the Running one wins, whatever the row order
    w.pod("done-1", "batch", "n-b", "10.0.2.50", kind="Job", phase="Succeeded")
    w.pod("next-1", "batch", "n-c", "10.0.2.50", kind="Job")
    w.pod("live-2", "batch", "n-c", "10.0.3.60", kind="Job").pod("fin-2", "batch", "n-a", "10.0.3.60", phase="Failed")
    # two Running pods on one IP (a stale row): the last row wins
    w.pod("twin-a", "shop", "n-a", "10.0.1.60").pod("twin-b", "shop", "n-b", "10.0.1.60")
    w.pod("gone-1", "shop", "n-c", "10.0.3.70")
    w.service("web", "shop", "172.20.0.20")
    # one IP behind two services (and the same key twice): the smallest (namespace, service, port) wins
    w.endpoint("web", "shop", "10.0.1.21", 8080, pod="web-1", node="n-a", zone="us-east-1a")
    w.endpoint("api", "shop", "10.0.1.21", 8081, pod="web-1", node="n-a", zone="us-east-1a")
    w.endpoint("api", "shop", "10.0.1.21", 8081, node="n-b", zone="us-east-1b")
    w.endpoint("ext", "shop", "10.0.8.8", 443, zone="us-east-1c")
    w.snapshot(0).snapshot(5)                       # identical snapshots: one interval
    w.remove_pod("gone-1", "shop")                  # deleted between snapshots
    w.remove_pod("next-1", "batch").pod("reuse-1", "etl", "n-a", "10.0.2.50", kind="Job")  # IP reused
    w.snapshot(10)
    # a gap: nothing from minute 10 to minute 40; then the deleted pod's IP comes back to it
    w.pod("gone-1", "shop", "n-c", "10.0.3.70").remove_pod("twin-b", "shop")
    w.snapshot(40).snapshot(41)
    return w


def random_flows(w: World, rng, n: int) -> None:
    ips = POD_IPS + ["10.0.2.10", "10.0.1.10", "10.0.9.10", "54.0.0.9", "172.20.0.10", "172.20.0.20",
                     "10.0.8.8", "10.0.200.5", "52.216.10.10", "8.8.8.8"]
    names = [("shop", "web-1"), ("shop", "twin-b"), ("batch", "done-1"), ("etl", "reuse-1"), ("shop", "nope"), (None, None)]
    for _ in range(n):
        src, dst = rng.choice(ips), rng.choice(ips)
        ns, pod = names[rng.integers(len(names))]
        w.flow(src, dst, node=str(rng.choice(["n-a", "n-b", "n-c", "n-x", "n-gone"])), minute=int(rng.integers(-8, 50)),
               direction=str(rng.choice(["outbound", "inbound"])), orig=str(rng.choice([dst, "172.20.0.10"])),
               tx=int(rng.integers(1, 10 ** 9)), rx=int(rng.integers(0, 10 ** 6)), src_pod=pod, src_ns=ns)


def test_intervals_resolve_the_hard_cases_exactly_as_the_snapshots():
    w = hard_world()
    rng = np.random.default_rng(7)
    random_flows(w, rng, 3000)
    # hand-picked rows, so each case is surely present
    for minute in (-8, 2, 7, 12, 25, 45):
        for ip in ("10.0.2.50", "10.0.3.60", "10.0.1.60", "10.0.3.70", "10.0.1.21", "10.0.2.10", "54.0.0.9"):
            w.flow("10.0.1.22", ip, node="n-a", minute=minute, tx=1000, rx=10)
            w.flow(ip, "8.8.8.8", node="n-b", minute=minute, tx=1000, src_pod="twin-b", src_ns="shop")
    ctx = w.context(JobConfig())
    iv = compact(ctx)
    a, b = cost_flows(w.raw(), ctx), cost_flows(w.raw(), iv)
    assert a.num_rows > 2000 and a.equals(b)
    # the cases did happen, as the as-of rule says
    rows = a.filter(pc.equal(a["src_ip"], "10.0.1.22")).to_pylist()
    pod_at = {(r["window_start"], r["dst_ip"]): r["dst_pod"] for r in rows}
    m = lambda x: T0 + dt.timedelta(minutes=x)  # noqa: E731
    assert pod_at[(m(2), "10.0.2.50")] == "next-1" and pod_at[(m(12), "10.0.2.50")] == "reuse-1"
    assert pod_at[(m(2), "10.0.3.60")] == "live-2"
    assert pod_at[(m(2), "10.0.1.60")] == "twin-b" and pod_at[(m(45), "10.0.1.60")] == "twin-a"
    assert pod_at[(m(7), "10.0.3.70")] == "gone-1" and pod_at[(m(25), "10.0.3.70")] is None
    assert pod_at[(m(45), "10.0.3.70")] == "gone-1" and pod_at[(m(-8), "10.0.2.50")] == "next-1"
    # the interval form is smaller: the two identical snapshots are one interval
    assert iv.intervals.pods.table.num_rows < ctx.pods.table.num_rows
    for h in (T0 - dt.timedelta(hours=1), T0):
        assert load.context_gaps(ctx, h) == load.context_gaps(iv, h)
    assert load.context_gaps(iv, T0)  # the gap from minute 10 to 40


def test_empty_and_missing_kinds_resolve_alike():
    w = World().node("n-a", "10.0.1.10", "us-east-1a").snapshot(3)
    w.rows["services"], w.rows["endpoints"] = [], []
    w.flow("10.0.1.10", "10.0.1.99", node="n-a", minute=1, tx=5).flow("10.0.1.99", "10.0.1.10", node="n-a",
                                                                        direction="inbound", minute=5, tx=5)
    ctx = w.context()
    assert cost_flows(w.raw(), ctx).equals(cost_flows(w.raw(), compact(ctx)))


def test_a_simulated_lake_costs_the_same_with_either_form(tmp_path, monkeypatch):
    """One run with intervals carried hour to hour, two runs carrying through the stored state,
    and today's form (every selected snapshot's rows, nothing carried): the same rows."""
    lake = open_lake(str(tmp_path / "lake"))
    simulate(lake, nodes=4, hours=3, seed=11, flows_per_node_window=30, workers=1)
    hours = sorted({st.hour_of(S.parse_raw_file_name(lake.rel(i.path))[2]) for i in lake.list_files("raw/flows")})
    assert len(hours) == 3
    # the snapshotter was down across both hour boundaries: the first windows of hours 1 and 2
    # resolve against the last snapshot of the hour before (the carried state), and the gaps show
    dropped = 0
    for i in lake.list_files("inventory"):
        stamp = dt.datetime.strptime(i.path.rsplit("-", 1)[-1][:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        if any(h <= stamp < h + dt.timedelta(minutes=12) for h in hours[1:]):
            lake.fs.delete_file(i.path)
            dropped += 1
    assert dropped >= 8
    for name in ("split", "twin"):
        shutil.copytree(lake.root, tmp_path / name)
    split, twin = open_lake(str(tmp_path / "split")), open_lake(str(tmp_path / "twin"))
    opts = dict(executor="inline", progress=None, cell_rows=20_000)
    carried = []
    real = T._prev_inventory

    def spy(lk, spec, handed):
        got = real(lk, spec, handed)
        carried.append((spec.hour, handed is not None, got))
        return got

    monkeypatch.setattr(T, "_prev_inventory", spy)
    res = R.run_cost_job(R.JobOptions(lake_url=lake.url, **opts))
    assert sorted(res.inventory_gaps) == hours[1:]
    assert [(h, hd, r is not None) for h, hd, r in carried] == [(hours[0], False, False), (hours[1], True, True),
                                                               (hours[2], True, True)]
    carried.clear()
    R.run_cost_job(R.JobOptions(lake_url=split.url, end=hours[1], **opts))
    R.run_cost_job(R.JobOptions(lake_url=split.url, **opts))
    # the second run starts hour 1 from the inventory state stored by the first
    assert [(h, hd, r is not None) for h, hd, r in carried] == [(hours[0], False, False), (hours[1], False, True),
                                                               (hours[2], True, True)]
    monkeypatch.setattr(T, "_prev_inventory", lambda lk, spec, handed: None)
    monkeypatch.setattr(PL, "compact", lambda ctx, earlier=None: ctx)   # today's form
    ref = R.run_cost_job(R.JobOptions(lake_url=twin.url, **opts))
    assert ref.inventory_gaps == res.inventory_gaps
    key = [(k, "ascending") for k in ("window_start", "src_node", "src_ip", "dst_ip", "dst_port", "tx_bytes", "rx_bytes")]
    a, b, c = (all_costs(x).sort_by(key) for x in (lake, split, twin))
    assert a.num_rows > 10_000
    assert_close(a, c, "intervals vs snapshots")
    assert_close(b, c, "intervals carried across runs vs snapshots")
    assert set(a["dst_kind"].to_pylist()) >= {"pod", "service", "node", "external"}
