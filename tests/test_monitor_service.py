"""Declared monitors: add, check the latest window of stored records, log it to MLflow, show status."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests import drift_data
from tests.conftest import run_cli
from tests.registry_helpers import make_versions


def _store(rc, rows: list[dict]) -> None:  # type: ignore[no-untyped-def]
    from monitors.records import ModelResolver, parse_records, store

    items = [{"model": "support:1", "prompt": r["prompt"], "output": r["output"], "prediction": r["prediction"],
              "feedback": {"label": r["label"]}} for r in rows]
    store(rc.engine, parse_records(items, 100_000), ModelResolver(rc.mlflow))


def test_add_check_status_and_mlflow_report(sqlite_rc, tmp_path: Path) -> None:
    make_versions(sqlite_rc, "support", [{}])
    rng = random.Random(3)
    drift_data.write(tmp_path / "reference.jsonl", [drift_data.record(rng) for _ in range(3000)])
    spec = tmp_path / "monitor.yaml"
    spec.write_text("name: support-mon\nmodel: support:1\nwindow: {size: 500}\nmin_size: 200\nreference: {file: reference.jsonl}\n")
    env = {"TUNELOOP_HOME": str(sqlite_rc.settings.home), "TUNELOOP_CACHE_DIR": str(tmp_path / "cache")}

    assert run_cli("monitor", "add", str(spec), env=env).returncode == 0
    assert list((tmp_path / "cache" / "monitor-references").glob("*.pickle"))  # reference statistics cached once
    again = run_cli("monitor", "add", str(spec), env=env)
    assert again.returncode == 1 and "exists" in again.stderr

    _store(sqlite_rc, drift_data.windows(1, 150, seed=1))
    thin = json.loads(run_cli("monitor", "check", "support-mon", "--json", env=env).stdout)
    assert thin["status"] == "not enough data" and thin["size"] == 150

    _store(sqlite_rc, drift_data.windows(1, 500, seed=2))
    calm = json.loads(run_cli("monitor", "check", "support-mon", "--json", env=env).stdout)
    assert calm["status"] == "ok" and calm["size"] == 500 and calm["drifted_checks"] == []

    _store(sqlite_rc, drift_data.windows(1, 500, seed=3, kind="refusals", share=0.2))
    alarm = json.loads(run_cli("monitor", "check", "support-mon", "--json", env=env).stdout)
    assert alarm["status"] == "drift" and "output.refusal" in alarm["drifted_checks"] and alarm["step"] == 2

    states = json.loads(run_cli("monitor", "status", "--json", env=env).stdout)
    assert [(s["monitor"], s["state"]) for s in states] == [("support-mon", "drift")]
    run_id = alarm["run_id"]
    assert [m.value for m in sorted(sqlite_rc.mlflow.get_metric_history(run_id, "drift"), key=lambda m: m.step)] == [0.0, 0.0, 1.0]
    artifacts = {a.path for a in sqlite_rc.mlflow.list_artifacts(run_id, "reports")} | {a.path for a in sqlite_rc.mlflow.list_artifacts(run_id)}
    assert {"reports/window-00002.html", "scores.png"} <= artifacts
    report = Path(sqlite_rc.mlflow.download_artifacts(run_id, "reports/window-00002.html")).read_text()
    assert "output.refusal" in report and "DRIFT" in report

    missing = run_cli("monitor", "check", "nope", env=env)
    assert missing.returncode == 1 and "no monitor `nope`" in missing.stderr

    # The cached statistics belong to the file's digest: an edited reference is refused, not silently used.
    for cached in (tmp_path / "cache" / "monitor-references").glob("*.pickle"):
        cached.unlink()
    with open(tmp_path / "reference.jsonl", "a") as f:
        f.write(json.dumps(drift_data.record(rng)) + "\n")
    changed = run_cli("monitor", "check", "support-mon", env=env)
    assert changed.returncode == 1 and "changed since the monitor was added" in changed.stderr
