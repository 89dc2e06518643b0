"""The cost job's bookkeeping over real lakes: incremental runs, late files, duplicates,
quarantine during a run, idempotent reruns, egress tiers re-applied when an earlier hour changes.

These run the job's task functions in this process (executor="inline"); tests/test_jobs_run.py
and tests/test_jobs_e2e.py run the same code on local Ray.
"""
from __future__ import annotations

import datetime as dt
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import catalog
from jobs import commit as C
from jobs import run as R
from jobs import state as st
from lake import schema as S
from lake.storage import open_lake
from lake.writer import write_inventory, write_raw

UTC = dt.timezone.utc
H0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
H1 = H0 + dt.timedelta(hours=1)
H2 = H0 + dt.timedelta(hours=2)
GB = 2 ** 30  # AWS bills internet egress per GB of 2^30 bytes (see jobs/ratecards/aws.json)
S3_IP = "52.216.10.10"  # public, inside the AWS S3 range of jobs/fixtures

NODES = [("n1", "10.1.0.1", "us-east-1a"), ("n2", "10.1.0.2", "us-east-1b"), ("n3", "10.1.0.3", "us-east-1c")]
PODS = [("web-1", "shop", "n1", "10.0.1.1"), ("db-1", "shop", "n2", "10.0.2.1"), ("batch-1", "etl", "n3", "10.0.3.1")]


def write_inventory_snapshot(lake, when):
    ts = lambda n: pa.array([when] * n, S.TS)  # noqa: E731
    write_inventory(lake, "nodes", when, pa.table({
        "snapshot_time": ts(3), "name": [n for n, _, _ in NODES], "internal_ip": [ip for _, ip, _ in NODES],
        "zone": [z for _, _, z in NODES], "region": ["us-east-1"] * 3, "provider": ["aws"] * 3,
    }))
    write_inventory(lake, "pods", when, pa.table({
        "snapshot_time": ts(3), "name": [p for p, _, _, _ in PODS], "namespace": [n for _, n, _, _ in PODS],
        "node": [nd for _, _, nd, _ in PODS], "ip": [ip for _, _, _, ip in PODS], "host_network": [False] * 3,
        "workload_kind": ["Deployment"] * 3, "workload_name": [p.split("-")[0] for p, _, _, _ in PODS],
        "phase": ["Running"] * 3,
    }))
    write_inventory(lake, "services", when, S.INV_SERVICES.empty_table())
    write_inventory(lake, "endpoints", when, S.INV_ENDPOINTS.empty_table())


def flows(start, node, rows):
    """rows: [(src_ip, dst_ip, tx, rx)] outbound, one window of 60 s starting at `start`."""
    n = len(rows)
    return pa.table({
        "window_start": pa.array([start] * n, S.TS),
        "window_end": pa.array([start + dt.timedelta(seconds=60)] * n, S.TS),
        "node": [node] * n, "direction": ["outbound"] * n,
        "src_ip": [r[0] for r in rows], "dst_ip": [r[1] for r in rows], "orig_dst_ip": [r[1] for r in rows],
        "orig_dst_port": pa.array([443] * n, pa.int32()), "dst_port": pa.array([443] * n, pa.int32()),
        "proto": pa.array([6] * n, pa.int16()),
        "tx_bytes": pa.array([r[2] for r in rows], pa.int64()), "tx_packets": pa.array([1] * n, pa.int64()),
        "rx_bytes": pa.array([r[3] for r in rows], pa.int64()), "rx_packets": pa.array([1] * n, pa.int64()),
        "connections": pa.array([1] * n, pa.int64()),
    })


def egress_cost(total_bytes):
    """Hand-computed AWS us-east-1 internet egress for a month's first `total_bytes` (< 10 TB):
    first 100 GB free, then $0.09/GB."""
    return max(total_bytes / GB - 100, 0) * 0.09


