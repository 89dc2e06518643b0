"""docs/queries.md is true in every engine it names.

- Every SQL block is labeled (`-- setup: ENGINE` or `-- query: NAME`), so this harness runs all
  of them, including sections added later.
- Every Athena and Trino statement parses with sqlglot's `athena` / `trino` dialects (a
  statement sqlglot can only keep as an opaque Command fails, except Trino's CALL, checked
  by hand: the procedure and its arguments name a table created above it).
- The DDL's columns and types are the lake contract's (lake/schema.py), and the Athena
  partition projection renders exactly the directories of a costed lake.
- Each query runs in DuckDB as written, and transpiled from the Athena and from the Trino
  dialect to DuckDB, with the same rows; the headline ones equal figures computed from the
  Parquet files directly.
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import sqlglot
from sqlglot import exp

import costs_expected as X
from lake import schema as S

DOC = Path(__file__).resolve().parents[1] / "docs" / "queries.md"
ENGINES = ("athena", "trino")
#: table name in the docs -> lake table
DOC_TABLES = {"cost_flows": "costs/flows", "namespace_hourly": "costs/namespace_hourly",
              "workload_daily": "costs/workload_daily", "focus": "costs/focus"}


def all_blocks() -> list[tuple[str, str, str]]:
    """(kind, name, sql) of every ```sql block, in order."""
    out = []
    for m in re.finditer(r"```sql\n(.*?)```", DOC.read_text(), re.S):
        body = m.group(1)
        head = re.match(r"-- (setup|query|reconcile): (\S+)\n", body)
        out.append((head.group(1), head.group(2), body[head.end():].strip()) if head else ("unlabeled", "", body))
    return out


def setups(engine: str) -> list[str]:
    return [sql for kind, name, sql in all_blocks() if kind == "setup" and name == engine]


def queries() -> dict[str, str]:
    return {name: sql for kind, name, sql in all_blocks() if kind == "query"}


def statements(sql: str, dialect: str) -> list[exp.Expression]:
    return [s for s in sqlglot.parse(sql, read=dialect, error_level=sqlglot.ErrorLevel.RAISE) if s is not None]


@pytest.fixture(scope="module")
def con(costed_lake):
    """The views the docs tell users to use: `netmon-jobs views` (exactly the committed files)."""
    from jobs import sqlviews  # noqa: PLC0415
    from lake.storage import open_lake  # noqa: PLC0415
    c = duckdb.connect()
    c.execute(sqlviews.view_sql(open_lake(str(costed_lake))))
    return c


@pytest.fixture(scope="module")
def glob_con(costed_lake):
    """The docs' glob setup (exact while no run is publishing, as on this lake)."""
    c = duckdb.connect()
    for sql in setups("duckdb"):
        c.execute(sql.replace("LAKE", str(costed_lake)))
    return c


def test_every_block_is_labeled_and_each_engine_has_a_setup():
    blocks = all_blocks()
    assert not [b for b in blocks if b[0] == "unlabeled"], "a ```sql block without a -- setup:/-- query: label"
    assert {name for kind, name, _ in blocks if kind == "setup"} >= {"duckdb", "athena", "trino"}
    assert len(queries()) >= 8
    assert len(queries()) == sum(kind == "query" for kind, _, _ in blocks), "two queries share a name"


@pytest.mark.parametrize("engine", ENGINES)
def test_setup_statements_parse_in_their_dialect(engine):
    created = set()
    for sql in setups(engine):
        for st in statements(sql, engine):
            if isinstance(st, exp.Command):
                # sqlglot keeps CALL as an opaque command: check it names a procedure Trino's Hive
                # connector has and a table created above it.
                m = re.fullmatch(r"CALL (\w+)\.system\.sync_partition_metadata\('(\w+)', '(\w+)', '(ADD|DROP|FULL)'\)",
                                 st.sql(dialect=engine).strip())
                assert engine == "trino" and m, f"{engine}: not parsed: {st.sql()[:80]}"
                assert (m.group(1), m.group(2), m.group(3)) in created
                continue
            assert isinstance(st, exp.Create), st.sql()[:80]
            t = st.this.this
            created.add((t.catalog, t.db, t.name) if engine == "trino" else t.name)
    names = {c[-1] if isinstance(c, tuple) else c for c in created}
    assert names >= set(DOC_TABLES)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(queries()))
def test_query_parses_in_each_dialect(engine, name):
    (st,) = statements(queries()[name], engine)
    assert isinstance(st, exp.Select)


# -------------------------------------------------------------- DDL = the lake contract

#: sqlglot type -> Arrow type of the column in the lake: Athena `timestamp` and Trino
#: `timestamp(6) with time zone` both read the files' UTC microsecond timestamps
_TYPES = {"TEXT": pa.string(), "VARCHAR": pa.string(), "BIGINT": pa.int64(), "INT": pa.int32(),
          "SMALLINT": pa.int16(), "DOUBLE": pa.float64(), "DATE": pa.date32(), "BOOLEAN": pa.bool_()}
