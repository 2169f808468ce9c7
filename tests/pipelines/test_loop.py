"""The closed loop end to end on a tiny model: champion, monitor, drift through the real ingest API,
one alert, a challenger retrained in a worker process, evaluated beside the champion, decided."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.a3a2416 import rewrite_recipe_as_a3a2416
from tests.conftest import eventually, free_port
from tests.loop_helpers import ingest_directly, tiny_config
from tuneloop.names import Tag

pytestmark = pytest.mark.acceptance  # trains twice and evaluates three times: ~2 min


def test_tiny_loop_end_to_end_on_served_answers(loop_env, tiny_model: Path) -> None:
    """serve -> traffic through the openai client -> drift -> alert -> retrain -> promotion -> the same
    server answers with v2 -> the monitor judges v2's answers against v2's own reference."""
    import functools
    from dataclasses import replace

    from tuneloop.demo.live import served
    from tuneloop.demo.run import SYSTEM, Demo
    from tuneloop.store.records import ModelSlice

    rc = loop_env
    hook_port = free_port()  # nothing listens there: the webhook sink is down for the whole loop
    # Gates a tiny random model's challenger passes (its answers are noise): the promotion is the point here.
    cfg = replace(tiny_config(tiny_model), gates=("rougeL >= 0",), shadow_pairs=20)
    stages: list[str] = []
    production = functools.partial(served, rc, None, system=SYSTEM, max_tokens=cfg.answer_tokens)
    summary = Demo(rc, cfg, stages.append).run(
        production, "ui", webhooks=[f"http://127.0.0.1:{hook_port}/hook?token=s3cret"]
    )
    assert [s.split(" ")[0] for s in stages if "/9" in s.split(" ")[0]] == [f"{i}/9" for i in range(1, 10)]
    v1, v2 = int(summary["champion"]["version"]), int(summary["retrain"]["challenger_version"])

    # The monitor judged v1's own answers: calm windows ok, drifted ones drift; one alert for the incident.
    first = [w for w in summary["windows"] if w["version"] == v1]
    assert [w["status"] for w in first] == ["ok"] * cfg.calm_windows + ["drift"] * cfg.drift_windows, first
    assert len(summary["alerts"]) == 1
    alert = summary["alerts"][0]
    assert alert["rule"] == "support-drift"
    assert alert["summary"]["window_ids"] == [w["window_id"] for w in first[cfg.calm_windows : cfg.calm_windows + 2]]
    mirrored = rc.mlflow.get_run(alert["mlflow_run_id"])
    assert mirrored.data.tags["tuneloop.alert.id"] == str(alert["id"]) and mirrored.info.status == "FINISHED"

    # Promoted: the same server answered the same prompt with v2, and v2's windows hold only v2's answers,
    # judged against v2's own reference (its first window of answers), not v1's.
    assert summary["decision"]["action"] == "promoted"
    # Before deciding, v2 shadowed v1 on live prompts through the same server, and the gates read it.
    shadow = summary["shadow"]
    assert shadow["pairs"] >= cfg.shadow_pairs and shadow["ended"] == "enough pairs" and shadow["stopped"]
    assert shadow["evaluation"]["metrics"]["shadow_pairs"] >= cfg.shadow_pairs
    passed = {g["gate"] for g in summary["decision"]["gates"] if g["status"] == "passed"}
    assert f"shadow_pairs >= {cfg.shadow_pairs}" in passed and "shadow_refusal_rate_delta_lo <= 0.05" in passed
    assert rc.stores.traffic.get("tiny-support").policy.shadow is None
    pairs = rc.stores.records.shadow_pairs("tiny-support", v1, v2)
    assert len(pairs) >= cfg.shadow_pairs and all(rc.stores.records.get(p.live_id).kind == "live" for p in pairs)
    before, after = summary["answers"]["by"]
    assert (before["version"], after["version"]) == (v1, v2)
    for answer in (before, after):
        record = rc.stores.records.get(answer["record_id"])
        assert (record.version, record.alias, record.kind, record.output) == (
            answer["version"],
            "champion",
            "live",
            answer["text"],
        )
        assert record.prompt == summary["answers"]["prompt"]  # the user turn, without the system prompt
    later = [w for w in summary["windows"] if w["version"] == v2]
    assert len(later) == cfg.after_windows and later[0]["status"] in ("ok", "drift")
    tenure = rc.stores.monitors.tenure("support-champion", v2)
    assert tenure is not None and tenure.reference_last_seq is not None
    v2_records = rc.stores.records.of(ModelSlice("tiny-support", v2, "champion"))
    assert len(v2_records) >= cfg.after_prompts
    assert [r.seq for r in v2_records[: cfg.after_reference]][-1] == tenure.reference_last_seq
    (window,) = rc.stores.monitors.windows("support-champion", version=v2)
    assert window.last_seq == v2_records[cfg.after_reference + cfg.window - 1].seq and window.size == cfg.window
    with rc.stores.engine.connect() as conn:
        versions_in_window = conn.execute(
            sa.text(
                "SELECT DISTINCT version FROM records WHERE model = 'tiny-support' AND alias = 'champion' "
                "AND seq > :after AND seq <= :upto"
            ),
            {"after": tenure.reference_last_seq, "upto": window.last_seq},
        ).all()
    assert versions_in_window == [(v2,)]  # once v2 answered, nothing of v1 came under the alias
    monitor_run = rc.stores.monitors.get("support-champion").mlflow_run_id
    charted = sorted(rc.mlflow.get_metric_history(monitor_run, "version"), key=lambda m: m.step)
    assert [int(m.value) for m in charted] == [w["version"] for w in summary["windows"]]  # the UI's per-version view
    from tuneloop.monitors.alerting.alerts import list_alerts

    assert [a["status"] for a in list_alerts(rc, monitor="support-champion")] == ["superseded"]

    # The retrain: one run, every stage recorded, the challenger registered with lineage to the alert.
    retrain = summary["retrain"]
    assert retrain["state"] == "registered", retrain
    with rc.stores.engine.connect() as conn:
        runs = conn.execute(
            sa.text("SELECT state, attempts, alert_id, trigger, version, details FROM retrain_runs")
        ).all()
    assert len(runs) == 1 and runs[0].attempts == 1 and runs[0].alert_id == alert["id"] and runs[0].trigger == "alert"
    details = json.loads(runs[0].details)
    counts = details["data"]["counts"]
    assert counts["new_training_rows"] > 0 and counts["held_out_rows"] > 0 and counts["from_reference"] > 0
    assert counts["from_reference"] + counts["from_approved"] == counts["new_training_rows"]
    unique = (
        counts["champion_rows"]
        + counts["new_training_rows"]
        - counts["duplicates_dropped"]
        - counts["held_out_prompts_dropped"]
        - counts["near_duplicates_dropped"]
        - counts["near_held_out_dropped"]
    )
    assert counts["new_rows_kept"] == unique - counts["champion_rows"]
    assert counts["champion_repeats"] > 1  # more new rows than old: the champion's rows repeat to keep half the set
    assert counts["training_rows"] == unique + (counts["champion_repeats"] - 1) * counts["champion_rows"]

    version = runs[0].version
    mv = rc.mlflow.get_model_version("tiny-support", str(version))
    assert (
        mv.tags["tuneloop.alert.id"] == str(alert["id"]) and mv.tags["tuneloop.alert.run_id"] == alert["mlflow_run_id"]
    )
    assert mv.tags["tuneloop.retrain.id"] == str(retrain["id"])
    aliases = {k: str(v) for k, v in rc.mlflow.get_registered_model("tiny-support").aliases.items()}
    assert aliases["challenger"] == str(version)
    assert len(rc.mlflow.search_model_versions("name = 'tiny-support'")) == 2

    # What the challenger learned from: champion rows + reviewed answers, never unreviewed outputs.
    from tuneloop.monitors.references import stored_data_file

    path, _ = stored_data_file(rc, "tiny-support", version, "train")
    answers = {json.loads(line)["messages"][-1]["content"] for line in path.read_text().splitlines()}
    with rc.stores.engine.connect() as conn:
        reviewed = {r for (r,) in conn.execute(sa.text("SELECT reference FROM feedback WHERE reference IS NOT NULL"))}
        approved = {
            o
            for (o,) in conn.execute(
                sa.text("SELECT r.output FROM records r JOIN feedback f ON f.record_id = r.id WHERE f.rating >= 4")
            )
        }
        german_outputs = {
            o for (o,) in conn.execute(sa.text("SELECT output FROM records WHERE prompt LIKE 'Wo ist%'"))
        } - approved
    champion_file, _ = stored_data_file(rc, "tiny-support", summary["champion"]["version"], "train")
    champion_answers = {json.loads(line)["messages"][-1]["content"] for line in champion_file.read_text().splitlines()}
    new_answers = answers - champion_answers
    assert new_answers & reviewed and new_answers <= reviewed | approved
    # unapproved German outputs never train (a tiny random model may say the same to every prompt, so the
    # line above, which needs new answers and allows only reviewed or approved ones, is the sharp check)
    assert not (answers & german_outputs)

    # Both evaluated on the old task and on the held-out production task; the decision went through gates.
    comparison = summary["comparison"]
    assert set(comparison) == {"champion", "challenger"}
    for who in comparison.values():
        assert set(who["tasks"]) == {"answers", "production-holdout"}
        run = rc.mlflow.get_run(who["eval_run_id"])
        assert run.data.tags["tuneloop.eval.model"] == f"tiny-support:{who['version']}"
        assert "production-holdout/rougeL" in run.data.metrics and "answers/rougeL" in run.data.metrics
    decision = summary["decision"]
    assert decision["action"] in ("promoted", "kept champion")
    per_task = [g["gate"] for g in decision["gates"] if "[task" in g["gate"]]
    assert len(decision["gates"]) == len(cfg.policy) + len(per_task) and {g.rsplit(" ", 1)[1] for g in per_task} == {
        "answers]",
        "production-holdout]",
    }
    assert (decision["action"] == "promoted") == all(g["status"] != "failed" for g in decision["gates"])
    holder = aliases["champion"]
    assert holder == (str(version) if decision["action"] == "promoted" else str(summary["champion"]["version"]))

    # The webhook was down: the loop finished anyway; each delivery attempt is recorded, without the token.
    with rc.stores.engine.connect() as conn:
        hooks = conn.execute(
            sa.text(
                "SELECT n.event, n.state, n.attempts, a.detail FROM notifications n "
                "JOIN delivery_attempts a ON a.notification_id = n.id WHERE n.sink != 'log'"
            )
        ).all()
        logged = conn.execute(sa.text("SELECT event, state FROM notifications WHERE sink = 'log'")).all()
    assert {h.event for h in hooks} == {"alert.opened", "alert.superseded", "challenger.registered"} and all(
        h.state != "delivered" for h in hooks
    )
    assert all("s3cret" not in h.detail for h in hooks)
    for run_id, artifact in (
        (alert["mlflow_run_id"], "alert.json"),
        (mv.tags["tuneloop.training_run_id"], "retrain.json"),
    ):
        run = rc.mlflow.get_run(run_id)
        stored = Path(rc.mlflow.download_artifacts(run_id, artifact)).read_text()
        assert "s3cret" not in stored + json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert sorted(logged) == [
        ("alert.opened", "delivered"),
        ("alert.superseded", "delivered"),  # v2's first judged window closed v1's incident
        ("challenger.registered", "delivered"),
    ]

    # When the webhook comes back, the retries deliver what waited (each attempt kept).
    received = _receive_webhooks(hook_port)
    from tuneloop.monitors.alerting.notify import deliver_pending

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(received) < 3:
        deliver_pending(rc.stores, timeout_s=1, max_attempts=20, base_delay_s=0.2)
        time.sleep(0.2)
    assert sorted(body["event"] for body in received) == ["alert.opened", "alert.superseded", "challenger.registered"]
    assert received[0]["path"] == "/hook?token=s3cret"
    with rc.stores.engine.connect() as conn:
        states = conn.execute(sa.text("SELECT state, attempts FROM notifications WHERE sink != 'log'")).all()
    assert all(s.state == "delivered" and s.attempts >= 2 for s in states), states


def _receive_webhooks(port: int) -> list[dict]:
    """A real HTTP server on `port` that keeps every JSON body POSTed to it (a daemon thread)."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            received.append({**body, "path": self.path})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return received