@pytest.fixture
def lake(tmp_path):
    lk = open_lake(str(tmp_path / "lake"))
    write_inventory_snapshot(lk, H0 - dt.timedelta(minutes=5))
    # H0: web-1 (zone a) -> db-1 (zone b) cross-zone; web-1 -> S3 60 GB egress.
    write_raw(lk, "raw/flows", "n1", H0, flows(H0, "n1", [("10.0.1.1", "10.0.2.1", 3 * GB, GB),
                                                          ("10.0.1.1", S3_IP, 60 * GB, GB // 2)]))
    # H1: 50 GB more egress from etl (crosses the 100 GB free tier), same-zone-free traffic.
    write_raw(lk, "raw/flows", "n3", H1, flows(H1, "n3", [("10.0.3.1", S3_IP, 50 * GB, 0)]))
    # H2: 30 GB more.
    write_raw(lk, "raw/flows", "n1", H2, flows(H2, "n1", [("10.0.1.1", S3_IP, 30 * GB, 0)]))
    return lk


def run(lake, **kw):
    return R.run_cost_job(R.JobOptions(lake_url=lake.url, executor="inline", progress=None, **kw))


def cost_table(lake, hour):
    """The hour's committed cost rows (what its record lists)."""
    parts = catalog.current_files(lake, "costs/flows", hour, hour + dt.timedelta(hours=1))
    assert parts, f"no committed parts for {hour}"
    return pa.concat_tables([pq.read_table(p, filesystem=lake.fs) for p in parts])


def all_costs(lake):
    files = catalog.current_files(lake, "costs/flows")
    # once a run is over, a plain glob of costs/flows/ sees exactly the committed parts
    assert files == [i.path for i in lake.list_files("costs/flows")]
    return pa.concat_tables([pq.read_table(p, filesystem=lake.fs) for p in files])


def class_cost(t, cls):
    return pc.sum(t.filter(pc.equal(t["traffic_class"], cls))["cost_usd"]).as_py() or 0.0


def test_first_run_costs_every_hour_and_writes_records(lake):
    res = run(lake)
    assert res.hours_computed == [H0, H1, H2] and res.hours_retiered == []
    assert res.rows_in == 4
    costs = all_costs(lake)
    assert pc.sum(costs["tx_bytes"]).as_py() == (3 + 60 + 50 + 30) * GB
    # cross-zone: AWS bills both sides, 0.01/GB each, on tx + rx.
    assert class_cost(costs, "cross_zone") == pytest.approx((3 + 1) * 0.01 * 2)
    # egress tiers over the month: 140 GB total, 40 GB above the free 100.
    assert class_cost(costs, "internet_egress") == pytest.approx(egress_cost(140 * GB))
    assert class_cost(cost_table(lake, H0), "internet_egress") == 0.0
    assert class_cost(cost_table(lake, H1), "internet_egress") == pytest.approx(egress_cost(110 * GB))
    for h in (H0, H1, H2):
        m = C.read_record(lake, h)
        assert m is not None and m.rows_in >= 1 and all(p.startswith("raw/flows/") for p in m.inputs)
    ledger = st.EgressLedger.load(lake, "2026-03")
    assert sum(sum(v.values()) for v in ledger.hours.values()) == 140 * GB


def test_second_run_without_new_files_processes_nothing(lake):
    run(lake)
    before = {i.path: i.mtime_ns for i in lake.list_files("costs")}
    res = run(lake)
    assert res.hours_computed == [] and res.hours_retiered == [] and res.rows_in == 0
    assert {i.path: i.mtime_ns for i in lake.list_files("costs")} == before


def test_late_file_recomputes_exactly_its_hour_and_retiers_later_hours(lake):
    run(lake)
    h2_before = cost_table(lake, H2)
    # A late upload for H0 from node n2: 20 GB more egress in H0.
    late = H0 + dt.timedelta(minutes=30)
    write_raw(lake, "raw/flows", "n2", late, flows(late, "n2", [("10.0.2.1", S3_IP, 20 * GB, 0)]))
    res = run(lake)
    assert res.hours_computed == [H0]
    # H1's tiers move (it crosses the free 100 GB later); H2 stays at $0.09/GB, its parts untouched
    assert res.hours_retiered == [H1]
    assert res.rows_in == 3  # only H0's rows were read again
    costs = all_costs(lake)
    assert class_cost(costs, "internet_egress") == pytest.approx(egress_cost(160 * GB))
    assert class_cost(cost_table(lake, H0), "internet_egress") == 0.0  # 80 GB: still free
    assert class_cost(cost_table(lake, H1), "internet_egress") == pytest.approx(egress_cost(130 * GB))
    assert class_cost(cost_table(lake, H2), "internet_egress") == pytest.approx(
        egress_cost(160 * GB) - egress_cost(130 * GB))
    h2_after = cost_table(lake, H2)
    assert h2_after.drop_columns(["cost_usd"]).equals(h2_before.drop_columns(["cost_usd"]))
    assert C.read_record(lake, H0).inputs.keys() >= {S.raw_file_path("raw/flows", "n2", late)}


def test_late_file_in_last_hour_retiers_nothing(lake):
    run(lake)
    late = H2 + dt.timedelta(minutes=1)
    write_raw(lake, "raw/flows", "n2", late, flows(late, "n2", [("10.0.2.1", "10.0.1.1", 100, 100)]))
    res = run(lake)
    assert res.hours_computed == [H2] and res.hours_retiered == []


def test_rerun_with_range_is_idempotent(lake):
    run(lake)
    first = {h: cost_table(lake, h) for h in (H0, H1, H2)}
    rollups = {p: pq.read_table(lake.path(S.cost_file_path(p, H0)), filesystem=lake.fs)
               for p in ("costs/namespace_hourly", "costs/workload_daily")}
    res = run(lake, start=H0, end=H2 + dt.timedelta(hours=1))
    assert res.hours_computed == [H0, H1, H2]
    for h in (H0, H1, H2):
        assert cost_table(lake, h).equals(first[h])
    for p, t in rollups.items():
        assert pq.read_table(lake.path(S.cost_file_path(p, H0)), filesystem=lake.fs).equals(t)
    assert len(lake.list_files("costs/flows")) == 3


def test_range_restricts_to_overlapping_hours(lake):
    run(lake)
    res = run(lake, start=H1 + dt.timedelta(minutes=10), end=H1 + dt.timedelta(minutes=20))
    assert res.hours_computed == [H1] and res.hours_retiered == []  # same bytes: H2's tiers did not move


def test_retried_upload_with_new_content_recomputes_the_hour(lake):
    run(lake)
    rel = S.raw_file_path("raw/flows", "n3", H1)
    old = os.stat(lake.path(rel)).st_mtime_ns
    write_raw(lake, "raw/flows", "n3", H1, flows(H1, "n3", [("10.0.3.1", S3_IP, 10 * GB, 0)]))
    os.utime(lake.path(rel), ns=(old + 10**9, old + 10**9))
    res = run(lake)
    assert res.hours_computed == [H1] and res.hours_retiered == [H2]
    assert class_cost(all_costs(lake), "internet_egress") == pytest.approx(egress_cost(100 * GB))


def test_duplicate_uploads_are_counted_once_newest_wins(lake):
    rel = S.raw_file_path("raw/flows", "n3", H1)
    dup = rel.replace("/flows-n3-", "/retry/flows-n3-")
    lake.write_table(dup, S.conform(flows(H1, "n3", [("10.0.3.1", S3_IP, 40 * GB, 0)]), S.RAW_FLOWS))
    t = os.stat(lake.path(rel)).st_mtime_ns
    os.utime(lake.path(dup), ns=(t + 10**9, t + 10**9))  # the retry is newer
    res = run(lake)
    assert res.duplicates == [rel]
    assert pc.sum(cost_table(lake, H1)["tx_bytes"]).as_py() == 40 * GB
    # both versions are in the record, so neither triggers a recomputation later
    assert set(C.read_record(lake, H1).inputs) == {rel, dup}
    assert run(lake).hours_computed == []


def test_invalid_file_is_quarantined_and_the_run_carries_on(lake):
    bad = S.raw_file_path("raw/flows", "n2", H1)
    t = flows(H1, "n2", [("10.0.2.1", S3_IP, GB, 0)])
    t = t.set_column(t.schema.get_field_index("tx_bytes"), "tx_bytes", pa.array([-5], pa.int64()))
    lake.write_table(bad, t)
    res = run(lake)
    assert [q["path"] for q in res.quarantined] == [bad] and res.quarantined[0]["reason"] == "negative_counter"
    assert res.hours_computed == [H0, H1, H2]
    assert pc.sum(cost_table(lake, H1)["tx_bytes"]).as_py() == 50 * GB  # the valid file is costed
    assert lake.exists(f"_quarantine/{bad}.reason.json") and not lake.exists(bad)
    assert run(lake).hours_computed == []  # not retried
    # a fixed re-upload is a new file: its hour is recomputed
    write_raw(lake, "raw/flows", "n2", H1, flows(H1, "n2", [("10.0.2.1", S3_IP, GB, 0)]))
    res = run(lake)
    assert res.hours_computed == [H1] and res.quarantined == []
    assert pc.sum(cost_table(lake, H1)["tx_bytes"]).as_py() == 51 * GB


def test_hour_without_record_is_redone(lake):
    run(lake)
    lake.delete(C.record_path(H1))  # as if H1 had never been committed
    res = run(lake)
    assert res.hours_computed == [H1] and res.hours_retiered == []  # H1's bytes are the same
    assert class_cost(all_costs(lake), "internet_egress") == pytest.approx(egress_cost(140 * GB))


def test_rollups_reconcile_with_cost_rows(lake):
    run(lake)
    costs = all_costs(lake)
    ns = pq.read_table(lake.path(S.cost_file_path("costs/namespace_hourly", H0)), filesystem=lake.fs)
    wd = pq.read_table(lake.path(S.cost_file_path("costs/workload_daily", H0)), filesystem=lake.fs)
    for t in (ns, wd):
        assert pc.sum(t["tx_bytes"]).as_py() == pc.sum(costs["tx_bytes"]).as_py()
        assert pc.sum(t["cost_usd"]).as_py() == pytest.approx(pc.sum(costs["cost_usd"]).as_py())


def test_empty_lake_is_a_no_op(tmp_path):
    res = R.run_cost_job(R.JobOptions(lake_url=str(tmp_path / "empty"), executor="inline", progress=None))
    assert res.hours_computed == [] and res.rows_in == 0


def dns_table(start, node, client, ip, domain):
    return pa.table({
        "window_start": pa.array([start], S.TS), "window_end": pa.array([start + dt.timedelta(seconds=60)], S.TS),
        "node": [node], "client_ip": [client], "domain": [domain], "ip": [ip],
        "ttl_s": pa.array([30], pa.int32()), "seen_at": pa.array([start + dt.timedelta(seconds=5)], S.TS),
    })


def test_dns_names_destinations_and_a_late_dns_file_recomputes_its_hour(lake):
    # H1's egress goes to a private address; its class depends on the DNS name asked for it.
    write_raw(lake, "raw/flows", "n1", H1 + dt.timedelta(minutes=2),
              flows(H1 + dt.timedelta(minutes=2), "n1", [("10.0.1.1", "10.99.0.7", GB, GB)]))
    run(lake)
    t = cost_table(lake, H1)
    assert t.filter(pc.equal(t["dst_ip"], "10.99.0.7"))["traffic_class"].to_pylist() == ["external_private"]
    write_raw(lake, "raw/dns", "n1", H1, dns_table(H1, "n1", "10.0.1.1", "10.99.0.7",
                                                  "vpce-0abc.s3.us-east-1.vpce.amazonaws.com"))
    res = run(lake)
    assert res.hours_computed == [H1]
    t = cost_table(lake, H1)
    row = t.filter(pc.equal(t["dst_ip"], "10.99.0.7")).to_pylist()[0]
    assert row["traffic_class"] == "private_link" and row["dst_domain"].startswith("vpce-0abc")
    assert row["cost_usd"] == pytest.approx(2 * 0.01)  # PrivateLink processing $0.01/GB on tx + rx


def test_invalid_dns_file_is_quarantined_once(lake):
    bad = S.raw_file_path("raw/dns", "n1", H0)
    lake.write_table(bad, dns_table(H0, "n1", "10.0.1.1", "10.99.0.7", "x.example").drop_columns(["ip"]))
    res = run(lake)
    assert [(q["path"], q["reason"]) for q in res.quarantined] == [(bad, "schema")]
    assert lake.exists(f"_quarantine/{bad}.reason.json") and not lake.exists(bad)
    assert res.hours_computed == [H0, H1, H2]


def test_unreadable_inventory_snapshot_is_skipped_not_quarantined(lake, capsys):
    rel = S.inventory_file_path("pods", H0 + dt.timedelta(minutes=1))
    lake.write_bytes(rel, b"not parquet")
    res = R.run_cost_job(R.JobOptions(lake_url=lake.url, executor="inline", progress=sys.stderr))
    assert res.quarantined == [] and lake.exists(rel)
    assert f"inventory snapshot {rel} skipped" in capsys.readouterr().err
    # the earlier snapshot still attributes the pods
    assert set(cost_table(lake, H0)["src_namespace"].to_pylist()) == {"shop"}


def test_egress_tiers_restart_each_month(tmp_path):
    lk = open_lake(str(tmp_path / "lake"))
    end_of_march = dt.datetime(2026, 3, 31, 23, 0, tzinfo=UTC)
    april = end_of_march + dt.timedelta(hours=1)
    write_inventory_snapshot(lk, end_of_march - dt.timedelta(minutes=5))
    write_raw(lk, "raw/flows", "n1", end_of_march, flows(end_of_march, "n1", [("10.0.1.1", S3_IP, 150 * GB, 0)]))
    write_raw(lk, "raw/flows", "n1", april, flows(april, "n1", [("10.0.1.1", S3_IP, 120 * GB, 0)]))
    res = run(lk)
    assert res.hours_computed == [end_of_march, april]
    assert class_cost(cost_table(lk, end_of_march), "internet_egress") == pytest.approx(egress_cost(150 * GB))
    assert class_cost(cost_table(lk, april), "internet_egress") == pytest.approx(egress_cost(120 * GB))
    state = st.EgressLedger.load(lk, "2026-04").state_before(april + dt.timedelta(hours=1))
    assert state["aws/us-east-1/internet_egress"] == 120 * GB


def test_snapshot_selection():
    t = lambda m: H0 + dt.timedelta(minutes=m)  # noqa: E731
    items = R._Sorted([(t(m), f"s{m}") for m in (0, 10, 20, 30)])
    assert R._select_snapshots(items, t(15), t(25)) == ["s0", "s10", "s20"]   # one extra before
    assert R._select_snapshots(items, t(-20), t(-10)) == ["s0"]               # before the first: earliest
    assert R._select_snapshots(items, t(-5), t(12)) == ["s0", "s10"]
    assert R._select_snapshots(items, t(40), t(50)) == ["s20", "s30"]
    assert R._select_snapshots(R._Sorted([]), t(0), t(1)) == []
