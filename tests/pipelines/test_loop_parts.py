"""The closed loop's parts, each on its own: leases, the notification outbox, alert reconciliation,
judging each window once, cron coalescing, the retraining queue, curation's choice of examples."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import REPO, free_port, run_cli
from tests.registry_helpers import make_versions
from tuneloop.demo import traffic

REPO_EXAMPLES = REPO / "examples"


def _store(rc, rows: list[dict], model: str = "support:1", feedback: list[dict | None] | None = None) -> None:
    from tuneloop.monitors.ingestion.records import parse_records, store

    items = []
    for i, r in enumerate(rows):
        item = {"model": model, "prompt": r["prompt"], "output": r["output"]}
        if feedback and feedback[i]:
            item["feedback"] = feedback[i]
        items.append(item)
    store(rc.stores, parse_records(items, 100_000), rc.models)


def _monitor(rc, tmp_path: Path, size: int = 100) -> None:
    from tuneloop.monitors.service import add

    make_versions(rc, "support", [{}])
    rng3 = random.Random(3)
    traffic.write(tmp_path / "reference.jsonl", [traffic.record(rng3) for _ in range(3000)])
    spec = tmp_path / "monitor.yaml"
    spec.write_text(
        f"name: mon\nmodel: support:1\nwindow: {{size: {size}}}\nmin_size: 50\n"
        "checks: [descriptors]\nreference: {file: reference.jsonl}\n"
    )
    add(rc, spec)


def test_a_lease_has_one_holder_until_it_lapses(rc) -> None:
    assert rc.stores.leases.acquire("x", "a", 1.0)
    assert not rc.stores.leases.acquire("x", "b", 1.0)
    assert rc.stores.leases.acquire("x", "a", 1.0)  # renewal
    assert rc.stores.leases.holder("x").owner == "a"
    time.sleep(1.1)
    assert rc.stores.leases.acquire("x", "b", 5.0)  # lapsed: b takes over
    assert not rc.stores.leases.acquire("x", "a", 5.0)
    rc.stores.leases.release("x", "a")  # not a's any more: nothing happens
    assert rc.stores.leases.holder("x").owner == "b"
    rc.stores.leases.release("x", "b")
    assert rc.stores.leases.holder("x") is None


def test_webhook_retries_back_off_record_every_attempt_and_give_up(sqlite_rc) -> None:
    from tuneloop.monitors.alerting import notify

    url = f"http://127.0.0.1:{free_port()}/hook?token=t0ps3cret"  # nothing listens
    with sqlite_rc.stores.transaction() as tx:
        notify.enqueue(sqlite_rc.stores, tx, "alert.opened", {"message": "m"}, [url])
    started = time.monotonic()
    assert notify.deliver_pending(sqlite_rc.stores, timeout_s=1, max_attempts=3, base_delay_s=0.5) == 1  # the log sink
    assert time.monotonic() - started < 5  # a dead sink costs one bounded attempt, never a hang
    assert notify.deliver_pending(sqlite_rc.stores, timeout_s=1, max_attempts=3, base_delay_s=0.5) == 0

    def attempts() -> list:
        with sqlite_rc.stores.engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT a.attempt, a.ok, a.detail, n.state FROM delivery_attempts a "
                    "JOIN notifications n ON n.id = a.notification_id WHERE n.sink != 'log' "
                    "ORDER BY a.attempt"
                )
            ).all()

    assert [(a.attempt, a.ok, a.state) for a in attempts()] == [(1, False, "pending")]  # not due yet: backoff 0.5 s
    time.sleep(0.6)
    notify.deliver_pending(sqlite_rc.stores, timeout_s=1, max_attempts=3, base_delay_s=0.5)
    assert len(attempts()) == 2
    time.sleep(0.6)
    notify.deliver_pending(sqlite_rc.stores, timeout_s=1, max_attempts=3, base_delay_s=0.5)
    assert len(attempts()) == 2  # the second retry waits 2 × 0.5 s
    time.sleep(0.5)
    notify.deliver_pending(sqlite_rc.stores, timeout_s=1, max_attempts=3, base_delay_s=0.5)
    rows = attempts()
    assert [(a.attempt, a.ok) for a in rows] == [(1, False), (2, False), (3, False)] and rows[-1].state == "failed"
    assert all("t0ps3cret" not in a.detail and "ConnectError" in a.detail for a in rows)


@pytest.mark.acceptance  # judges 7 windows and replays two rules on both stores: ~15 s
def test_each_window_is_judged_once_and_alerts_reconcile_idempotently(rc, tmp_path: Path) -> None:
    from tuneloop.monitors.alerting import alerts
    from tuneloop.monitors.service import judge_pending

    def check_pending(rc, name):
        pending = judge_pending(rc, name)
        judged, late = pending.judged, pending.late
        assert late == 0  # count windows have no late records
        return judged

    _monitor(rc, tmp_path)
    rule = tmp_path / "rule.yaml"
    rule.write_text("name: r\nmonitor: mon\nwhen: {drift: any}\nfor_windows: 2\nresolve_after: 2\nmin_size: 50\n")
    alerts.add_rule(rc, rule)
    rng = random.Random(5)
    _store(rc, [traffic.record(rng) for _ in range(250)])
    calm = check_pending(rc, "mon")
    assert [w["status"] for w in calm] == ["ok", "ok"], [
        w["drifted_checks"] for w in calm
    ]  # 250 records: two windows of 100
    assert check_pending(rc, "mon") == []  # nothing new: nothing judged again
    _store(rc, traffic.windows(3, 100, seed=6, kind="refusals", share=0.5)[50:])  # completes window 3, then 4 and 5
    assert [w["status"] for w in check_pending(rc, "mon")] == ["drift", "drift", "drift"]
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # each window's plot is closed once logged: a scheduler runs for months

    opened = alerts.evaluate(rc, "mon")
    assert [(c.rule, c.kind) for c in opened] == [("r", "opened")]
    assert alerts.evaluate(rc, "mon") == []  # replaying the same windows opens nothing twice
    _store(rc, [traffic.record(rng) for _ in range(200)])
    check_pending(rc, "mon")
    assert [c.kind for c in alerts.evaluate(rc, "mon")] == ["resolved"]
    rows = alerts.list_alerts(rc)
    assert (
        len(rows) == 1 and rows[0]["status"] == "resolved" and "output.refusal" in rows[0]["summary"]["drifted_checks"]
    )
    run = rc.mlflow.get_run(rows[0]["mlflow_run_id"])
    assert run.data.tags["tuneloop.alert.status"] == "resolved"

    # A rule on a check's statistic replays from the stored per-window statistics.
    stat = tmp_path / "stat.yaml"
    stat.write_text("name: s\nmonitor: mon\nwhen: {check: output.refusal, above: 0.15}\nfor_windows: 3\nmin_size: 50\n")
    alerts.add_rule(rc, stat)
    assert [(c.rule, c.kind) for c in alerts.evaluate(rc, "mon")] == [("s", "opened")]


def _loop(rc, tmp_path: Path, cron: str | None = None) -> str:
    from tuneloop.pipelines.loop.retrain import add_loop

    make_versions(rc, "adapter", [{}])
    traffic.write(tmp_path / "eval.jsonl", [{"prompt": "a", "completion": "b"}])
    (tmp_path / "suite.yaml").write_text("name: s\ntasks: [{name: t, data: eval.jsonl, metrics: [rouge]}]\n")
    (tmp_path / "loop.yaml").write_text(
        "name: l\nmodel: adapter\nsuite: suite.yaml\n" + (f'cron: "{cron}"\n' if cron else "")
    )
    add_loop(rc, tmp_path / "loop.yaml")
    return "l"


def test_missed_cron_fires_coalesce_into_one_run_and_triggers_are_idempotent(sqlite_rc, tmp_path: Path) -> None:
    from tuneloop.pipelines.loop.retrain import enqueue, list_runs
    from tuneloop.pipelines.loop.scheduler import LoopScheduler

    _loop(sqlite_rc, tmp_path, cron="* * * * *")
    with sqlite_rc.stores.engine.begin() as conn:  # the scheduler was down for ten minutes
        conn.execute(sa.text("UPDATE loops SET last_cron_at = :t"), {"t": datetime.now(UTC) - timedelta(minutes=10)})
    scheduler = LoopScheduler(sqlite_rc, None)
    first = scheduler.cron_due("l")
    assert first is not None and scheduler.cron_due("l") is None
    runs = list_runs(sqlite_rc)
    assert len(runs) == 1 and runs[0]["trigger"] == "cron"
    latest = datetime.fromisoformat(runs[0]["trigger_key"].split(":", 2)[2])
    assert datetime.now(UTC) - latest < timedelta(minutes=1)  # the latest missed fire, not the oldest

    a, created_a = enqueue(sqlite_rc, "l", "alert", "alert:7", alert_id=7)
    b, created_b = enqueue(sqlite_rc, "l", "alert", "alert:7", alert_id=7)
    assert a == b and created_a and not created_b


def test_a_run_whose_workers_died_twice_is_failed_not_retried(sqlite_rc, tmp_path: Path) -> None:
    from tuneloop.pipelines.loop.retrain import enqueue
    from tuneloop.pipelines.loop.worker import run_worker

    _loop(sqlite_rc, tmp_path)
    run_id, _ = enqueue(sqlite_rc, "l", "manual")
    with sqlite_rc.stores.engine.begin() as conn:
        conn.execute(sa.text("UPDATE retrain_runs SET attempts = 2, state = 'training' WHERE id = :i"), {"i": run_id})
    row = run_worker(sqlite_rc, run_id, lease_s=5)
    assert row["state"] == "failed" and "died 2 times" in row["error"] and row["attempts"] == 3


def test_only_reviewed_records_become_training_examples(sqlite_rc) -> None:
    from tuneloop.pipelines.loop.challenger_data import _share, reviewed_examples

    make_versions(sqlite_rc, "support", [{}])
    rows = [{"prompt": f"p{i}", "output": f"o{i}"} for i in range(6)]
    feedback = [{"reference": "gold"}, {"label": "refund"}, {"rating": 5}, {"rating": 3}, None, {"rating": 4.0}]
    _store(sqlite_rc, rows, feedback=feedback)
    picked = {(e["prompt"], e["answer"], e["why"]) for e in reviewed_examples(sqlite_rc.stores, "support", 4.0)}
    assert picked == {
        ("p0", "gold", "reference"),
        ("p1", "refund", "label"),
        ("p2", "o2", "approved"),
        ("p5", "o5", "approved"),
    }
    assert _share("record-1") == _share("record-1") and 0 <= _share("x") < 1


def test_loop_and_rule_files_are_validated_with_every_problem_named(tmp_path: Path) -> None:
    from tuneloop.errors import ConfigError
    from tuneloop.pipelines.loop.spec import load_loop

    bad = tmp_path / "loop.yaml"
    bad.write_text(
        'name: l\nmodel: m\nsuite: missing.yaml\ncron: "61 * * * *"\nmonitors: [{name: x, every: soon}]\nholdout: 1.5\n'
    )
    with pytest.raises(ConfigError) as err:
        load_loop(bad)
    text = str(err.value)
    assert "`cron`" in text and "`monitors.0.every`" in text and "`holdout`" in text

    rule = tmp_path / "rule.yaml"
    rule.write_text("name: r\nmonitor: m\nwhen: {drift: any}\nwebhooks: [ftp://x]\n")
    result = run_cli("alerts", "add", str(rule), env={"TUNELOOP_HOME": str(tmp_path / "home")})
    assert result.returncode == 2 and "not http(s) URLs" in result.stderr
    retrain = run_cli("retrain", "nope", "--json", env={"TUNELOOP_HOME": str(tmp_path / "home")})
    assert retrain.returncode == 1 and json.loads(retrain.stdout)["error"] == "not_found"


@pytest.mark.acceptance
def test_checking_the_same_records_again_adds_no_evidence_to_a_streak(sqlite_rc, tmp_path: Path) -> None:
    from tuneloop.monitors.alerting import alerts
    from tuneloop.monitors.service import judge_pending, rejudge_latest

    _monitor(sqlite_rc, tmp_path)
    rule = tmp_path / "rule.yaml"
    rule.write_text("name: r\nmonitor: mon\nwhen: {drift: any}\nfor_windows: 2\nmin_size: 50\n")
    alerts.add_rule(sqlite_rc, rule)
    _store(sqlite_rc, traffic.windows(1, 100, seed=6, kind="refusals", share=0.5))
    for _ in range(3):  # one drifted window, looked at three times with `--latest`: no evidence at all
        assert rejudge_latest(sqlite_rc, "mon")["status"] == "drift"
        assert alerts.evaluate(sqlite_rc, "mon") == []
    judged = judge_pending(sqlite_rc, "mon").judged
    assert [w["status"] for w in judged] == ["drift"]  # the window itself is judged once, as any other
    assert alerts.evaluate(sqlite_rc, "mon") == []  # streak 1 of 2
    _store(sqlite_rc, traffic.windows(1, 100, seed=7, kind="refusals", share=0.5))
    judge_pending(sqlite_rc, "mon")
    assert [c.kind for c in alerts.evaluate(sqlite_rc, "mon")] == ["opened"]
    assert alerts.explain_rules(sqlite_rc, "mon")[0]["state"].startswith(
        "an incident is open since window 4"
    )  # the MLflow step


def test_shipped_alert_rules_and_loops_are_valid() -> None:
    from tests.conftest import REPO
    from tuneloop.monitors.alerting.rules import load_rule
    from tuneloop.pipelines.loop.spec import load_loop

    rules = [load_rule(p) for p in sorted((REPO / "examples" / "alerts").glob("*.yaml"))]
    loops = [load_loop(p) for p in sorted((REPO / "examples" / "loops").glob("*.yaml"))]
    assert rules and loops
    assert {rule for loop in loops for rule in loop.on_alerts} <= {r.name for r in rules}  # every subscription resolves


def test_production_examples_are_scrubbed_of_pii_before_they_train() -> None:
    from tuneloop.pipelines.loop.challenger_data import _scrubbed

    examples = [
        {
            "id": "1",
            "prompt": "I am jane@example.com,  card 4111 1111 1111 1111",
            "answer": "Refunded  to DE89 3704 0044 0532 0130 00",
            "why": "reference",
        }
    ]
    cleaned, found = _scrubbed(examples)
    assert cleaned[0]["prompt"] == "I am [EMAIL], card [CARD]" and cleaned[0]["answer"] == "Refunded to [IBAN]"
    assert dict(found) == {"email": 1, "card": 1, "iban": 1}


def test_new_rows_that_near_copy_held_out_or_kept_rows_are_dropped() -> None:
    from tuneloop.pipelines.data.cleaning.dedup import jaccard, shingles
    from tuneloop.pipelines.loop.challenger_data import _drop_near_copies

    def row(prompt: str, answer: str) -> dict:
        return {"prompt": prompt, "completion": answer}

    held = [
        row(
            "Where is my order 1234? It was due on Monday and I still have nothing.", "It ships on Tuesday from Berlin."
        )
    ]
    champion = [
        row("How do I reset my password after three failed attempts today?", "Use the link on the sign-in page.")
    ]
    leak = row(
        "Where is my order 1234? It was due on Monday and I still have nothing!", "It ships on Tuesday from Berlin."
    )
    copy_of_old = row(
        "How do I reset my password after three failed attempts today??", "Use the link on the sign-in page."
    )
    fresh = row("Can I pay for the family plan with a gift card?", "Yes, gift cards work for every plan.")
    twin = row("Can I pay for the family plan with a gift card??", "Yes, gift cards work for every plan.")
    near = 0.8
    assert (
        jaccard(
            shingles(leak["prompt"] + "\n" + leak["completion"]),
            shingles(held[0]["prompt"] + "\n" + held[0]["completion"]),
        )
        >= near
    )  # the planted copies really are near
    kept, near_dropped, leaks = _drop_near_copies([leak, copy_of_old, fresh, twin], champion, held, near)
    assert kept == [fresh] and near_dropped == 2 and leaks == 1
    assert _drop_near_copies([fresh], champion, held, near) == ([fresh], 0, 0)


def _champion_with_training_file(rc, name: str, source: Path) -> int:
    """A version whose training run stored `source` as `tuneloop train` stores it (no model needed)."""
    from tuneloop.digest import file_sha256
    from tuneloop.names import Tag
    from tuneloop.registry.tracking import experiment_id

    digest = "sha256:" + file_sha256(source)
    run = rc.mlflow.create_run(experiment_id(rc.mlflow, rc.settings, "training"))
    rc.mlflow.log_artifact(run.info.run_id, str(source), f"data/training/{digest.removeprefix('sha256:')[:16]}")
    rc.mlflow.set_tag(run.info.run_id, "tuneloop.data.training.sha256", digest)
    rc.mlflow.set_terminated(run.info.run_id)
    rc.mlflow.create_registered_model(name, tags={Tag.KIND: "adapter"})
    return int(rc.mlflow.create_model_version(name, "file:///nowhere", run_id=run.info.run_id).version)


@pytest.mark.parametrize("kind", ["answers", "labels"])
def test_feedback_trains_only_in_the_champions_own_format(kind: str, sqlite_rc, tmp_path: Path) -> None:
    """A label trains a model whose answers are labels; for an answer model it stays quality evidence and never
    becomes an assistant turn (the support answer model once learned to answer "shipping")."""
    from tuneloop.pipelines.loop.challenger_data import answers_are_labels, build
    from tuneloop.rowfiles import read_rows

    source = REPO_EXAMPLES / ("data/support_train.jsonl" if kind == "answers" else "data/intents_train.jsonl")
    assert answers_are_labels([row for _, row in read_rows(source)]) == (kind == "labels")
    version = _champion_with_training_file(sqlite_rc, "m", source)
    rows = [
        {"prompt": f"Where is my parcel number {i} of the week {i % 7}?", "output": f"It ships on day {i}."}
        for i in range(30)
    ]
    feedback: list[dict | None] = [
        {"label": "shipping"} if i % 3 else {"reference": f"Your parcel {i} ships today."} for i in range(30)
    ]
    from tuneloop.monitors.ingestion.records import parse_records, store

    items = [
        {"id": f"r{i}", "model": f"m:{version}", **row, "feedback": fb}
        for i, (row, fb) in enumerate(zip(rows, feedback))
    ]
    store(sqlite_rc.stores, parse_records(items, 100_000), sqlite_rc.models)
    curated = build(sqlite_rc, "m", version, tmp_path / "out", min_rating=4, holdout=0.5, holdout_limit=3)
    counts = curated.counts
    trained = [row for _, row in read_rows(curated.train)] + [row for _, row in read_rows(curated.holdout)]
    answers = [r["messages"][-1]["content"] if "messages" in r else r["response"] for r in trained]
    if kind == "answers":
        assert "shipping" not in answers and counts["labels_kept_for_quality"] == 20 and counts["from_label"] == 0
        assert counts["reviewed_records"] == 10
    else:
        assert "shipping" in answers and counts["labels_kept_for_quality"] == 0 and counts["from_label"] > 0
        assert counts["reviewed_records"] == 30
    from tuneloop.pipelines.loop.challenger_data import _share

    eligible = [i for i, fb in enumerate(feedback) if kind == "labels" or "reference" in fb]
    below = sum(_share(f"r{i}") < 0.5 for i in eligible)
    assert below > 3 and counts["held_out_rows"] == 3  # capped by holdout_limit; the rest train
    assert counts["held_out_rows"] + counts["new_training_rows"] == counts["reviewed_records"]


_HOLD_LEASE = """
import sys, time
from tuneloop.registry.client import RegistryClient
from tuneloop.store import leases
from tuneloop.pipelines.loop import retrain, worker
from tuneloop.settings import Settings
rc = RegistryClient(Settings.model_validate_json(sys.argv[1]))
run_id = int(sys.argv[2])
owner = leases.owner_id()
assert rc.stores.leases.acquire(retrain.lease_name(run_id), owner, 5.0)
worker.Heartbeat(rc, run_id, owner, 5.0).start()   # what a worker runs beside its stages
print("READY", flush=True)
time.sleep(60)
sys.exit(3)   # never reached: the heartbeat ends the process when the run is cancelled
"""


def test_a_cancelled_retrain_ends_for_good(sqlite_rc, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tuneloop.errors import Conflict
    from tuneloop.pipelines.loop.retrain import cancel, enqueue, get, lease_name, runnable, update
    from tuneloop.pipelines.loop.worker import run_worker

    _loop(sqlite_rc, tmp_path)
    run_id, _ = enqueue(sqlite_rc, "l", "manual")
    update(sqlite_rc, run_id, state="training")
    worker = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LEASE, sqlite_rc.settings.model_dump_json(), str(run_id)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "READY"
        row = cancel(sqlite_rc, run_id, "labels were wrong")
        assert worker.wait(timeout=10) == 0  # the worker saw it within a heartbeat and stopped
    finally:
        if worker.poll() is None:
            worker.kill()
    assert (
        row["state"] == "cancelled"
        and row["error"] == f"cancelled by {sqlite_rc.settings.actor_name}: labels were wrong"
    )
    assert sqlite_rc.stores.leases.holder(lease_name(run_id)) is None and run_id not in runnable(sqlite_rc)
    update(sqlite_rc, run_id, state="evaluating")  # a stage finishing late never revives it
    assert get(sqlite_rc, run_id)["state"] == "cancelled"
    assert run_worker(sqlite_rc, run_id, lease_s=5)["state"] == "cancelled"  # nothing resumes it
    with sqlite_rc.stores.engine.connect() as conn:
        events = conn.execute(sa.text("SELECT event, payload FROM notifications")).all()
    assert [e for e, _ in events] == ["retrain.cancelled"] and "labels were wrong" in events[0][1]
    with pytest.raises(Conflict, match="already ended: it is `cancelled`"):
        cancel(sqlite_rc, run_id, "again")
    shown = run_cli("retrain", "cancel", str(run_id), env={"TUNELOOP_HOME": str(sqlite_rc.settings.home)})
    assert shown.returncode == 1 and "already ended" in shown.stderr
