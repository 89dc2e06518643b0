"""`netmon-jobs report` on a costed simulated lake spanning two days: the page is one file that
needs no network, headless Chromium (Debian's package) renders it, and every figure in the
rendered DOM equals the cost tables computed independently (tests/costs_expected.py).
Also the read side it stands on (jobs/costview.py): date pruning and the egress tier position."""
from __future__ import annotations

import copy
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import costs_expected as X
from jobs import costview
from jobs.report import usd
from jobs.pricing import RateCards, default_cards
from lake.storage import open_lake

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
DAY1, DAY2 = "2026-01-05", "2026-01-06"


@pytest.fixture(scope="module")
def two_day_lake(tmp_path_factory):
    """3 nodes for two hours across midnight: one hour on each of two days."""
    from jobs.run import JobOptions, run_cost_job
    from simulator.simulate import simulate

    root = tmp_path_factory.mktemp("twoday") / "lake"
    simulate(open_lake(str(root)), nodes=3, hours=2, seed=5, start=dt.datetime(2026, 1, 5, 23, tzinfo=dt.timezone.utc))
    run_cost_job(JobOptions(lake_url=str(root), executor="inline", progress=None,
                            ip_ranges_dir=str(REPO / "jobs" / "fixtures")))
    return root


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "jobs", "report", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert CHROMIUM, "chromium is not installed (scripts/setup.sh installs Debian's package)"
    # Any network request would fail: unresolvable names and a proxy that refuses, so what
    # renders came from the file alone.
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
                           f"--user-data-dir={cwd / 'profile'}", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