_TS = {"athena": "TIMESTAMP", "trino": "TIMESTAMPTZ"}


def _arrow(kind: exp.DataType, engine: str) -> pa.DataType | None:
    name = kind.this.name
    if name == _TS[engine]:
        return S.TS
    return _TYPES.get(name)


def _creates(engine: str) -> dict[str, exp.Create]:
    out = {}
    for sql in setups(engine):
        for st in statements(sql, engine):
            if isinstance(st, exp.Create):
                out[st.this.this.name] = st
    return out


def _columns(create: exp.Create, engine: str) -> list[tuple[str, str]]:
    return [(c.this.name, c.args["kind"]) for c in create.this.expressions if isinstance(c, exp.ColumnDef)]


def _props(create: exp.Create) -> dict[str, exp.Expression]:
    """TBLPROPERTIES / WITH (...) by name (format and partitioned_by have classes of their own)."""
    out = {}
    for p in create.args["properties"].expressions:
        if isinstance(p, exp.FileFormatProperty):
            out["format"] = p.this
        elif isinstance(p, exp.PartitionedByProperty) and isinstance(p.this, exp.Array):
            out["partitioned_by"] = p.this
        elif type(p) is exp.Property:
            out[p.this.name.lower()] = p.args["value"]
    return out


@pytest.mark.parametrize("table", sorted(DOC_TABLES))
def test_athena_ddl_columns_and_partitions_are_the_contract(table):
    create = _creates("athena")[table]
    lake_t = S.TABLES[DOC_TABLES[table]]
    cols = _columns(create, "athena")
    assert [n for n, _ in cols] == lake_t.schema.names, "add the schema's new columns to the DDL, in order"
    for (n, typ), field in zip(cols, lake_t.schema):
        assert (_arrow(typ, "athena") or pa.null()).equals(field.type), (n, typ.sql("athena"), field.type)
    part = next(p for p in create.args["properties"].expressions if isinstance(p, exp.PartitionedByProperty))
    assert [c.this.name for c in part.this.expressions] == list(lake_t.partitions)


@pytest.mark.parametrize("table", sorted(DOC_TABLES))
def test_trino_ddl_columns_and_partitions_are_the_contract(table):
    create = _creates("trino")[table]
    lake_t = S.TABLES[DOC_TABLES[table]]
    cols = _columns(create, "trino")
    parts = list(lake_t.partitions)
    assert [n for n, _ in cols] == lake_t.schema.names + parts, "schema columns, then the partition columns"
    for (n, typ), field in zip(cols, lake_t.schema):
        assert (_arrow(typ, "trino") or pa.null()).equals(field.type), (n, typ.sql("trino"), field.type)
    props = _props(create)
    assert [e.name for e in props["partitioned_by"].expressions] == parts
    assert props["format"].name == "PARQUET"
    assert props["external_location"].name == f"s3://BUCKET/PREFIX/{DOC_TABLES[table]}"


def _java_date(fmt: str) -> str:
    return fmt.replace("yyyy", "%Y").replace("MM", "%m").replace("dd", "%d")


@pytest.mark.parametrize("table", sorted(DOC_TABLES))
def test_athena_partition_projection_renders_the_lake_layout(table, costed_lake):
    create = _creates("athena")[table]
    props = {k: v.name for k, v in _props(create).items()}
    lake_t = S.TABLES[DOC_TABLES[table]]
    location = next(p for p in create.args["properties"].expressions if isinstance(p, exp.LocationProperty)).this.name
    assert location == f"s3://BUCKET/PREFIX/{DOC_TABLES[table]}/"
    assert props["projection.enabled"] == "true"
    template = props["storage.location.template"]
    assert template.startswith(location)
    files = sorted((costed_lake / DOC_TABLES[table]).rglob("*.parquet"))
    assert files
    for f in files:
        rel_dir = f.parent.relative_to(costed_lake).as_posix() + "/"
        values = dict(kv.split("=", 1) for kv in rel_dir.split("/") if "=" in kv)
        assert list(values) == list(lake_t.partitions)
        path = template
        for key in lake_t.partitions:
            kind = props[f"projection.{key}.type"]
            if kind == "date":
                day = dt.date.fromisoformat(values[key])
                lo, hi = props[f"projection.{key}.range"].split(",")
                assert dt.date.fromisoformat(lo) <= day and hi == "NOW"
                assert (props[f"projection.{key}.interval"], props[f"projection.{key}.interval.unit"]) == ("1", "DAYS")
                rendered = day.strftime(_java_date(props[f"projection.{key}.format"]))
            else:
                assert kind == "integer"
                lo, hi = map(int, props[f"projection.{key}.range"].split(","))
                assert (lo, hi) == (0, 23)
                rendered = str(int(values[key])).zfill(int(props[f"projection.{key}.digits"]))
            path = path.replace("${" + key + "}", rendered)
        assert "${" not in path
        assert path == "s3://BUCKET/PREFIX/" + rel_dir, (path, rel_dir)


