"""A late raw/dns file: its hour's DNS state is rebuilt and rolled through the later hours.

The late answers name flows of their own hour and of the next hour (one whose only answer is
the late one); an answer of the hour after supersedes them, so the roll stops there and the
hour after that is not touched. The incremental result must equal a cold full run over the
same files, row by row and in dollars. Runs the task functions in this process (inline).
"""
from __future__ import annotations

import datetime as dt
import os
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from jobs import commit as C
from jobs import context as cx
from jobs import run as R
from lake import schema as S
from lake.storage import open_lake
from lake.writer import write_raw
from test_jobs_cells import assert_close
from test_jobs_load_state import GB, H0, H1, H2, S3_IP, all_costs, flows, write_inventory_snapshot

H3 = H2 + dt.timedelta(hours=1)
WEB, ETL = "10.0.1.1", "10.0.3.1"
DB_IP, BLOB_IP, OTHER_IP = "10.99.0.7", "10.99.0.9", "10.99.0.8"
M = dt.timedelta(minutes=1)


def answers(rows, node="n1"):
    """rows: [(seen_at, client, ip, domain, cname chain)] seen on `node`."""
    ws = [r[0].replace(second=0, microsecond=0) for r in rows]
    return pa.table({
        "window_start": pa.array(ws, S.TS), "window_end": pa.array([w + M for w in ws], S.TS),
        "node": [node] * len(rows), "client_ip": [r[1] for r in rows], "domain": [r[3] for r in rows],
        "ip": [r[2] for r in rows], "ttl_s": pa.array([30] * len(rows), pa.int32()),
        "seen_at": pa.array([r[0] for r in rows], S.TS),
        "cname_chain": pa.array([r[4] for r in rows], pa.list_(pa.string())),
    })


def put_dns(lk, node, rows):
    """One raw/dns file of `node` for the window the answers were seen in."""
    t = answers(rows, node)
    write_raw(lk, "raw/dns", node, t["window_start"][0].as_py(), t)


def late_answers():
    at = H0 + 10 * M + dt.timedelta(seconds=5)
    return [(at, WEB, DB_IP, "vpce-0abc.s3.us-east-1.vpce.amazonaws.com", []),
                    (at, WEB, BLOB_IP, "acct.blob.core.windows.net", ["acct.privatelink.blob.core.windows.net"]),
                    (at, ETL, S3_IP, "bucket.s3.amazonaws.com", [])]


def build(lk):
    write_inventory_snapshot(lk, H0 - 5 * M)
    # H0: the late answers' own hour
    write_raw(lk, "raw/flows", "n1", H0 + 20 * M, flows(H0 + 20 * M, "n1", [(WEB, DB_IP, GB, GB), (WEB, S3_IP, 60 * GB, 0)]))
    put_dns(lk, "n1", [(H0 + 5 * M, WEB, OTHER_IP, "orders.internal.example", [])])
    # H1: flows whose only answers are the late ones; one named by an on-time answer of H0
    write_raw(lk, "raw/flows", "n1", H1 + 10 * M, flows(H1 + 10 * M, "n1", [(WEB, DB_IP, 2 * GB, GB), (WEB, BLOB_IP, GB, 0),
                                                                          (WEB, OTHER_IP, GB, 0)]))
    write_raw(lk, "raw/flows", "n3", H1 + 11 * M, flows(H1 + 11 * M, "n3", [(ETL, S3_IP, 50 * GB, 0)]))
    write_raw(lk, "raw/flows", "n1", H1 + 30 * M, flows(H1 + 30 * M, "n1", [(WEB, OTHER_IP, 3, 3)]))  # a part without them
    # H2: newer answers for the same (client, ip) pairs supersede the late ones in the state
    put_dns(lk, "n1", [(H2 + 2 * M, WEB, DB_IP, "db.cluster-1.us-east-1.rds.amazonaws.com", []),
                       (H2 + 2 * M, WEB, BLOB_IP, "acct.blob.core.windows.net", []),
                       (H2 + 2 * M, ETL, S3_IP, "bucket.s3.amazonaws.com", [])])
    write_raw(lk, "raw/flows", "n1", H2 + 30 * M, flows(H2 + 30 * M, "n1", [(WEB, DB_IP, GB, 0), (WEB, BLOB_IP, GB, 0)]))
    # H3: beyond the roll's stop
    write_raw(lk, "raw/flows", "n1", H3 + 10 * M, flows(H3 + 10 * M, "n1", [(WEB, DB_IP, GB, 0), (WEB, S3_IP, 5 * GB, 0)]))


