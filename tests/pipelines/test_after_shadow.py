"""A loop with `promotion: after_shadow`: once the challenger is registered, shadowing turns on and the
decision waits for live pairs — durably, across a scheduler kill — then the gates decide (shadow gates
included) once, and shadowing stops. A wait that times out is recorded and notified, and fails the
shadow gates. No model runs: the retrain is recorded as trained and evaluated, its pairs are stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import REPO, free_port
from tests.registry_helpers import make_versions
from tests.shadow_helpers import ANSWERS, store_pairs

MIN_PAIRS = 30


def _loop(rc, tmp_path: Path, *, max_hours: float = 24.0) -> int:
    """Model `support` (v1 champion, v2 trained), a loop deciding after shadow, and a retrain recorded as far
    as its evaluation: the next worker goes straight to the shadowing stage. The run's id."""
    from tuneloop.pipelines.loop import retrain
    from tuneloop.registry.gates import set_policy
    from tuneloop.registry.promotion import promote

    make_versions(rc, "support", [{"rougeL": 0.5}, {"rougeL": 0.5}])
    promote(rc, "support", 1, "champion", force=True, reason="holder")
    set_policy(rc, "support", ["rougeL >= champion - 0.01", "shadow_refusal_rate_delta_lo <= 0.01"])
    (tmp_path / "loop.yaml").write_text(
        f"name: support-loop\nmodel: support\nsuite: {REPO / 'examples' / 'evals' / 'support.yaml'}\n"
        f"promotion: after_shadow\nshadow: {{share: 1.0, min_pairs: {MIN_PAIRS}, max_hours: {max_hours}}}\n"
    )
    retrain.add_loop(rc, tmp_path / "loop.yaml")
    run_id, _ = retrain.enqueue(rc, "support-loop", "manual", "manual:test")
    evals = {
        who: {"version": v, "run_id": None, "metrics": {"rougeL": 0.5}, "tasks": {"answers": {"rougeL": 0.5}}}
        for who, v in (("champion", 1), ("challenger", 2))
    }
    retrain.update(rc, run_id, champion_version=1, version=2, details={"data": {}, "evals": evals})
    return run_id


def _row(rc, run_id: int):
    with rc.stores.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT state, attempts, details, error FROM retrain_runs WHERE id = :id"), {"id": run_id}
        ).first()


def _wait(probe, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.2)
    raise AssertionError(f"not reached within {timeout_s} s")


def _scheduler() -> subprocess.Popen:
    exe = Path(sys.executable).with_name("tuneloop")
    return subprocess.Popen(
        [str(exe), "scheduler", "run", "--port", str(free_port())],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_loop_after_shadow_waits_for_pairs_across_a_scheduler_kill_and_decides_once(
    loop_env, tmp_path: Path, monkeypatch
) -> None:
    rc = loop_env
    monkeypatch.setenv("TUNELOOP_SCHEDULER__LEASE_SECONDS", "3")
    monkeypatch.setenv("TUNELOOP_SCHEDULER__TICK_SECONDS", "0.5")
    run_id = _loop(rc, tmp_path)
    first = _scheduler()
    second = None
    try:
        waiting = _wait(lambda: (r := _row(rc, run_id)).state == "shadowing" and r, 120)
        shadow = (
            json.loads(waiting.details)["shadow"] if isinstance(waiting.details, str) else waiting.details["shadow"]
        )
        policy = rc.stores.traffic.get("support").policy
        assert policy.shadow is not None and (policy.shadow.share, policy.shadow.min_pairs) == (1.0, MIN_PAIRS)
        assert str(rc.mlflow.get_model_version_by_alias("support", "challenger").version) == "2"

        os.killpg(first.pid, signal.SIGKILL)  # the scheduler and the worker waiting under it
        first.wait(10)
        store_pairs(rc, [(f"q{i}", {1: ANSWERS[i % 3], 2: ANSWERS[i % 3]}) for i in range(MIN_PAIRS)])
        second = _scheduler()
        done = _wait(lambda: (r := _row(rc, run_id)).state in ("registered", "failed") and r, 120)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)

    details = done.details if isinstance(done.details, dict) else json.loads(done.details)
    assert done.state == "registered", done.error
    assert done.attempts == 1  # resuming the wait is not another try
    assert details["shadow"]["started_at"] == shadow["started_at"]  # the same wait, resumed
    assert (details["shadow"]["pairs"], details["shadow"]["ended"]) == (MIN_PAIRS, "enough pairs")
    assert details["shadow"]["evaluation"]["metrics"]["shadow_pairs"] == MIN_PAIRS
    decision = details["decision"]
    assert decision["action"] == "promoted", decision
    assert "shadow_refusal_rate_delta_lo <= 0.01" in [g["gate"] for g in decision["gates"] if g["status"] == "passed"]
    assert str(rc.mlflow.get_model_version_by_alias("support", "champion").version) == "2"
    assert rc.stores.traffic.get("support").policy.shadow is None  # shadowing stopped
    with rc.stores.engine.connect() as conn:
        events = conn.execute(sa.text("SELECT event FROM notifications WHERE sink = 'log'")).scalars().all()
        traffic = conn.execute(sa.text("SELECT count(*) FROM audit_log WHERE kind = 'traffic'")).scalar()
    assert events.count("challenger.registered") == 1  # decided once
    assert traffic == 2  # shadowing on, then off


def test_a_shadow_wait_that_times_out_is_notified_and_its_gates_fail(loop_env, tmp_path: Path) -> None:
    from tuneloop.pipelines.loop.worker import run_worker

    rc = loop_env
    run_id = _loop(rc, tmp_path, max_hours=0.0005)  # 1.8 s: no pair will come
    row = run_worker(rc, run_id)
    assert row["state"] == "registered", row
    shadow, decision = row["details"]["shadow"], row["details"]["decision"]
    assert (shadow["pairs"], shadow["ended"]) == (0, "timed out") and "evaluation" not in shadow
    assert decision["action"] == "kept champion"
    (failed,) = [g for g in decision["gates"] if g["status"] == "failed"]
    assert failed["gate"] == "shadow_refusal_rate_delta_lo <= 0.01" and "tuneloop eval shadow" in failed["reason"]
    with rc.stores.engine.connect() as conn:
        events = conn.execute(sa.text("SELECT event FROM notifications WHERE sink = 'log'")).scalars().all()
    assert "retrain.shadow_timeout" in events
    assert rc.stores.traffic.get("support").policy.shadow is None