# -------------------------------------------------------------- queries run, in every dialect

def _rows(con, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


@pytest.mark.parametrize("name", sorted(queries()))
def test_query_runs_and_transpiled_versions_agree(con, name):
    sql = queries()[name]
    want = _rows(con, sql)
    if name != "unplaced":
        assert want, f"{name} returned nothing on a simulated lake"
    for engine in ENGINES:
        (duck,) = sqlglot.transpile(sql, read=engine, write="duckdb")
        assert _rows(con, duck) == want, f"{name} from {engine}: {duck}"


@pytest.mark.parametrize("name", sorted(queries()))
def test_query_gives_the_same_rows_over_the_glob_setup_of_a_quiescent_lake(con, glob_con, name):
    assert _rows(glob_con, queries()[name]) == _rows(con, queries()[name])


def test_cost_by_class_matches_the_files(con, costed_lake):
    got = {r[1]: (r[2], r[3]) for r in _rows(con, queries()["cost_by_class"])}
    want = X.by_class(X.cost_flows(costed_lake))
    # the simulated lake spans one day, so there is one row per class
    assert set(got) == set(want)
    for cls, (b, usd) in got.items():
        assert b == want[cls][0]
        assert usd == pytest.approx(want[cls][1], abs=1e-6)


def test_top_namespaces_and_savings_match_the_files(con, costed_lake):
    df = X.cost_flows(costed_lake)
    top = X.top(df, df.namespace, 10)
    got = _rows(con, queries()["top_namespaces"])
    assert [r[0] for r in got] == list(top.index)
    assert [r[3] for r in got] == pytest.approx([round(v, 6) for v in top.total], abs=1e-9)
    sav = {r[0]: r[2] for r in _rows(con, queries()["same_zone_savings"])}
    assert sav == pytest.approx({k: round(v, 6) for k, v in X.service_savings(df).items()}, abs=1e-9)


def test_partition_filter_prunes_other_days(con):
    q = queries()["cost_by_class"].replace("DATE '2026-01-05'", "DATE '2031-01-01'")
    assert _rows(con, q) == []


def test_focus_and_cost_rows_give_the_same_totals_by_meter(con):
    focus = {r[2]: r[5] for r in con.execute(queries()["focus_by_meter"]).fetchall()}
    flows = {r[0]: r[1] for r in con.execute(queries()["flows_by_meter"]).fetchall()}
    assert focus and set(focus) == set(flows)
    for meter, usd in flows.items():
        assert focus[meter] == pytest.approx(usd, abs=1e-5), meter
    assert "USE1-DataTransfer-Regional-Bytes" in focus


def test_reconciliation_with_a_cost_and_usage_report(con):
    """A hand-made CUR for the simulated day: the cross-AZ line as netmon computed it plus a
    $1.50 line netmon cannot see; the join shows each meter's difference."""
    q = {name: sql for kind, name, sql in all_blocks() if kind == "reconcile"}["cur"]
    regional = con.execute("""SELECT SUM(ConsumedQuantity), SUM(BilledCost) FROM focus
                              WHERE x_UsageType = 'USE1-DataTransfer-Regional-Bytes'""").fetchone()
    con.execute("CREATE OR REPLACE TABLE cur (line_item_usage_type VARCHAR, line_item_usage_amount DOUBLE, "
                "line_item_unblended_cost DOUBLE, line_item_line_item_type VARCHAR, line_item_usage_start_date TIMESTAMP)")
    con.execute("INSERT INTO cur VALUES ('USE1-DataTransfer-Regional-Bytes', ?, ?, 'Usage', TIMESTAMP '2026-01-05 03:00:00'),"
                "('USE1-EUC1-AWS-Out-Bytes', 75, 1.5, 'Usage', TIMESTAMP '2026-01-05 04:00:00'),"
                "('USE1-BoxUsage:m6i.xlarge', 24, 4.6, 'Usage', TIMESTAMP '2026-01-05 04:00:00')",
                [regional[0], regional[1]])
    rows = {r[0]: r for r in con.execute(q).fetchall()}
    assert rows["USE1-EUC1-AWS-Out-Bytes"][5] == pytest.approx(-1.5)          # on the bill, not seen by netmon
    assert rows["USE1-DataTransfer-Regional-Bytes"][5] == pytest.approx(0, abs=1e-4)
    assert "USE1-BoxUsage:m6i.xlarge" not in rows                                # not a network meter
    assert con.execute(q).fetchall()[0][0] == "USE1-EUC1-AWS-Out-Bytes"         # largest difference first