def run(lake, **kw):
    return R.run_cost_job(R.JobOptions(lake_url=lake.url, executor="inline", progress=None, cell_rows=1, **kw))


def mtimes(lake, rels):
    return {r: os.stat(lake.path(r)).st_mtime_ns for r in rels}


def committed(lake, h):
    rec = C.read_record(lake, h)
    return [C.record_path(h)] + rec.all_parts()


def by_key(t):
    return t.sort_by([(k, "ascending") for k in ("window_start", "src_ip", "dst_ip", "tx_bytes")])


def test_a_late_dns_file_renames_later_hours_exactly_as_a_cold_run_and_stops(tmp_path):
    lake = open_lake(str(tmp_path / "lake"))
    build(lake)
    first = run(lake)
    assert not first.quarantined
    assert first.hours_computed == [H0, H1, H2, H3]
    before = all_costs(lake)
    row = by_key(before.filter(pc.equal(before["dst_ip"], DB_IP)))
    assert row["traffic_class"].to_pylist()[:2] == ["external_private", "external_private"]
    untouched = {h: mtimes(lake, committed(lake, h)) for h in (H2, H3)}
    states = mtimes(lake, [cx.state_path(h) for h in (H2, H3)])

    # the late file for H0, and a twin lake that has it from the start
    put_dns(lake, "n2", late_answers())
    cold = open_lake(str(tmp_path / "cold"))
    build(cold)
    put_dns(cold, "n2", late_answers())
    h1_parts = C.read_record(lake, H1).parts[C.FLOWS]

    res = run(lake)
    assert not res.quarantined
    assert res.hours_computed == [H0] and res.hours_renamed == [H1]
    ref = run(cold)
    assert ref.hours_computed == [H0, H1, H2, H3]

    a, b = by_key(all_costs(lake)), by_key(all_costs(cold))
    assert_close(a, b, "incremental vs cold")
    assert pc.sum(a["cost_usd"]).as_py() == pytest.approx(pc.sum(b["cost_usd"]).as_py(), rel=1e-12)
    for name in ("namespace_hourly", "workload_daily", "focus"):
        key = lambda t: t.sort_by([(c, "ascending") for c in t.column_names if not pa.types.is_floating(t.schema.field(c).type)])  # noqa: E731
        assert_close(key(lake.read_table(S.cost_file_path(f"costs/{name}", H0))),
                     key(cold.read_table(S.cost_file_path(f"costs/{name}", H0))), name)

    # the names moved where the late answers are the latest: H0 and H1, not H2 (superseded)
    got = {(r["window_start"].hour, r["dst_ip"]): r for r in a.to_pylist()}
    assert got[(H1.hour, DB_IP)]["traffic_class"] == "private_link"
    assert got[(H1.hour, DB_IP)]["processing_cost_usd"] == pytest.approx(3 * 0.01)  # PrivateLink, tx + rx
    assert got[(H1.hour, BLOB_IP)]["dst_cname"] == "acct.privatelink.blob.core.windows.net"
    assert got[(H1.hour, BLOB_IP)]["traffic_class"] == "private_link"
    assert got[(H1.hour, S3_IP)]["dst_domain"] == "bucket.s3.amazonaws.com"       # renamed, not re-costed
    assert got[(H1.hour, S3_IP)]["cost_usd"] == pytest.approx(
        by_key(before).filter(pc.equal(before["dst_ip"], S3_IP)).to_pylist()[1]["cost_usd"])
    assert got[(H2.hour, DB_IP)]["dst_domain"].startswith("db.cluster-1")
    assert got[(H0.hour, DB_IP)]["traffic_class"] == "private_link"               # its own hour, recomputed

    # H1: only the parts holding renamed rows were rewritten; H2 and H3 not at all
    new_h1 = C.read_record(lake, H1).parts[C.FLOWS]
    assert len(new_h1) == len(h1_parts) == 3
    kept = [p for p in new_h1 if p in h1_parts]
    assert len(kept) == 1 and lake.read_table(kept[0])["dst_ip"].to_pylist() == [OTHER_IP]
    for h in (H2, H3):
        assert mtimes(lake, committed(lake, h)) == untouched[h], h
    now = mtimes(lake, [cx.state_path(h) for h in (H2, H3)])
    assert now[cx.state_path(H3)] == states[cx.state_path(H3)]   # the roll stopped at H2
    assert now[cx.state_path(H2)] != states[cx.state_path(H2)]   # (its state was rebuilt, unchanged)
    assert cx.same_state(lake.read_table(cx.state_path(H2)), cold.read_table(cx.state_path(H2)))
    # a second run has nothing to do
    again = run(lake)
    assert again.hours_computed == [] and again.hours_renamed == []
