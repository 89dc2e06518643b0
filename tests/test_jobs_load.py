"""jobs/load.py: reading raw files, contract checks, quarantine with a reason."""
from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import load
from lake import schema as S
from lake.storage import open_lake
from lake.writer import write_raw

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def flows_table(n=3, start=T0, node="n1", tx=1000):
    return pa.table({
        "window_start": pa.array([start] * n, S.TS),
        "window_end": pa.array([start + dt.timedelta(seconds=60)] * n, S.TS),
        "node": [node] * n,
        "direction": ["outbound"] * n,
        "src_ip": [f"10.0.0.{i + 1}" for i in range(n)],
        "dst_ip": ["10.0.1.1"] * n,
        "orig_dst_ip": ["10.0.1.1"] * n,
        "orig_dst_port": pa.array([80] * n, pa.int32()),
        "dst_port": pa.array([80] * n, pa.int32()),
        "proto": pa.array([6] * n, pa.int16()),
        "tx_bytes": pa.array([tx] * n, pa.int64()),
        "tx_packets": pa.array([10] * n, pa.int64()),
        "rx_bytes": pa.array([2 * tx] * n, pa.int64()),
        "rx_packets": pa.array([20] * n, pa.int64()),
        "connections": pa.array([1] * n, pa.int64()),
    })


@pytest.fixture
def lake(tmp_path):
    return open_lake(str(tmp_path / "lake"))


def put_raw(lake, table, node="n1", start=T0, write=None):
    rel = S.raw_file_path("raw/flows", node, start)
    full = lake.path(rel)
    lake.fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
    if write is None:
        pq.write_table(table, full, filesystem=lake.fs)
    else:
        write(full)
    return rel


def quarantine_note(lake, rel):
    return json.loads(lake.read_bytes(f"_quarantine/{rel}.reason.json"))


def test_valid_file_loads_conformed_and_stays(lake):
    rel = write_raw(lake, "raw/flows", "n1", T0, flows_table())
    table, bad = load.load_files(lake, [rel], "raw/flows")
    assert bad == []
    assert table.schema.equals(S.RAW_FLOWS)
    assert table.num_rows == 3
    assert table.column("tx_bytes").to_pylist() == [1000, 1000, 1000]
    assert lake.exists(rel)
    assert not lake.exists(f"_quarantine/{rel}")


def test_truncated_parquet_is_quarantined_with_reason(lake):
    good = write_raw(lake, "raw/flows", "n2", T0, flows_table(node="n2"))
    data = lake.read_bytes(good)

    def truncated(full):
        with open(full, "wb") as f:
            f.write(data[: len(data) // 2])

    bad_rel = put_raw(lake, None, node="n1", write=truncated)
    table, bad = load.load_files(lake, [bad_rel, good], "raw/flows")
    assert table.num_rows == 3  # the valid file is unaffected
    assert [b["path"] for b in bad] == [bad_rel] and bad[0]["reason"] == "unreadable"
    assert not lake.exists(bad_rel)
    assert lake.read_bytes(f"_quarantine/{bad_rel}") == data[: len(data) // 2]  # moved intact
    note = quarantine_note(lake, bad_rel)
    assert note["reason"] == "unreadable" and note["path"] == bad_rel
    assert note["error"] and dt.datetime.fromisoformat(note["when"]).tzinfo is not None
    assert lake.exists(good)


def test_wrong_type_is_quarantined(lake):
    t = flows_table()
    t = t.set_column(t.schema.get_field_index("tx_bytes"), "tx_bytes", pa.array(["a", "b", "c"]))
    rel = put_raw(lake, t)
    _, bad = load.load_files(lake, [rel], "raw/flows")
    assert bad[0]["reason"] == "schema" and "tx_bytes" in bad[0]["error"]
    assert quarantine_note(lake, rel)["reason"] == "schema"


def test_missing_column_is_quarantined(lake):
    rel = put_raw(lake, flows_table().drop_columns(["dst_ip"]))
    _, bad = load.load_files(lake, [rel], "raw/flows")
    assert bad[0]["reason"] == "schema" and "dst_ip" in bad[0]["error"]
    assert not lake.exists(rel)


def test_missing_optional_columns_become_null(lake):
    rel = put_raw(lake, flows_table().drop_columns(["connections"]))
    table, bad = load.load_files(lake, [rel], "raw/flows")
    assert bad == [] and table.column("connections").null_count == 3


def test_negative_delta_is_quarantined(lake):
    t = flows_table()
    t = t.set_column(t.schema.get_field_index("rx_bytes"), "rx_bytes", pa.array([5, -1, 7], pa.int64()))
    rel = put_raw(lake, t)
    _, bad = load.load_files(lake, [rel], "raw/flows")
    assert bad[0]["reason"] == "negative_counter" and "rx_bytes" in bad[0]["error"]


def test_window_end_not_after_start_is_quarantined(lake):
    t = flows_table()
    t = t.set_column(t.schema.get_field_index("window_end"), "window_end", t.column("window_start"))
    rel = put_raw(lake, t)
    _, bad = load.load_files(lake, [rel], "raw/flows")
    assert bad[0]["reason"] == "bad_window"


def test_rows_outside_the_named_hour_are_quarantined(lake):
    rel = put_raw(lake, flows_table(start=T0 + dt.timedelta(hours=2)))  # named for T0
    _, bad = load.load_files(lake, [rel], "raw/flows")
    assert bad[0]["reason"] == "wrong_hour"


def test_bad_direction_and_nulls_are_schema_errors(lake):
    t = flows_table()
    t = t.set_column(t.schema.get_field_index("direction"), "direction", pa.array(["outbound", "sideways", None]))
    rel = put_raw(lake, t)
    _, bad = load.load_files(lake, [rel], "raw/flows")
    assert bad[0]["reason"] == "schema" and "direction" in bad[0]["error"]


def test_badly_named_file_is_quarantined(lake):
    rel = "raw/flows/date=2026-03-02/hour=10/node=n1/whatever.parquet"
    lake.write_table(rel, flows_table())
    _, bad = load.load_files(lake, [rel], "raw/flows")
    assert bad[0]["reason"] == "bad_name"
    assert lake.exists(f"_quarantine/{rel}")


def test_quarantine_twice_is_harmless(lake):
    rel = put_raw(lake, flows_table().drop_columns(["proto"]))
    load.quarantine(lake, rel, "schema", "missing proto")
    load.quarantine(lake, rel, "schema", "missing proto")  # a second worker, file already gone
    assert lake.exists(f"_quarantine/{rel}") and not lake.exists(rel)


def test_vanished_file_is_skipped_not_quarantined(lake):
    rel = S.raw_file_path("raw/flows", "n1", T0)
    table, bad = load.load_files(lake, [rel], "raw/flows")
    assert table.num_rows == 0 and bad == []
