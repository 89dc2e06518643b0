"""Month-to-date egress used outside the lake (`egress_baseline` in the job config): the month's
tiers and free allowance start from it, the cost job re-tiers a month whose baseline changes,
and `netmon-jobs validate` checks that the ledger's chain starts from it.

Dollars are hand-computed from AWS us-east-1's card: the first 100 GB of the month free (one
allowance per account), $0.09/GB to 10 TB (10,240 GB), $0.085/GB to 50 TB. GB = 2^30 bytes.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest

from jobs import commit as C
from jobs import costview, pricing, tiers
from jobs import state as st
from jobs import validate as V
from jobs.config import ConfigError, JobConfig, load_config
from test_jobs_load_state import GB, H0, H1, H2, all_costs, class_cost, cost_table, run
from test_jobs_load_state import lake  # noqa: F401 - fixture: 60 GB at H0, 50 GB at H1, 30 GB at H2

POOL = "aws/us-east-1/internet_egress"
UTC = dt.timezone.utc


@pytest.mark.parametrize("bad,msg", [
    ({"egress_baseline": [1]}, r"egress_baseline: expected a mapping month \(YYYY-MM\)"),
    ({"egress_baseline": {"2026-13": {"aws/us-east-1": 1}}}, r"egress_baseline: '2026-13' is not a month"),
    ({"egress_baseline": {"March": {"aws/us-east-1": 1}}}, r"'March' is not a month"),
    ({"egress_baseline": {"2026-03": {}}}, r"egress_baseline.2026-03: expected a mapping provider/region -> GB"),
    ({"egress_baseline": {"2026-03": {"us-east-1": 1}}}, r"'us-east-1' is not provider/region"),
    ({"egress_baseline": {"2026-03": {"hetzner/fsn1": 1}}}, r"'hetzner/fsn1' is not provider/region"),
    ({"egress_baseline": {"2026-03": {"aws/us-east-1/internet_egress": 1}}}, r"is not provider/region"),
    ({"egress_baseline": {"2026-03": {"aws/us-east-1": -1}}}, r"egress_baseline.2026-03.aws/us-east-1: must be at least 0"),
    ({"egress_baseline": {"2026-03": {"aws/us-east-1": True}}}, r"must be a number, got True"),
    ({"egress_baseline": {"2026-03": {"aws/us-east-1": "lots"}}}, r"must be a number, got 'lots'"),
    ({"egress_baseline": {"2026-03": {"aws/us-east-1": float("inf")}}}, r"must be a finite number of GB"),
])
def test_bad_baselines_are_one_line_errors(bad, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        JobConfig.from_dict(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("baseline,msg", [
    ({"aws/mars-1": 5}, r"egress_baseline.2026-03.aws/mars-1: no aws rate card for region 'mars-1'"),
    ({"aws/free_allowance": 101}, r"101 GB is more than the aws free allowance \(100 GB\)"),
    ({"gcp/free_allowance": 1}, r"gcp has no free allowance"),
])
def test_baselines_are_checked_against_the_cards_when_the_config_loads(tmp_path, baseline, msg):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"egress_baseline:\n  '2026-03': {json.dumps(baseline)}\n")
    with pytest.raises(ConfigError, match=msg):
        load_config(cfg)


def test_baseline_state_counts_the_free_allowance_unless_told():
    cards = pricing.default_cards()
    cfg = JobConfig.from_dict({"egress_baseline": {"2026-03": {"aws/us-east-1": 99.5, "aws/eu-west-1": 1}}})
    assert cfg.tier_start("2026-03", cards) == {
        "aws/eu-west-1/internet_egress": GB, POOL: int(99.5 * GB), "aws/free_allowance": 100 * GB}
    assert cfg.tier_start("2026-04", cards) == {}
    told = JobConfig.from_dict({"egress_baseline": {"2026-03": {"aws/us-east-1": 99.5, "aws/free_allowance": 20}}})
    assert told.tier_start("2026-03", cards) == {POOL: int(99.5 * GB), "aws/free_allowance": 20 * GB}


def _us(minute: int) -> int:
    return int(dt.datetime(2026, 3, 2, 10, minute, tzinfo=UTC).timestamp() * 1_000_000)


def test_a_baseline_of_99_5_gb_leaves_half_a_gb_free_and_splits_the_crossing_window():
    cards = pricing.default_cards()
    start = JobConfig.from_dict({"egress_baseline": {"2026-03": {"aws/us-east-1": 99.5}}}).tier_start("2026-03", cards)
    vols = {(POOL, _us(0)): GB // 4, (POOL, _us(1)): GB, (POOL, _us(2)): GB}
    rates, after = tiers.window_rates(vols, start, cards)
    assert rates[(POOL, _us(0))] == 0.0                                   # 99.75 GB: still free
    assert rates[(POOL, _us(1))] * GB == pytest.approx(0.75 * 0.09)      # 0.25 GB free, 0.75 GB at $0.09
    assert rates[(POOL, _us(2))] == 0.09 / GB                             # all of it at the first tier rate
    assert after == {POOL: int(99.5 * GB) + GB // 4 + 2 * GB, "aws/free_allowance": 100 * GB}
    # near the 10 TB breakpoint: 0.5 GB at $0.09, the rest at $0.085
    high = pricing.baseline_state({"aws/us-east-1": 10239.5}, cards)
    rates, _ = tiers.window_rates({(POOL, _us(0)): 2 * GB}, high, cards)
    assert rates[(POOL, _us(0))] * 2 * GB == pytest.approx(0.5 * 0.09 + 1.5 * 0.085)


def _config(tmp_path, baseline: dict | None, name="job.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"egress_baseline": {"2026-03": baseline}} if baseline else {}))
    return str(p)


def _ledger_failures(report):
    return [f for f in report.failures if f.table in ("_state/egress", "_state/hours")]


def test_the_cost_job_starts_the_month_from_the_baseline_and_re_tiers_when_it_changes(lake, tmp_path):  # noqa: F811
    res = run(lake, config_path=_config(tmp_path, {"aws/us-east-1": 99.5}))
    assert res.hours_computed == [H0, H1, H2]
    # H0's 60 GB window crosses the allowance: 0.5 GB free, 59.5 GB at $0.09; H1 and H2 all at $0.09
    assert class_cost(cost_table(lake, H0), "internet_egress") == pytest.approx(59.5 * 0.09)
    assert class_cost(cost_table(lake, H1), "internet_egress") == pytest.approx(50 * 0.09)
    assert class_cost(all_costs(lake), "internet_egress") == pytest.approx((140 - 0.5) * 0.09)
    rec = C.read_record(lake, H0)
    assert rec.tier_state_before == {POOL: int(99.5 * GB), "aws/free_allowance": int(99.5 * GB)}
    assert C.read_record(lake, H2).tier_state_after[POOL] == int(99.5 * GB) + 140 * GB
    assert st.EgressLedger.read(lake, "2026-03").start == rec.tier_state_before

    # the month-to-date position includes the baseline; the charge is the lake's rows'
    (pos,) = costview.egress_tier_position(lake, H0.date())
    assert pos["egress_gb"] == pytest.approx(239.5) and pos["baseline_gb"] == pytest.approx(99.5)
    assert pos["month_cost_usd"] == pytest.approx((140 - 0.5) * 0.09) and pos["per_gb_usd"] == 0.09

    # validate: the chain starts from the baseline the ledger keeps; with the config, it is the config's
    good = V.validate(lake, tier_starts={"2026-03": rec.tier_state_before})
    assert _ledger_failures(good) == [] and not [f for f in good.failures if f.rule.startswith("commit:")]
    other = {"2026-03": pricing.baseline_state({"aws/us-east-1": 10}, pricing.default_cards())}
    (f,) = _ledger_failures(V.validate(lake, tier_starts=other))
    assert f.rule == "ledger:baseline_differs"

    # a bigger baseline, nothing new to read: the month is re-tiered from its first hour
    res = run(lake, config_path=_config(tmp_path, {"aws/us-east-1": 10239.5}))
    assert res.hours_computed == [] and res.hours_retiered == [H0, H1, H2]
    assert class_cost(cost_table(lake, H0), "internet_egress") == pytest.approx(0.5 * 0.09 + 59.5 * 0.085)
    assert class_cost(all_costs(lake), "internet_egress") == pytest.approx(0.5 * 0.09 + 139.5 * 0.085)
    # the baseline removed: back to the plain month (100 GB free, then $0.09)
    res = run(lake, config_path=_config(tmp_path, None))
    assert res.hours_retiered == [H0, H1, H2]
    assert class_cost(all_costs(lake), "internet_egress") == pytest.approx(40 * 0.09)
    assert st.EgressLedger.read(lake, "2026-03").start == {}
    assert _ledger_failures(V.validate(lake, tier_starts={})) == []


def test_validate_finds_a_record_not_tiered_from_the_baseline_or_not_adding_up(lake, tmp_path):  # noqa: F811
    run(lake, config_path=_config(tmp_path, {"aws/us-east-1": 99.5}))
    # the ledger says the month starts from 99.5 GB; a first hour tiered from {} breaks the chain
    rec = C.read_record(lake, H0)
    path = C.record_path(H0)
    doc = json.loads(lake.read_bytes(path))
    doc["tier_state_before"] = {}
    lake.write_bytes(path, json.dumps(doc).encode())
    rules = sorted(f.rule for f in _ledger_failures(V.validate(lake)))
    assert "ledger:chain_broken" in rules and "ledger:state_arithmetic" in rules
    # an hour whose state after is not its state before plus its volumes
    doc["tier_state_before"] = rec.tier_state_before
    doc["tier_state_after"] = {**rec.tier_state_after, POOL: rec.tier_state_after[POOL] + GB}
    lake.write_bytes(path, json.dumps(doc).encode())
    rules = sorted(f.rule for f in _ledger_failures(V.validate(lake)))
    assert "ledger:state_arithmetic" in rules and "ledger:chain_broken" in rules  # H1 no longer chains


def test_validate_cli_takes_the_config(lake, tmp_path, capsys):  # noqa: F811
    cfg = _config(tmp_path, {"aws/us-east-1": 99.5})
    run(lake, config_path=cfg)
    V.main(["--lake", lake.url, "--config", cfg])   # (the fixture's inventory has gaps: FAIL anyway)
    assert "baseline" not in capsys.readouterr().out
    wrong = _config(tmp_path, {"aws/us-east-1": 5}, "wrong.json")
    assert V.main(["--lake", lake.url, "--config", wrong]) == 1
    out = capsys.readouterr().out
    assert "ledger:baseline_differs" in out and "the next cost run re-tiers the month" in out
