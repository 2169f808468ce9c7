"""Alert rules: one alert per incident, K consecutive windows, hysteresis, cooldown, and few false
alerts on traffic from the reference distribution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.monitors.conftest import run_backtest
from tuneloop.demo import traffic as drift_data
from tuneloop.monitors.alerting.rules import AlertRule, incidents, load_rule
from tuneloop.monitors.drift.checks import CheckResult, WindowResult


def _windows(pattern: str) -> list[WindowResult]:
    """`D` drifted, `.` calm, `s` too small to judge."""
    out = []
    for mark in pattern:
        if mark == "s":
            out.append(WindowResult(size=50, status="not enough data", threshold=float("nan")))
        else:
            check = CheckResult(
                "output.refusal", 0.3 if mark == "D" else 0.01, 1e-9 if mark == "D" else 0.5, drifted=mark == "D"
            )
            out.append(WindowResult(size=500, status="drift" if mark == "D" else "ok", threshold=0.001, checks=[check]))
    return out


def _rule(**extra) -> AlertRule:
    return AlertRule.model_validate({"name": "r", "when": {"drift": "any"}, "for_windows": 3, **extra})


def test_an_incident_fires_after_k_windows_and_once_while_it_lasts() -> None:
    found = incidents(_rule(), _windows("..DD.DDD.DDDDDD.D...."))
    assert [(i.first, i.opened, i.closed) for i in found] == [(5, 7, 19)]  # one calm window does not close it
    assert incidents(_rule(), _windows("DD.DD.DD.DD")) == []  # never 3 in a row


def test_small_windows_are_skipped_and_cooldown_delays_the_next_incident() -> None:
    assert [i.opened for i in incidents(_rule(), _windows("DsDsD"))] == [4]
    pattern = "DDD..." + "DDD" + "...." + "DDD"
    assert [i.opened for i in incidents(_rule(cooldown_windows=0), _windows(pattern))] == [2, 8, 15]
    # closed at window 5; 4 cooldown windows (6-9) swallow the second burst's start, so no 3-streak until 15
    assert [i.opened for i in incidents(_rule(cooldown_windows=4), _windows(pattern))] == [2, 15]


def test_the_rule_says_why_drifted_windows_did_not_alert() -> None:
    from tuneloop.monitors.alerting.rules import replay

    rule = _rule(cooldown_windows=4, resolve_after=2)
    assert replay(rule, _windows("..DD")).explain(rule).startswith("streak 2 of 3: the condition held in 2 window(s)")
    assert "held 50 records, too few for the monitor to judge" in replay(rule, _windows("DDs")).explain(rule)
    small = _rule(min_size=600)
    assert "held 500 records, under the rule's min_size of 600" in replay(small, _windows("D")).explain(small)
    assert "streak 2 of 3" in replay(rule, _windows("DDs")).explain(rule)  # a small window neither counts nor breaks it
    assert replay(rule, _windows("DDD")).explain(rule).startswith("an incident is open since window 2")
    cooling = replay(rule, _windows("DDD..D")).explain(rule)  # closed at 4; window 5 is the first cooldown window
    assert cooling.startswith("in cooldown after the last incident: 3 more judged window(s)")
    assert replay(rule, _windows("DD.")).explain(rule) == "the condition did not hold in the last judged window"


def test_conditions_on_a_named_check_or_a_statistic() -> None:
    windows = _windows("DDDD")
    assert len(incidents(_rule(when={"drift": "output.*"}), windows)) == 1
    assert incidents(_rule(when={"drift": "prompt.*"}), windows) == []
    assert len(incidents(_rule(when={"check": "output.refusal", "above": 0.2}), windows)) == 1
    assert incidents(_rule(when={"check": "quality.accuracy", "below": 0.8}), windows) == []  # the check never ran


def test_bad_rules_are_refused_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "rule.yaml"
    path.write_text("name: r\nwhen: {check: quality.accuracy}\nfor_windows: 0\nseverity: loud\nextra: 1\n")
    from tuneloop.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_rule(path)
    message = str(caught.value)
    for problem in ("`when`", "`for_windows`", "`severity`", "`extra`: unknown key"):
        assert problem in message, message


def test_backtest_replays_a_rule_over_a_planted_incident(reference: Path, tmp_path: Path) -> None:
    rows = (
        drift_data.windows(6, 500, seed=41)
        + drift_data.windows(8, 500, seed=42, kind="refusals", share=0.2)
        + drift_data.windows(6, 500, seed=43)
    )
    monitor = tmp_path / "monitor.yaml"
    monitor.write_text("name: support\nwindow: {size: 500}\n")
    result = run_backtest(
        monitor,
        reference,
        drift_data.write(tmp_path / "current.jsonl", rows),
        *("--alert", str(REPO / "examples" / "alerts" / "support-drift.yaml"), "--json"),
        env={"TUNELOOP_HOME": str(tmp_path / "home")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    alerts = json.loads(result.stdout)["alerts"]
    assert alerts["rule"] == "support-drift"
    assert [
        (i["streak_started_at_window"], i["opened_at_window"], i["closed_at_window"]) for i in alerts["incidents"]
    ] == [(6, 8, 16)]


@pytest.mark.acceptance
def test_k3_rule_on_same_distribution_traffic_fires_rarely_and_once_per_planted_incident(reference: Path) -> None:
    from tuneloop.monitors.backtest import read_records
    from tuneloop.monitors.drift.checks import Record
    from tuneloop.monitors.drift.judge import build_reference, check_window

    ref = build_reference(read_records(reference))
    rule = _rule(resolve_after=3, cooldown_windows=10)

    def results(rows: list[dict]) -> list[WindowResult]:
        return [check_window(ref, [Record(**r) for r in rows[i : i + 500]]) for i in range(0, len(rows), 500)]

    # A fifth of the full replay (benchmarks/alert_false_alarms.py runs 20 × 50 windows: at most 2 alerts in
    # 1000 fresh windows); here 4 × 50, the first four seeds of the same traffic.
    false_alerts = sum(len(incidents(rule, results(drift_data.windows(50, 500, seed=1000 + s)))) for s in range(4))
    assert false_alerts <= 1
    for s, kind in enumerate(("off_topic", "refusals", "wrong_predictions")):
        rows = (
            drift_data.windows(15, 500, seed=2000 + s)
            + drift_data.windows(15, 500, seed=3000 + s, kind=kind, share=0.2)
            + drift_data.windows(20, 500, seed=4000 + s)
        )
        found = incidents(rule, results(rows))
        assert len(found) == 1 and 15 <= found[0].first <= found[0].opened <= 17 + 2, (
            kind,
            [i.as_dict() for i in found],
        )
