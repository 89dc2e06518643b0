"""The lake contract: schemas, paths and storage behave as documented."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pyarrow as pa
import pytest

from lake import schema as S
from lake.storage import LakeError, open_lake
from lake.writer import write_inventory, write_raw

DOC = Path(__file__).resolve().parents[1] / "docs" / "lake.md"
T0 = dt.datetime(2026, 3, 1, 13, 45, tzinfo=dt.timezone.utc)


def _doc_tables() -> dict[str, list[tuple[str, str]]]:
    out, current = {}, None
    for line in DOC.read_text().splitlines():
        m = re.match(r"^### `([^`]+)`", line)
        if m:
            current = m.group(1)
            out[current] = []
            continue
        m = re.match(r"^\| `([^`]+)` \| ([^|]+) \|", line)
        if m and current:
            out[current].append((m.group(1), m.group(2).strip()))
    return out


def test_docs_list_every_table_with_its_exact_columns_and_types():
    doc = _doc_tables()
    assert set(doc) == set(S.TABLES)
    for name, table in S.TABLES.items():
        assert doc[name] == [(f.name, str(f.type)) for f in table.schema], name


def test_raw_path_is_deterministic_and_parses_back():
    p = S.raw_file_path("raw/flows", "ip-10-0-1-7.ec2.internal", T0)
    assert p == ("raw/flows/date=2026-03-01/hour=13/node=ip-10-0-1-7.ec2.internal/"
                 "flows-ip-10-0-1-7.ec2.internal-20260301T134500Z.parquet")
    assert S.parse_raw_file_name(p) == ("flows", "ip-10-0-1-7.ec2.internal", T0)
    assert S.parse_raw_file_name("raw/flows/x/other.parquet") is None


def test_non_utc_input_is_normalised_and_naive_rejected():
    cet = dt.timezone(dt.timedelta(hours=1))
    assert S.raw_file_path("raw/dns", "n1", T0.astimezone(cet)) == S.raw_file_path("raw/dns", "n1", T0)
    with pytest.raises(ValueError, match="naive"):
        S.raw_file_path("raw/dns", "n1", T0.replace(tzinfo=None))


@pytest.mark.parametrize("bad", ["", "../etc", "Node_A", "a/b", "-x"])
def test_node_names_that_would_escape_the_partition_are_rejected(bad):
    with pytest.raises(ValueError, match="invalid node name"):
        S.raw_file_path("raw/flows", bad, T0)


def test_conform_orders_casts_and_fills_nullable_columns():
    t = pa.table({"tx_bytes": [5], "src_ip": ["10.0.0.1"], "proto": pa.array([6], pa.int64())})
    out = S.conform(t, S.RAW_FLOWS)
    assert out.schema.equals(S.RAW_FLOWS)
    assert out.column("tx_bytes").to_pylist() == [5]
    assert out.column("proto").type == pa.int16()
    assert out.column("dst_ip").to_pylist() == [None]


def test_conform_names_the_column_that_does_not_fit():
    with pytest.raises(ValueError, match="tx_bytes"):
        S.conform(pa.table({"tx_bytes": ["many"]}), S.RAW_FLOWS)


def test_write_raw_replaces_on_retry_and_reads_back(tmp_path):
    lake = open_lake(str(tmp_path / "lake"))
    rows = pa.table({"window_start": pa.array([T0], S.TS), "node": ["n1"], "tx_bytes": [10]})
    rel1 = write_raw(lake, "raw/flows", "n1", T0, rows)
    rel2 = write_raw(lake, "raw/flows", "n1", T0, rows.set_column(2, "tx_bytes", pa.array([11])))
    assert rel1 == rel2
    files = lake.list_files("raw/flows")
    assert len(files) == 1
    assert lake.read_table(rel1).column("tx_bytes").to_pylist() == [11]
    assert lake.read_table(rel1).schema.equals(S.RAW_FLOWS)
    assert not list((tmp_path / "lake").rglob("*.tmp"))


def test_write_inventory_path_and_kind_check(tmp_path):
    lake = open_lake(f"file://{tmp_path}/lake")
    rel = write_inventory(lake, "nodes", T0, pa.table({"name": ["n1"], "zone": ["us-east-1a"]}))
    assert rel == "inventory/nodes/date=2026-03-01/nodes-20260301T134500Z.parquet"
    with pytest.raises(ValueError, match="unknown inventory kind"):
        write_inventory(lake, "secrets", T0, pa.table({}))


def test_unknown_scheme_and_bad_bucket_are_clear_errors():
    with pytest.raises(LakeError, match="unsupported lake URL scheme 'foo'"):
        open_lake("foo://bucket/x")
    with pytest.raises(LakeError, match="3-63 characters"):
        open_lake("s3://ab/x")


@pytest.mark.slow
def test_s3_lake_on_moto_roundtrip(moto_s3):
    lake = open_lake("s3://netmon-contract/lake", s3_endpoint=moto_s3.endpoint)
    lake.check_writable()
    rel = write_raw(lake, "raw/dns", "n1", T0, pa.table({"domain": ["api.example.com"], "ip": ["2001:db8::1"]}))
    assert [lake.rel(i.path) for i in lake.list_files("raw")] == [rel]
    assert lake.read_table(rel).column("domain").to_pylist() == ["api.example.com"]


@pytest.mark.slow
def test_unreachable_s3_is_a_lake_error(s3_env):
    from conftest import free_port
    lake = open_lake("s3://netmon-contract/lake", s3_endpoint=f"http://127.0.0.1:{free_port()}", create_bucket=False)
    with pytest.raises(LakeError, match="not writable"):
        lake.check_writable()
