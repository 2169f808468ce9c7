"""A monitor on NAME@ALIAS across an alias move: windows, streaks and references are kept per model
version. The new holder's windows start afresh and never hold the old holder's records, an incident
open on the old version is closed as `superseded`, and the new holder is judged against its own
reference (for a pinned production window: its own first `window.size` records, never judged)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.registry_helpers import make_versions
from tuneloop.demo import traffic

SIZE = 100


def _send(rc, rows: list[dict], start: datetime) -> None:
    """Records sent under support@champion, one a second from `start`: attributed to the holder on arrival."""
    from tuneloop.monitors.ingestion.records import parse_records, store

    items = [
        {
            "model": "support@champion",
            "prompt": r["prompt"],
            "output": r["output"],
            "timestamp": (start + timedelta(seconds=i)).isoformat(),
        }
        for i, r in enumerate(rows)
    ]
    store(rc.stores, parse_records(items, 100_000), rc.models)


@pytest.mark.acceptance  # judges 3 windows, pins 2 references: ~20 s
def test_an_alias_move_starts_the_new_holder_afresh_against_its_own_reference(sqlite_rc, tmp_path: Path) -> None:
    from tuneloop.monitors.alerting import alerts
    from tuneloop.monitors.judging import check
    from tuneloop.registry.promotion import promote
    from tuneloop.store.alerts import AlertStatus
    from tuneloop.store.records import ModelSlice

    rc = sqlite_rc
    make_versions(rc, "support", [{}, {}])
    promote(rc, "support", 1, "champion", force=True, reason="first holder")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    _send(rc, traffic.windows(1, 300, seed=1), start)  # v1's reference: its first hour of production
    (tmp_path / "monitor.yaml").write_text(
        f"name: mon\nmodel: support@champion\nwindow: {{size: {SIZE}}}\nmin_size: 50\nchecks: [descriptors]\n"
        f"reference: {{window: {{start: '{start.isoformat()}', end: '{(start + timedelta(hours=1)).isoformat()}'}}}}\n"
    )
    (tmp_path / "rule.yaml").write_text("name: r\nmonitor: mon\nwhen: {drift: any}\nfor_windows: 1\n")
    from tuneloop.monitors.service import add

    add(rc, tmp_path / "monitor.yaml")
    alerts.add_rule(rc, tmp_path / "rule.yaml")

    later = start + timedelta(hours=2)
    refusing = traffic.windows(1, 2 * SIZE, seed=2, kind="refusals", share=0.6)  # v2 answers like this all along
    _send(rc, refusing[:SIZE], later)  # v1 drifts: the incident opens
    first = check(rc, "mon")
    assert [(w["version"], w["status"]) for w in first.judged] == [(1, "drift")]
    assert [c.kind for c in first.alerts] == ["opened"]
    _send(rc, traffic.windows(1, SIZE // 2, seed=3), later + timedelta(minutes=10))  # half a window of v1

    promote(rc, "support", 2, "champion", force=True, reason="the challenger won")
    v2_start = later + timedelta(hours=1)
    v2_rows = refusing[SIZE:] + traffic.windows(1, SIZE, seed=4, kind="refusals", share=0.6)
    _send(rc, v2_rows[:40], v2_start)
    forming = check(rc, "mon")
    assert any("moved from version 1 to 2" in n for n in forming.notes), forming.notes
    assert any("reference is forming: 40 of its first 100 records" in n for n in forming.notes), forming.notes
    assert forming.judged == [] and [c.kind for c in forming.alerts] == ["superseded"]
    _send(rc, v2_rows[40:], v2_start + timedelta(minutes=5))
    moved = check(rc, "mon")
    assert moved.alerts == [] and not any("moved from" in n for n in moved.notes)  # the move is news once
    incident = alerts.get(rc, first.alerts[0].alert_id)
    assert incident["status"] == AlertStatus.SUPERSEDED
    events = [n.event for n, _ in rc.stores.outbox.of_alert(incident["id"])]
    assert "alert.superseded" in events

    # v2's first 100 records became its reference; the 100 after them are its first window, calm against
    # them (v1's reference would call these refusals drift, as it did above)
    tenure = rc.stores.monitors.tenure("mon", 2)
    v2_seqs = [r.seq for r in rc.stores.records.of(ModelSlice("support", 2, "champion"))]
    assert tenure.reference_sha256 not in (None, rc.stores.monitors.get("mon").reference_sha256)
    assert tenure.reference_last_seq == v2_seqs[SIZE - 1]
    assert [(w["version"], w["status"], w["first_seq"], w["last_seq"]) for w in moved.judged] == [
        (2, "ok", v2_seqs[SIZE], v2_seqs[2 * SIZE - 1])
    ]
    pinned = {a.path for a in rc.mlflow.list_artifacts(rc.stores.monitors.get("mon").mlflow_run_id, "reference")}
    assert f"reference/{tenure.reference_sha256.removeprefix('sha256:')[:16]}" in pinned

    # no window holds records of two versions; the old holder's half window was never judged
    v1_seqs = {r.seq for r in rc.stores.records.of(ModelSlice("support", 1, "champion"))}
    for window in rc.stores.monitors.windows("mon"):
        held = set(range(window.first_seq, window.last_seq + 1))
        mine = v1_seqs if window.version == 1 else set(v2_seqs)
        assert held & (set(v2_seqs) | v1_seqs) <= mine, f"window {window.id} holds records of two versions"
    assert len(rc.stores.monitors.windows("mon")) == 2
    # the rule counts v2's windows only: after its calm window, no incident is open
    assert [r["state"] for r in alerts.explain_rules(rc, "mon")] == [
        "the condition did not hold in the last judged window"
    ]
    assert check(rc, "mon").alerts == []
    from tuneloop.monitors.service import status

    assert [(s["monitor"], s["version"], s["state"]) for s in status(rc)] == [("mon", 2, "ok")]


@pytest.mark.acceptance  # one window per holder: ~10 s
def test_with_a_file_reference_the_new_holder_is_judged_against_the_same_file_from_its_first_record(
    sqlite_rc, tmp_path: Path
) -> None:
    import random

    from tuneloop.monitors.judging import check
    from tuneloop.monitors.service import add
    from tuneloop.registry.promotion import promote

    rc = sqlite_rc
    make_versions(rc, "support", [{}, {}])
    promote(rc, "support", 1, "champion", force=True, reason="first holder")
    rng = random.Random(3)
    traffic.write(tmp_path / "reference.jsonl", [traffic.record(rng) for _ in range(600)])
    (tmp_path / "monitor.yaml").write_text(
        f"name: mon\nmodel: support@champion\nwindow: {{size: {SIZE}}}\nmin_size: 50\n"
        "checks: [descriptors]\nreference: {file: reference.jsonl}\n"
    )
    add(rc, tmp_path / "monitor.yaml")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    _send(rc, traffic.windows(1, SIZE + 30, seed=5), start)
    assert [w["version"] for w in check(rc, "mon").judged] == [1]
    promote(rc, "support", 2, "champion", force=True, reason="next")
    _send(rc, traffic.windows(1, SIZE, seed=6), start + timedelta(hours=1))
    moved = check(rc, "mon")
    assert [(w["version"], w["size"], w["status"]) for w in moved.judged] == [(2, SIZE, "ok")]
    assert rc.stores.monitors.tenure("mon", 2).reference_sha256 == rc.stores.monitors.get("mon").reference_sha256


@pytest.mark.acceptance  # trains two versions of the tiny model (2 steps each): ~60 s
def test_with_eval_data_as_reference_each_holder_is_judged_against_its_own(
    sqlite_rc, tiny_model: Path, tmp_path: Path
) -> None:
    from tests.monitors.test_monitor_service import version_with_eval_data
    from tuneloop.monitors.judging import check
    from tuneloop.monitors.service import add
    from tuneloop.registry.promotion import promote

    rc = sqlite_rc
    calm_eval = traffic.windows(1, 200, seed=7)
    refusing_eval = traffic.windows(1, 200, seed=8, kind="refusals", share=0.6)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    v1 = version_with_eval_data(rc, tiny_model, tmp_path / "v1", calm_eval)
    v2 = version_with_eval_data(rc, tiny_model, tmp_path / "v2", refusing_eval)  # v2 refuses by design
    [v3] = make_versions(rc, "trained", [{}])  # registered without a tuneloop training run: no eval data
    promote(rc, "trained", v1, "champion", force=True, reason="first")
    (tmp_path / "monitor.yaml").write_text(
        f"name: mon\nmodel: trained@champion\nwindow: {{size: {SIZE}}}\nmin_size: 50\n"
        "checks: [descriptors]\nreference: {training_data: eval}\n"
    )
    add(rc, tmp_path / "monitor.yaml")

    def send(rows: list[dict]) -> None:
        from tuneloop.monitors.ingestion.records import parse_records, store

        items = [{"model": "trained@champion", "prompt": r["prompt"], "output": r["output"]} for r in rows]
        store(rc.stores, parse_records(items, 100_000), rc.models)

    refusing = traffic.windows(1, 3 * SIZE, seed=9, kind="refusals", share=0.6)
    send(refusing[:SIZE])
    assert [(w["version"], w["status"]) for w in check(rc, "mon").judged] == [
        (v1, "drift")
    ]  # against v1's calm eval data

    promote(rc, "trained", v2, "champion", force=True, reason="the refusing one")
    send(refusing[SIZE : 2 * SIZE])
    moved = check(rc, "mon")
    assert [(w["version"], w["status"]) for w in moved.judged] == [(v2, "ok")], moved.judged  # against its own
    assert f"`eval` data of trained:{v2}" in rc.stores.monitors.tenure("mon", v2).reference_source

    promote(rc, "trained", v3, "champion", force=True, reason="an imported adapter")
    send(refusing[2 * SIZE :])
    third = check(rc, "mon")
    assert any(f"trained:{v3} has no stored `eval` data" in n for n in third.notes), third.notes
    assert rc.stores.monitors.tenure("mon", v3).reference_sha256 == rc.stores.monitors.get("mon").reference_sha256
    assert [(w["version"], w["status"]) for w in third.judged] == [(v3, "drift")]  # the first reference: v1's calm data


@pytest.mark.acceptance  # one window, one reference pinned: ~10 s
def test_a_window_smaller_than_a_reference_pins_the_new_holders_first_hundred_records(
    sqlite_rc, tmp_path: Path
) -> None:
    """Windows of 50: the new holder's reference still holds the 100 records a reference needs (the demo's
    --quick windows once made the new holder's 50-record reference fail the check)."""
    from tuneloop.monitors.judging import check
    from tuneloop.monitors.references import MIN_REFERENCE
    from tuneloop.monitors.service import add
    from tuneloop.registry.promotion import promote
    from tuneloop.store.records import ModelSlice

    rc = sqlite_rc
    make_versions(rc, "support", [{}, {}])
    promote(rc, "support", 1, "champion", force=True, reason="first holder")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    _send(rc, traffic.windows(1, 200, seed=1), start)
    (tmp_path / "monitor.yaml").write_text(
        "name: mon\nmodel: support@champion\nwindow: {size: 50}\nmin_size: 25\nchecks: [descriptors]\n"
        f"reference: {{window: {{start: '{start.isoformat()}', end: '{(start + timedelta(hours=1)).isoformat()}'}}}}\n"
    )
    add(rc, tmp_path / "monitor.yaml")
    promote(rc, "support", 2, "champion", force=True, reason="the challenger won")
    v2_start = start + timedelta(hours=2)
    v2_rows = traffic.windows(1, MIN_REFERENCE + 50, seed=4)
    _send(rc, v2_rows[:60], v2_start)
    forming = check(rc, "mon")
    assert any(f"reference is forming: 60 of its first {MIN_REFERENCE} records" in n for n in forming.notes), (
        forming.notes
    )
    assert forming.judged == []
    _send(rc, v2_rows[60:], v2_start + timedelta(minutes=5))
    formed = check(rc, "mon")
    v2_seqs = [r.seq for r in rc.stores.records.of(ModelSlice("support", 2, "champion"))]
    assert rc.stores.monitors.tenure("mon", 2).reference_last_seq == v2_seqs[MIN_REFERENCE - 1]
    assert [(w["version"], w["first_seq"], w["last_seq"]) for w in formed.judged] == [
        (2, v2_seqs[MIN_REFERENCE], v2_seqs[MIN_REFERENCE + 49])
    ]
