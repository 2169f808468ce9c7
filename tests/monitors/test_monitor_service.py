"""Declared monitors: add, check the latest window of stored records, log it to MLflow, show status."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.registry_helpers import make_versions
from tuneloop.demo import traffic as drift_data


def _store(rc, rows: list[dict]) -> None:
    from tuneloop.monitors.ingestion.records import parse_records, store

    items = [
        {
            "model": "support:1",
            "prompt": r["prompt"],
            "output": r["output"],
            "prediction": r["prediction"],
            "feedback": {"label": r["label"]},
        }
        for r in rows
    ]
    store(rc.stores, parse_records(items, 100_000), rc.models)


def test_add_check_status_and_mlflow_report(sqlite_rc, tmp_path: Path) -> None:
    make_versions(sqlite_rc, "support", [{}])
    rng = random.Random(3)
    drift_data.write(tmp_path / "reference.jsonl", [drift_data.record(rng) for _ in range(3000)])
    spec = tmp_path / "monitor.yaml"
    spec.write_text(
        "name: support-mon\nmodel: support:1\nwindow: {size: 500}\nmin_size: 200\nreference: {file: reference.jsonl}\n"
    )
    env = {"TUNELOOP_HOME": str(sqlite_rc.settings.home), "TUNELOOP_CACHE_DIR": str(tmp_path / "cache")}

    assert run_cli("monitor", "add", str(spec), env=env).returncode == 0
    assert list((tmp_path / "cache" / "monitor-references").glob("*.pickle"))  # reference statistics cached once
    again = run_cli("monitor", "add", str(spec), env=env)
    assert again.returncode == 1 and "exists" in again.stderr

    # `monitor check` judges each window once it is complete: 150 records are part of the first window
    _store(sqlite_rc, drift_data.windows(1, 150, seed=1))
    thin = json.loads(run_cli("monitor", "check", "support-mon", "--json", env=env).stdout)
    assert thin["judged"] == [] and thin["latest"] is None
    assert thin["notes"] == ["nothing new was judged: 150 of the next window's 500 records have arrived"]

    _store(sqlite_rc, drift_data.windows(1, 350, seed=2))
    calm = json.loads(run_cli("monitor", "check", "support-mon", "--json", env=env).stdout)
    assert [(w["status"], w["size"], w["drifted_checks"], w["step"]) for w in calm["judged"]] == [("ok", 500, [], 0)]

    _store(sqlite_rc, drift_data.windows(1, 500, seed=3, kind="refusals", share=0.2))
    checked = run_cli("monitor", "check", "support-mon", env=env)
    assert "support-mon window 1 (records " in checked.stdout and ": drift (500 records" in checked.stdout, (
        checked.stdout
    )
    again = json.loads(run_cli("monitor", "check", "support-mon", "--json", env=env).stdout)
    assert again["judged"] == [] and again["latest"]["status"] == "drift"  # nothing new: the latest window's state
    alarm = again["latest"]
    assert "output.refusal" in alarm["drifted_checks"] and alarm["size"] == 500

    states = json.loads(run_cli("monitor", "status", "--json", env=env).stdout)
    assert [(s["monitor"], s["state"]) for s in states] == [("support-mon", "drift")]
    run_id = calm["judged"][0]["run_id"]
    assert [m.value for m in sorted(sqlite_rc.mlflow.get_metric_history(run_id, "drift"), key=lambda m: m.step)] == [
        0.0,
        1.0,
    ]
    artifacts = {a.path for a in sqlite_rc.mlflow.list_artifacts(run_id, "reports")} | {
        a.path for a in sqlite_rc.mlflow.list_artifacts(run_id)
    }
    assert {"reports/window-00001.html", "scores.png"} <= artifacts
    report = Path(sqlite_rc.mlflow.download_artifacts(run_id, "reports/window-00001.html")).read_text()
    assert "output.refusal" in report and "DRIFT" in report
    # the drifted window, and only it, has an Evidently report: tuneloop's verdict on top, Evidently's summaries below
    assert "reports/window-00001-evidently.html" in artifacts and "reports/window-00000-evidently.html" not in artifacts
    evidently = Path(sqlite_rc.mlflow.download_artifacts(run_id, "reports/window-00001-evidently.html")).read_text()
    start, end = evidently.index("<section id=tuneloop-verdict"), evidently.index("</section>")
    banner, rest = evidently[start:end], evidently[:start] + evidently[end:]
    assert "The verdicts that count are tuneloop's" in banner and "output.refusal" in banner and "DRIFT" in banner
    assert "output length" in rest and "prompt words" in rest  # Evidently's text descriptors of both columns
    # `monitor report` logs one for any window on demand; an unknown window is refused naming the range
    asked = json.loads(run_cli("monitor", "report", "support-mon", "--window", "0", "--json", env=env).stdout)
    assert (asked["window"], asked["status"], asked["size"], asked["artifact"]) == (
        0,
        "ok",
        500,
        "reports/window-00000-evidently.html",
    )
    calm_page = Path(sqlite_rc.mlflow.download_artifacts(run_id, asked["artifact"])).read_text()
    assert (
        "status <b>ok</b>" in calm_page[calm_page.index("<section id=tuneloop-verdict") : calm_page.index("</section>")]
    )
    beyond = run_cli("monitor", "report", "support-mon", "--window", "7", env=env)
    assert beyond.returncode == 1 and "no window 7: its windows are 0 to 1" in beyond.stderr

    missing = run_cli("monitor", "check", "nope", env=env)
    assert missing.returncode == 1 and "no monitor `nope`" in missing.stderr

    # The reference is pinned in the monitor's run: editing the file changes nothing until `add --replace`,
    # and a lost cache is rebuilt from the run's artifact.
    pinned = {a.path for a in sqlite_rc.mlflow.list_artifacts(run_id, "reference")}
    assert len(pinned) == 1
    for cached in (tmp_path / "cache" / "monitor-references").glob("*.pickle"):
        cached.unlink()
    with open(tmp_path / "reference.jsonl", "w") as f:
        f.write(json.dumps(drift_data.record(rng)) + "\n")
    # `--latest` re-judges the newest 500 records (window 1 again): logged as step 2, no alert evidence
    rebuilt = json.loads(run_cli("monitor", "check", "support-mon", "--latest", "--json", env=env).stdout)["judged"][0]
    assert rebuilt["status"] == "drift" and rebuilt["drifted_checks"] == alarm["drifted_checks"]
    assert rebuilt["rejudged"] is True and rebuilt["step"] == 2
    too_small = run_cli("monitor", "add", str(spec), "--replace", env=env)
    assert too_small.returncode == 1 and "holds 1 records; at least 100" in too_small.stderr
    assert {a.path for a in sqlite_rc.mlflow.list_artifacts(run_id, "reference")} == pinned  # the old pin is intact


def version_with_eval_data(rc, tiny_model: Path, tmp_path: Path, rows: list[dict]) -> int:
    """A version of `trained` made by `tuneloop train` (2 steps on the tiny model), which stores its eval data."""
    from tuneloop.pipelines.training.recipes import parse_recipe
    from tuneloop.pipelines.training.run import train
    from tuneloop.registry.base_models import import_base

    def chat(name: str, part: list[dict]) -> Path:
        return drift_data.write(
            tmp_path / name,
            [
                {
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": r["prompt"]},
                        {"role": "assistant", "content": r["output"]},
                    ]
                }
                for r in part
            ],
        )

    if not rc.mlflow.search_registered_models(filter_string="name = 'tiny'"):
        import_base(rc, "tiny", str(tiny_model))
    recipe = parse_recipe(
        {
            "name": "trained",
            "method": "lora",
            "base": "tiny:1",
            "data": {
                "train": str(chat("train.jsonl", rows[:16])),
                "eval": str(chat("eval.jsonl", rows)),
                "max_length": 512,
            },
            "training": {"max_steps": 2, "batch_size": 4, "checkpoint_every": 100, "eval_every": None},
        }
    )
    return int(train(recipe, rc).version or 0)


def _env(rc, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment for the stores `rc` uses (SQLite or PostgreSQL)."""
    env = {"TUNELOOP_HOME": str(rc.settings.home), "TUNELOOP_CACHE_DIR": str(tmp_path / "cache")}
    if rc.settings.stores.database_url:
        env["TUNELOOP_STORES__MLFLOW_URI"] = rc.settings.stores.mlflow_uri
        env["TUNELOOP_STORES__DATABASE_URL"] = rc.settings.stores.database_url
    return env