def test_kill_9_of_the_active_scheduler_mid_training_hands_over_to_the_standby(
    loop_env, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import subprocess
    from dataclasses import replace

    from tuneloop.demo.run import Demo
    from tuneloop.pipelines.loop.scheduler import LEASE

    rc = loop_env
    monkeypatch.setenv("TUNELOOP_SCHEDULER__LEASE_SECONDS", "3")
    monkeypatch.setenv("TUNELOOP_SCHEDULER__TICK_SECONDS", "0.5")
    cfg = replace(tiny_config(tiny_model), retrain_steps=150, checkpoint_every=10)
    demo = Demo(rc, cfg, lambda _s: None)
    champion = demo.champion()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    send = ingest_directly(rc)
    send(demo.traffic("reference", start))
    demo.declare(start, start + timedelta(seconds=cfg.reference_windows * cfg.window))
    send(demo.traffic("calm", start + timedelta(hours=1)))
    send(demo.traffic("drift", start + timedelta(hours=2)))

    exe = Path(sys.executable).with_name("tuneloop")
    schedulers = [
        subprocess.Popen(
            [str(exe), "scheduler", "run", "--port", str(free_port())],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:

        def retrain_row():
            with rc.stores.engine.connect() as conn:
                return conn.execute(
                    sa.text("SELECT id, state, attempts, training_run_id, version FROM retrain_runs")
                ).first()

        row = eventually(
            lambda: (
                (r := retrain_row()) is not None
                and r.state == "training"
                and r.training_run_id
                and list((Path(rc.settings.home) / "runs" / r.training_run_id).glob("checkpoint-*"))
                and r
            ),
            "a checkpoint of the retrain's training",
            240,
        )
        active_pid = int(rc.stores.leases.holder(LEASE).owner.rsplit(":", 1)[1])
        active = next(p for p in schedulers if p.pid == active_pid)
        standby = next(p for p in schedulers if p.pid != active_pid)
        os.kill(active.pid, signal.SIGKILL)  # the scheduler only: its worker must notice and stop by itself
        active.wait(10)

        done = eventually(
            lambda: (r := retrain_row()).state in ("registered", "failed") and r, "the retrain ended", 300
        )
        assert done.state == "registered", (
            rc.stores.engine.connect().execute(sa.text("SELECT error FROM retrain_runs")).scalar()
        )
        assert int(rc.stores.leases.holder(LEASE).owner.rsplit(":", 1)[1]) == standby.pid
    finally:
        for p in schedulers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)

    assert done.attempts == 2 and done.training_run_id == row.training_run_id  # resumed, not restarted
    versions = rc.mlflow.search_model_versions("name = 'tiny-support'")
    assert sorted(int(v.version) for v in versions) == [int(champion["version"]), done.version]
    mv = rc.mlflow.get_model_version("tiny-support", str(done.version))
    assert mv.tags["tuneloop.training_run_id"] == row.training_run_id
    losses = rc.mlflow.get_metric_history(row.training_run_id, "train/loss")
    assert max(m.step for m in losses) == 150
    with rc.stores.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alerts")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM retrain_runs")).scalar() == 1
        events = conn.execute(
            sa.text("SELECT event, count(*) FROM notifications WHERE sink = 'log' GROUP BY event")
        ).all()
        windows = conn.execute(sa.text("SELECT count(*) FROM monitor_windows")).scalar()
    assert sorted(events) == [("alert.opened", 1), ("challenger.registered", 1)]
    assert windows == cfg.calm_windows + cfg.drift_windows  # every window judged once, none twice