class Cells(HTMLParser):
    """tables[id] -> rows of (text, data-value or None); data-key elements -> data-value."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str | None]]]] = {}
        self.keys: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        self._table = self._row = self._cell = None
        self._id = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ["", a.get("data-value")]
        if "data-key" in a and self._table is None:
            self.keys[a["data-key"]] = a.get("data-value")
        if "id" in a and tag != "table":
            self._id, self.ids[a["id"]] = a["id"], ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data
        if self._id:
            self.ids[self._id] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        if self._id:
            self._id = None


@pytest.fixture(scope="module")
def page(two_day_lake, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    r = _cli("--lake", str(two_day_lake), "--out", str(out), "--start", DAY2, "--end", DAY2, "--validate")
    assert r.returncode == 0, r.stderr
    assert "data quality PASS" in r.stdout
    return out / "index.html"


def test_page_is_self_contained(page):
    text = page.read_text()
    assert not re.search(r"<(script|link|img|iframe)\b", text)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "url(" not in text
    assert text.count("<svg") == 4      # per day by class, namespaces, movers, destinations


def test_chromium_renders_the_page(page, tmp_path):
    shot = tmp_path / "report.png"
    r = _chromium("--window-size=1200,2400", f"--screenshot={shot}", page.as_uri(), cwd=tmp_path)
    assert shot.exists(), r.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000     # a page of charts, not a blank one
    shutil.copy(shot, page.parent / "report.png")                      # kept beside the page for a look


def test_figures_in_the_rendered_page_equal_the_cost_tables(page, two_day_lake, tmp_path):
    r = _chromium("--dump-dom", page.as_uri(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = Cells()
    dom.feed(r.stdout)
    df = X.cost_flows(two_day_lake)
    cur, prev = df[df.date == DAY2], df[df.date == DAY1]
    assert len(cur) and len(prev)

    # headline cards
    assert float(dom.keys["total_cost"]) == pytest.approx(cur.cost_usd.sum(), rel=1e-12)
    assert int(dom.keys["total_bytes"]) == cur.bytes.sum()
    assert float(dom.keys["total_change"]) == pytest.approx(cur.cost_usd.sum() - prev.cost_usd.sum(), rel=1e-9)
    assert dom.ids["quality-result"] == "PASS"

    # by class: every class of the period, displayed rounded, exact in data-value
    want = X.by_class(cur)
    prev_cls = X.by_class(prev)
    rows = dom.tables["classes"]
    assert [r[0][0] for r in rows] == sorted(want, key=lambda c: (-want[c][1], -want[c][0], c))
    for (name, _), (btext, b), (ctext, c), (_, pc), _chg in rows:
        assert int(b) == want[name][0]
        assert float(c) == pytest.approx(want[name][1], rel=1e-12, abs=1e-15)
        assert ctext == usd(want[name][1])
        assert float(pc) == pytest.approx(prev_cls.get(name, (0, 0.0))[1], rel=1e-12, abs=1e-15)

    # by namespace
    ns = cur.groupby("namespace").cost_usd.sum()
    got = {r[0][0]: float(r[2][1]) for r in dom.tables["namespaces"]}
    assert got == pytest.approx(dict(ns.sort_values(ascending=False).head(10)), rel=1e-12)

    # movers: workload cost change against the previous day
    wl_now = cur.groupby(X.workload_key(cur)).cost_usd.sum()
    wl_prev = prev.groupby(X.workload_key(prev)).cost_usd.sum()
    delta = wl_now.sub(wl_prev, fill_value=0.0)
    delta = delta[delta != 0]
    top = delta.reindex(delta.abs().sort_values(ascending=False).index).head(10)
    movers = dom.tables["movers"]
    assert [r[0][0] for r in movers] == list(top.index)
    for (name, _), (_, c), (_, p), (_, d) in movers:
        assert float(d) == pytest.approx(top[name], rel=1e-9, abs=1e-12)
        assert float(c) == pytest.approx(wl_now.get(name, 0.0), rel=1e-12, abs=1e-15)
        assert float(p) == pytest.approx(wl_prev.get(name, 0.0), rel=1e-12, abs=1e-15)

    # top external destinations by cost
    ext = cur[cur.dst_kind == "external"]
    dest = ext.groupby(ext.dst_domain.fillna(ext.dst_ip)).agg(cost=("cost_usd", "sum"), tx=("tx_bytes", "sum"))
    got = {r[0][0]: (float(r[4][1]), int(r[3][1])) for r in dom.tables["destinations"]}
    assert len(got) == min(10, len(dest))
    for name, (c, tx) in got.items():
        assert c == pytest.approx(dest.loc[name, "cost"], rel=1e-12, abs=1e-15) and tx == dest.loc[name, "tx"]
    assert min(c for c, _ in got.values()) >= dest.cost.sort_values(ascending=False).iloc[len(got) - 1] - 1e-15

    # month-to-date egress, every day of the month through the period's end
    tx, cost = X.month_egress(two_day_lake, "2026-01")
    (tier,) = dom.tables["tiers"]
    assert float(tier[3][1]) == pytest.approx(tx / X.GB, rel=1e-12)
    assert float(tier[4][1]) == pytest.approx(min(tx / X.GB, 100.0), rel=1e-12)   # AWS: 100 GB free a month
    assert float(tier[8][1]) == pytest.approx(cost, abs=1e-9)


def test_dollars_are_shown_to_the_cent_or_below_a_dollar_to_four_places():
    assert [usd(x) for x in (0, 4.30288, 1234.5, 0.00012, -0.5, -0.00001)] == [
        "$0.00", "$4.30", "$1,234.50", "$0.0001", "-$0.5000", "$0.0000"]


def test_report_cli_errors_are_one_line(tmp_path, two_day_lake):
    r = _cli("--lake", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.startswith("error: no cost tables") and r.stderr.count("\n") == 1
    r = _cli("--lake", str(two_day_lake), "--out", str(tmp_path / "o"), "--start", DAY2, "--end", DAY1)
    assert r.returncode == 2 and "is after" in r.stderr


def test_latest_validation_report_is_shown_without_validate(two_day_lake, page, tmp_path):
    # the page fixture ran validate, which wrote _reports/latest.md: a plain report shows it
    r = _cli("--lake", str(two_day_lake), "--out", str(tmp_path), "--start", DAY2, "--end", DAY2)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "index.html").read_text()
    assert 'id="quality-result">PASS<' in text and "source: _reports/latest.md" in text


def test_cost_files_prune_by_date(two_day_lake):
    lake = open_lake(str(two_day_lake), create_bucket=False)
    d1, d2 = dt.date.fromisoformat(DAY1), dt.date.fromisoformat(DAY2)
    assert costview.lake_dates(lake) == [d1, d2]
    every = costview.cost_files(lake, "flows")
    only2 = costview.cost_files(lake, "flows", d2, d2)
    assert only2 and set(only2) < set(every) and all(f"/date={DAY2}/" in p for p in only2)
    con = costview.connect(lake, d2, d2)
    assert con.execute("SELECT DISTINCT date FROM cost_flows").fetchall() == [(d2,)]
    want = X.cost_flows(two_day_lake)
    assert con.execute("SELECT COUNT(*) FROM cost_flows").fetchone()[0] == (want.date == DAY2).sum()


def test_egress_tier_position_with_a_small_free_allowance(two_day_lake):
    """The AWS cards with a free allowance of 1 GB put the simulated month past it: the
    position and the month's charge follow from the byte count by hand."""
    docs = copy.deepcopy(default_cards().docs)
    docs["aws"]["free_allowance"] = {**docs["aws"].get("free_allowance", {}), "gb": 1}
    cards = RateCards(docs)
    lake = open_lake(str(two_day_lake), create_bucket=False)
    (pos,) = costview.egress_tier_position(lake, dt.date.fromisoformat(DAY2), cards)
    tx, _ = X.month_egress(two_day_lake, "2026-01")
    g = tx / X.GB
    assert g > 1
    assert (pos["rate_card"], pos["free_gb"], pos["free_used_gb"]) == ("aws/us-east-1", 1.0, 1.0)
    assert (pos["tier_from_gb"], pos["tier_to_gb"], pos["per_gb_usd"]) == (0.0, 10240.0, 0.09)
    assert pos["gb_to_next_tier"] == pytest.approx(10240 - g)
    assert pos["month_cost_usd"] == pytest.approx((g - 1) * 0.09, rel=1e-9)
    # through the first day only: less egress, the same month
    (first,) = costview.egress_tier_position(lake, dt.date.fromisoformat(DAY1), cards)
    tx1 = int(X.cost_flows(two_day_lake).query("date == @DAY1 and traffic_class == 'internet_egress'").tx_bytes.sum())
    assert first["egress_bytes"] == tx1 < tx


