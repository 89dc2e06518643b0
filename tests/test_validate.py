"""`netmon-jobs validate` over a costed lake: clean data passes; each kind of broken file is
caught with the right reason, and the valid files around it are still checked."""
from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import validate as V
from lake.storage import open_lake


@pytest.fixture
def lake_copy(costed_lake, tmp_path):
    dst = tmp_path / "lake"
    shutil.copytree(costed_lake, dst)
    return dst


def _raw_files(root):
    return sorted((root / "raw" / "flows").rglob("*.parquet"))


def test_clean_lake_passes_and_writes_report(lake_copy, capsys):
    rc = V.main(["--lake", str(lake_copy)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS (0 critical" in out
    report = (lake_copy / "_reports" / "latest.md").read_text()
    assert "**PASS**" in report
    assert "| `raw/flows` |" in report and "| `costs/flows` |" in report
    n_files = len(_raw_files(lake_copy))
    assert f"| `raw/flows` | {n_files} |" in report


def _rewrite(path, fn):
    t = pq.read_table(path)
    pq.write_table(fn(t), path)


def _set(t: pa.Table, col: str, idx: int, value, typ=None) -> pa.Table:
    vals = t.column(col).to_pylist()
    vals[idx] = value
    return t.set_column(t.schema.get_field_index(col), col, pa.array(vals, typ or t.schema.field(col).type))


def test_each_broken_file_is_caught_with_its_reason(lake_copy, capsys):
    files = _raw_files(lake_copy)
    neg, badip, wrongtype, trunc = files[0], files[1], files[2], files[3]
    _rewrite(neg, lambda t: _set(t, "tx_bytes", 0, -5))
    _rewrite(badip, lambda t: _set(t, "dst_ip", 1, "10.0.0.999"))
    _rewrite(wrongtype, lambda t: t.set_column(t.schema.get_field_index("tx_bytes"), "tx_bytes",
                                               pa.array(["lots"] * t.num_rows)))
    data = trunc.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])

    rc = V.main(["--lake", str(lake_copy)])
    out = capsys.readouterr().out
    assert rc == 1
    lake = open_lake(str(lake_copy))
    report = V.validate(lake)
    by_file = {}
    for f in report.critical:
        by_file.setdefault(f.file, set()).add((f.rule, f.column))
    rel = lambda p: str(p.relative_to(lake_copy))  # noqa: E731
    assert by_file == {
        rel(neg): {("contract:negative_counter", None)},
        rel(badip): {("canonical_ip", "dst_ip")},
        rel(wrongtype): {("contract:schema", None)},
        rel(trunc): {("contract:unreadable", None)},
    }
    # nothing valid is lost: every other file's rows were checked
    valid_rows = sum(pq.read_metadata(p).num_rows for p in files if p not in (neg, wrongtype, trunc))
    assert report.checked["raw/flows"] == valid_rows
    assert "FAIL (4 critical" in out


def test_costs_that_do_not_reconcile_fail(lake_copy):
    part = sorted((lake_copy / "costs" / "flows").rglob("*.parquet"))[0]
    _rewrite(part, lambda t: _set(t, "cost_usd", 0, -1.0))
    report = V.validate(open_lake(str(lake_copy)))
    got = {(f.table, f.rule, f.column) for f in report.critical}
    assert ("costs/flows", "non_negative", "cost_usd") in got
    # the rollups were computed from the original detail, so they no longer reconcile
    assert ("costs/namespace_hourly", "equal_detail", "cost_usd") in got


def test_bad_input_is_one_line(tmp_path, capsys):
    assert V.main(["--lake", "foo://x"]) == 2
    assert V.main(["--lake", str(tmp_path), "--date", "yesterday"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error: ") for e in err)