@pytest.mark.acceptance  # trains a tiny model and runs five CLI processes, on both stores: ~75 s
def test_reference_from_the_versions_eval_data_and_from_a_pinned_production_window(
    rc, tiny_model: Path, tmp_path: Path
) -> None:
    """On SQLite and PostgreSQL: time windows and pinned windows compare real timestamps."""
    from tuneloop.monitors.ingestion.records import parse_records, store

    rng = random.Random(5)
    version = version_with_eval_data(rc, tiny_model, tmp_path, [drift_data.record(rng) for _ in range(400)])
    env = _env(rc, tmp_path)
    spec = tmp_path / "eval-ref.yaml"
    spec.write_text(
        f"name: from-eval\nmodel: trained:{version}\nwindow: {{size: 300}}\nreference: {{training_data: eval}}\n"
    )
    added = run_cli("monitor", "add", str(spec), "--json", env=env)
    assert added.returncode == 0, added.stderr
    info = json.loads(added.stdout)
    assert info["reference_records"] == 400 and f"`eval` data of trained:{version}" in info["reference"]
    make_versions(rc, "imported", [{}])  # registered without a tuneloop training run
    no_data = tmp_path / "no-data.yaml"
    no_data.write_text("name: no-data\nmodel: imported:1\nreference: {training_data: eval}\n")
    refused = run_cli("monitor", "add", str(no_data), env=env)
    assert refused.returncode == 1 and "imported:1 has no stored `eval` data" in refused.stderr

    # Last week's production records become the reference; the check judges the last hour only.
    now = datetime.now(UTC)
    week = [
        {
            "model": f"trained:{version}",
            "prompt": r["prompt"],
            "output": r["output"],
            "timestamp": (now - timedelta(days=3, minutes=i)).isoformat(),
        }
        for i, r in enumerate(drift_data.windows(1, 600, seed=6))
    ]
    hour = [
        {
            "model": f"trained:{version}",
            "prompt": r["prompt"],
            "output": r["output"],
            "timestamp": (now - timedelta(minutes=i % 50)).isoformat(),
        }
        for i, r in enumerate(drift_data.windows(1, 300, seed=7, kind="refusals", share=0.2))
    ]
    store(rc.stores, parse_records(week + hour, 100_000), rc.models)
    start, end = (
        (now - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    pinned = tmp_path / "window-ref.yaml"
    pinned.write_text(
        f"name: from-window\nmodel: trained:{version}\nwindow: {{kind: time, duration: 1h}}\n"
        f"min_size: 100\nreference: {{window: {{start: '{start}', end: '{end}'}}}}\n"
    )
    added = json.loads(run_cli("monitor", "add", str(pinned), "--json", env=env).stdout)
    assert added["reference_records"] == 600
    result = json.loads(run_cli("monitor", "check", "from-window", "--latest", "--json", env=env).stdout)["judged"][0]
    assert result["size"] == 300 and result["status"] == "drift" and "output.refusal" in result["drifted_checks"]