@pytest.mark.slow
def test_notebook_views_and_report_read_an_s3_lake(two_day_lake, moto_s3, tmp_path):
    """The same reads against a real S3 endpoint (moto_server): what the README's MinIO
    instructions rely on."""
    url = "s3://netmon-explore-test/lake"
    s3 = open_lake(url, s3_endpoint=moto_s3.endpoint)
    local = open_lake(str(two_day_lake), create_bucket=False)
    # the cost tables and the job's records (readers see the hours the records commit)
    for top in ("costs", "_state"):
        for f in (two_day_lake / top).rglob("*"):
            if f.is_file():
                s3.write_bytes(f.relative_to(two_day_lake).as_posix(), f.read_bytes())
    assert costview.lake_dates(s3) == costview.lake_dates(local)
    d2 = dt.date.fromisoformat(DAY2)
    got = costview.connect(s3, d2, d2).execute(
        "SELECT traffic_class, SUM(cost_usd) FROM cost_flows GROUP BY 1").fetchall()
    df = X.cost_flows(two_day_lake)
    want = X.by_class(df[df.date == DAY2])
    assert {k: v for k, v in got} == pytest.approx({k: v[1] for k, v in want.items()}, rel=1e-12, abs=1e-15)
    r = _cli("--lake", url, "--s3-endpoint", moto_s3.endpoint, "--out", str(tmp_path), "--start", DAY2, "--end", DAY2)
    assert r.returncode == 0, r.stderr
    dom = Cells()
    dom.feed((tmp_path / "index.html").read_text())
    assert float(dom.keys["total_cost"]) == pytest.approx(df[df.date == DAY2].cost_usd.sum(), rel=1e-12)
