"""An hourly run's S3 requests do not grow with the lake's age: the same job against a 7-day
and a 30-day lake on moto_server, every request counted from moto_server's request log."""
from __future__ import annotations

import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from jobs import commit as C
from jobs import run as R
from jobs import state as st
from lake.storage import open_lake
from lake.writer import write_raw
from moto_log import LoggedMoto
from test_jobs_load_state import S3_IP, dns_table, flows, write_inventory_snapshot

UTC = dt.timezone.utc
NEWEST = dt.datetime(2026, 3, 30, 23, tzinfo=UTC)   # the hour the hourly run finds new


def build(lake, days: int, scratch) -> None:
    """A lake whose hours before NEWEST were all costed (raw files, inventory and DNS every
    six hours, a commit record per hour and the month's ledger, as a run leaves them), then
    NEWEST's raw file. Written locally, then uploaded one PutObject per file (fast)."""
    import boto3  # noqa: PLC0415

    local = open_lake(str(scratch / f"lake-{days}"))
    hours = [NEWEST - dt.timedelta(hours=i) for i in range(1, days * 24)]
    for h in hours:
        write_raw(local, "raw/flows", "n1", h, flows(h, "n1", [("10.0.1.1", S3_IP, 1000, 10)]))
        if h.hour % 6 == 0:
            write_inventory_snapshot(local, h)
            write_raw(local, "raw/dns", "n1", h, dns_table(h, "n1", "10.0.1.1", S3_IP, "s3.x"))
    bucket, _, prefix = lake.root.partition("/")
    s3 = boto3.client("s3", endpoint_url=lake.s3_endpoint, region_name="us-east-1")

    def put(rel, data):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)

    files = [(local.rel(i.path), open(i.path, "rb").read()) for i in local.list_files("")]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda f: put(*f), files))
    inputs: dict = {}
    for table in ("raw/flows", "raw/dns"):
        for info in lake.list_files(table):
            rel = lake.rel(info.path)
            inputs.setdefault(st.hour_of(C.S.parse_raw_file_name(rel)[2]), {})[rel] = st.sig_of(info)
    records = [C.HourRecord(hour=h, inputs=inputs[h], token=1, rows_in=1, rows_out=1) for h in hours]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda r: put(C.record_path(r.hour), json.dumps(r.to_json()).encode()), records))
    st.EgressLedger.from_records("2026-03", records).save(lake)
    write_raw(lake, "raw/flows", "n1", NEWEST, flows(NEWEST, "n1", [("10.0.1.1", S3_IP, 1000, 10)]))


@pytest.mark.slow
def test_hourly_run_requests_do_not_grow_with_the_lakes_age(s3_env, tmp_path):
    counts, lists = {}, {}
    with LoggedMoto() as moto:
        for days in (7, 30):
            url = f"s3://netmon-age-{days}/lake"
            lake = open_lake(url, s3_endpoint=moto.endpoint)
            build(lake, days, tmp_path)
            moto.mark()
            res = R.run_cost_job(R.JobOptions(lake_url=url, s3_endpoint=moto.endpoint, executor="inline",
                                              progress=None))
            assert res.hours_computed == [NEWEST] and res.hours_retiered == []
            counts[days] = moto.counts()
            lists[days] = [p for k, p in moto.requests() if k == "LIST"]
            print(f"{days}-day lake: {dict(counts[days])}")
    # nothing lists a whole table or all records: each listing is a top level or one date
    for p in lists[30]:
        assert "delimiter" in p or "date%3D" in p or "date=" in p or "_state" in p, p
    assert counts[7]["LIST"] == counts[30]["LIST"], (counts, lists)
    assert counts[7]["GET"] == counts[30]["GET"], counts
    assert counts[30]["LIST"] <= 60, lists[30]
