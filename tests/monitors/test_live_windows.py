"""The same windows live and in backtest: a monitor over stored records judges exactly the windows a
backtest of those records cuts, with the same verdicts; time windows close on the clock and late
records are counted, never judged again."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.registry_helpers import make_versions
from tuneloop.demo import traffic


def _add_monitor(rc, tmp_path: Path, window: str) -> None:
    from tuneloop.monitors.service import add

    make_versions(rc, "support", [{}])
    rng = random.Random(3)
    traffic.write(tmp_path / "reference.jsonl", [traffic.record(rng) for _ in range(600)])
    (tmp_path / "monitor.yaml").write_text(
        f"name: mon\nmodel: support:1\nwindow: {window}\nmin_size: 50\nreference: {{file: reference.jsonl}}\n"
    )
    add(rc, tmp_path / "monitor.yaml")


def _store(rc, rows: list[dict], stamps: list[datetime] | None = None) -> None:
    from tuneloop.monitors.ingestion.records import parse_records, store

    items = [
        {
            "model": "support:1",
            "prompt": r["prompt"],
            "output": r["output"],
            **({"timestamp": stamps[i].isoformat()} if stamps else {}),
        }
        for i, r in enumerate(rows)
    ]
    store(rc.stores, parse_records(items, 100_000), rc.models)


def _backtest(rc, tmp_path: Path) -> list[dict]:
    """`monitor backtest` over the records the store holds, in arrival order."""
    from tuneloop.monitors.backtest import backtest, read_records
    from tuneloop.monitors.monitor_spec import MonitorSpec
    from tuneloop.monitors.references import as_record
    from tuneloop.store.records import ModelSlice

    spec = MonitorSpec.model_validate(rc.stores.monitors.get("mon").spec)
    stored = [as_record(r) for r in rc.stores.records.of(ModelSlice("support", 1, None))]
    return backtest(spec, read_records(tmp_path / "reference.jsonl"), stored).as_dict()["windows"]


def _verdicts(windows: list[dict]) -> list[tuple]:
    return [
        (w["size"], w["status"], tuple(w["drifted_checks"]), tuple(round(c["p_value"], 9) for c in w["checks"]))
        for w in windows
    ]


@pytest.mark.acceptance  # judges 9 windows live and in backtest: ~40 s
def test_count_windows_live_are_the_backtests_windows(sqlite_rc, tmp_path: Path) -> None:
    from tuneloop.monitors.judging import check

    _add_monitor(sqlite_rc, tmp_path, "{size: 100, step: 50}")
    rows = traffic.windows(2, 100, seed=4) + traffic.windows(2, 100, seed=5, kind="refusals", share=0.5)
    _store(sqlite_rc, rows[:130])  # one complete sliding window, the next one not yet
    first = check(sqlite_rc, "mon")
    _store(sqlite_rc, rows[130:] + traffic.windows(1, 30, seed=6))  # 430 records: windows end at 100, 150, ..., 400
    second = check(sqlite_rc, "mon")
    live = first.judged + second.judged
    assert [(w["first_seq"], w["last_seq"]) for w in live] == [(1 + 50 * k, 100 + 50 * k) for k in range(7)]
    replayed = _backtest(sqlite_rc, tmp_path)
    assert [w["complete"] for w in replayed] == [True] * 7  # the 30 trailing records make no complete window
    assert _verdicts(live) == _verdicts(replayed)
    assert {w["status"] for w in live[-3:]} == {"drift"}
    assert check(sqlite_rc, "mon").judged == []  # every window is judged once


@pytest.mark.acceptance  # judges 3 + 3 time windows: ~25 s
def test_time_windows_close_on_the_clock_and_late_records_are_counted_not_judged(sqlite_rc, tmp_path: Path) -> None:
    from tuneloop.monitors.judging import check

    _add_monitor(sqlite_rc, tmp_path, "{kind: time, duration: 1h}")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = hour - timedelta(hours=5)  # three hours of records, then two empty hours (the last may still be open)
    rows = traffic.windows(2, 100, seed=4) + traffic.windows(1, 100, seed=5, kind="refusals", share=0.5)
    stamps = [start + timedelta(hours=i // 100, seconds=30 * (i % 100)) for i in range(300)]
    _store(sqlite_rc, rows, stamps)

    outcome = check(sqlite_rc, "mon")  # checked once after the windows closed: all are judged
    data, empty = outcome.judged[:3], outcome.judged[3:]
    assert [(w["start"], w["size"]) for w in data] == [
        ((start + timedelta(hours=k)).isoformat(), 100) for k in range(3)
    ]
    assert [w["status"] for w in data] == ["ok", "ok", "drift"]
    assert _verdicts(data) == _verdicts(_backtest(sqlite_rc, tmp_path))  # a backtest cuts the same three
    # Closed hours without records are windows too (the hour before this one closes a minute after it ends).
    assert len(empty) in (1, 2) and all((w["size"], w["status"]) == (0, "not enough data") for w in empty)

    # A record for the second hour arrives after that window was judged: counted late there, not judged.
    _store(sqlite_rc, traffic.windows(1, 1, seed=9), [start + timedelta(hours=1, minutes=5)])
    later = check(sqlite_rc, "mon")
    assert later.late == 1 and any("1 record(s) arrived after their window was judged" in n for n in later.notes)
    assert all(w["start"] != (start + timedelta(hours=1)).isoformat() for w in later.judged)  # not judged again
    windows = sqlite_rc.stores.monitors.windows("mon")
    assert [w.late for w in windows][:3] == [0, 1, 0] and windows[1].size == 100
    assert check(sqlite_rc, "mon").late == 0  # counted once


def test_model_references_resolve_through_one_cache_that_a_promotion_refreshes(sqlite_rc) -> None:
    from tuneloop.registry.promotion import promote
    from tuneloop.registry.resolver import ModelResolver

    make_versions(sqlite_rc, "support", [{}, {}])
    sqlite_rc.mlflow.set_registered_model_alias("support", "champion", "1")
    assert sqlite_rc.models is sqlite_rc.models  # one resolver per client
    assert sqlite_rc.models.resolve("support@champion") == ("support", 1, "champion")
    sqlite_rc.mlflow.set_registered_model_alias("support", "champion", "2")  # moved behind tuneloop's back
    stale = ModelResolver(sqlite_rc.mlflow, ttl_seconds=3600)
    assert stale.resolve("support@champion") == ("support", 2, "champion")
    sqlite_rc.mlflow.set_registered_model_alias("support", "champion", "1")
    assert stale.resolve("support@champion") == (
        "support",
        2,
        "champion",
    )  # trusted until its answer is older than the TTL
    assert ModelResolver(sqlite_rc.mlflow, ttl_seconds=0).resolve("support@champion") == ("support", 1, "champion")
    promote(sqlite_rc, "support", 2, "champion", force=True, reason="test")  # a move through tuneloop is seen at once
    assert sqlite_rc.models.resolve("support@champion") == ("support", 2, "champion")
    assert sqlite_rc.settings.stores.alias_cache_seconds == 5.0