def test_retrain_now_from_the_cli_follows_every_stage(loop_env, tiny_model: Path) -> None:
    from tests.conftest import run_cli
    from tuneloop.demo.run import Demo

    rc = loop_env
    demo = Demo(rc, tiny_config(tiny_model), lambda _s: None)
    demo.champion()
    # The retrain starts from the champion's stored recipe, here in the form a3a2416 wrote (every section).
    champion = rc.mlflow.get_model_version_by_alias("tiny-support", "champion")
    rewrite_recipe_as_a3a2416(rc, champion.tags.get(Tag.TRAINING_RUN_ID) or champion.run_id)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    send = ingest_directly(rc)
    send(demo.traffic("reference", start))
    demo.declare(start, start + timedelta(seconds=demo.cfg.reference_windows * demo.cfg.window))
    send(demo.traffic("drift", start + timedelta(hours=2)))  # reviewed answers exist; no window judged yet

    env = {k: v for k, v in os.environ.items() if k.startswith(("TUNELOOP_", "HF_"))}
    result = run_cli("retrain", "support-loop", env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    states = [line.rsplit(": ", 1)[1] for line in result.stderr.splitlines() if line.startswith("==> retrain 1:")]
    assert states[0] == "queued" and states[-1] == "registered" and "training" in states and "evaluating" in states
    assert "retrain 1 of tiny-support (manual): registered, challenger v2" in result.stdout
    page = rc.mlflow.get_model_version("tiny-support", "2").description  # what a release manager reads
    assert "Why: retrain 1 of tiny-support:1 (manual)." in page and "Trained by run `" in page
    assert "| metric | this version |" in page and "Last gate verdict" in page
    holder = str(rc.mlflow.get_model_version_by_alias("tiny-support", "champion").version)
    other = "1" if holder == "2" else "2"  # the page of the version not holding `champion` compares with it
    assert f"| champion v{holder} | difference |" in rc.mlflow.get_model_version("tiny-support", other).description
    listed = json.loads(run_cli("retrain", "list", "--json", env=env).stdout)
    assert [(r["trigger"], r["alert_id"], r["state"]) for r in listed] == [("manual", None, "registered")]
