"""Eval suites on a tiny model: results in MLflow and on the version, comparison, gates, human review."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from tests.conftest import chat_file, run_cli

INTENTS = [  # prompt words -> label; every word is in the tiny tokenizer's vocabulary
    ("refund order please", "refund"),
    ("password reset please", "password"),
    ("shipping order", "shipping"),
    ("help account", "account"),
    ("refund the order", "refund"),
    ("reset the password", "password"),
    ("order shipping thanks", "shipping"),
    ("account help please", "account"),
]


def _suite(tmp_path: Path, data: Path, metrics: list[str], max_new_tokens: int = 1) -> Path:
    import yaml

    path = tmp_path / "suite.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "intents",
                "tasks": [
                    {
                        "name": "intent",
                        "data": str(data),
                        "metrics": metrics,
                        "generation": {"max_new_tokens": max_new_tokens},
                    }
                ],
            }
        )
    )
    return path


def _train(rc, data: Path, seed: int, alias: str | None = None):
    from tuneloop.pipelines.training.recipes import parse_recipe
    from tuneloop.pipelines.training.run import train

    recipe = parse_recipe(
        {
            "name": "tiny-intents",
            "method": "lora",
            "base": "tiny:1",
            "data": {"train": str(data), "max_length": 64},
            "training": {
                "max_steps": 30,
                "batch_size": 8,
                "learning_rate": 0.02,
                "scheduler": "constant",
                "checkpoint_every": 100,
                "seed": seed,
            },
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        }
    )
    return train(recipe, rc, alias=alias)


def _shuffled(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every label moved to another row's prompt, so no row keeps a correct label."""
    labels = [a for _, a in pairs]
    rotated = labels[2:] + labels[:2]
    assert all(x != y for x, y in zip(labels, rotated))
    return [(q, a) for (q, _), a in zip(pairs, rotated)]


@pytest.fixture
def intents_registry(sqlite_rc, tiny_model: Path, tmp_path: Path):
    from tuneloop.registry.base_models import import_base

    import_base(sqlite_rc, "tiny", str(tiny_model))
    return sqlite_rc, chat_file(tmp_path / "intents.jsonl", INTENTS)


def test_suite_run_logs_to_mlflow_and_attaches_results_to_the_version(intents_registry, tmp_path: Path) -> None:
    from tuneloop.names import EvalTag
    from tuneloop.pipelines.evaluation.runner import evaluate, read_table
    from tuneloop.pipelines.evaluation.suites import load_suite
    from tuneloop.registry.gates import metrics_of

    rc, data = intents_registry
    trained = _train(rc, data, seed=1)
    suite = load_suite(
        _suite(tmp_path, data, ["accuracy", "f1", "exact_match", "perplexity", "latency_ms", "rouge", "chrf"])
    )
    result = evaluate(rc, suite, f"{trained.model}:{trained.version}", progress=False)

    assert result.metrics["accuracy"] == 1.0, result.tasks[0].examples  # it learned the 8 rows
    run = rc.mlflow.get_run(result.run_id)
    assert run.data.tags[EvalTag.MODEL] == f"tiny-intents:{trained.version}"
    assert {
        "intent/accuracy",
        "intent/f1_macro",
        "intent/f1_micro",
        "intent/exact_match",
        "intent/perplexity",
        "intent/latency_ms",
        "accuracy",
        "perplexity",
    } <= set(run.data.metrics)
    table = read_table(rc, result.run_id, "intent")
    assert list(table["reference"]) == [a for _, a in INTENTS]
    assert list(table["prediction"]) == [a for _, a in INTENTS]
    assert {"prompt", "user_prompt", "accuracy", "nll", "scored_tokens", "latency_ms", "rougeL"} <= set(table.columns)
    assert run.data.params["intent.chrf_signature"].startswith("nrefs:1|")
    assert result.metrics["rougeL"] == 1.0 and result.metrics["chrf"] == pytest.approx(100.0)

    mv = rc.mlflow.get_model_version("tiny-intents", trained.version)
    assert metrics_of(mv)["accuracy"] == 1.0 and metrics_of(mv)["perplexity"] == pytest.approx(
        result.metrics["perplexity"]
    )
    assert mv.tags[EvalTag.RUN_ID] == result.run_id
    assert result.metrics["perplexity"] < 2.0  # the learned labels are near certain

    base = evaluate(rc, suite, "tiny:1", progress=False)  # a base version evaluates the same way
    assert base.metrics["accuracy"] < 0.5 and base.metrics["perplexity"] > 5


@pytest.mark.acceptance
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_adapter_trained_on_shuffled_labels_is_refused_by_a_gate_relative_to_the_champion(
    intents_registry, tmp_path: Path, seed: int
) -> None:
    from tuneloop.errors import GateFailed
    from tuneloop.pipelines.evaluation.compare import compare
    from tuneloop.pipelines.evaluation.runner import evaluate
    from tuneloop.pipelines.evaluation.suites import load_suite
    from tuneloop.registry.gates import set_policy
    from tuneloop.registry.promotion import history, promote

    rc, data = intents_registry
    suite = load_suite(_suite(tmp_path, data, ["accuracy", "f1"]))
    champion = _train(rc, data, seed=seed, alias="champion")
    set_policy(rc, "tiny-intents", ["accuracy >= champion - 0.01", "f1_macro >= champion - 0.05"])
    evaluate(rc, suite, "tiny-intents@champion", progress=False)

    corrupted = _train(rc, chat_file(tmp_path / "shuffled.jsonl", _shuffled(INTENTS)), seed=seed)
    evaluate(rc, suite, f"tiny-intents:{corrupted.version}", progress=False)
    with pytest.raises(GateFailed) as refused:
        promote(rc, "tiny-intents", corrupted.version, "champion")
    assert "accuracy" in refused.value.message
    assert rc.mlflow.get_model_version_by_alias("tiny-intents", "champion").version == champion.version
    assert [m.to_version for m in history(rc, "tiny-intents", "champion")[0]] == [
        champion.version
    ]  # refusal moved nothing

    diff = {
        r.metric: r
        for r in compare(rc, "tiny-intents@champion", f"tiny-intents:{corrupted.version}", suite="intents").rows
    }
    assert diff["accuracy"].delta < -0.5 and diff["accuracy"].significant and diff["accuracy"].better == "a"

    retrained = _train(rc, data, seed=seed + 10)  # trained on the right labels: passes the same gates
    evaluate(rc, suite, f"tiny-intents:{retrained.version}", progress=False)
    moved = promote(rc, "tiny-intents", retrained.version, "champion")
    assert [c.status for c in moved.gates] == ["passed", "passed"]


def test_eval_compare_and_human_review_through_the_cli(intents_registry, tmp_path: Path) -> None:
    from scipy.stats import binomtest  # noqa: F401  (scipy ships with scikit-learn)

    from tuneloop.pipelines.data import formats as data_io
    from tuneloop.pipelines.training.recipes import parse_recipe
    from tuneloop.registry.gates import metrics_of

    rc, data = intents_registry
    env = {"TUNELOOP_HOME": str(rc.settings.home)}
    good = _train(rc, data, seed=1)
    bad = _train(rc, chat_file(tmp_path / "shuffled.jsonl", _shuffled(INTENTS)), seed=1)
    suite = _suite(tmp_path, data, ["accuracy", "exact_match", "latency_ms"])
    runs = {}
    for version in (good.version, bad.version):
        result = run_cli("eval", str(suite), "--model", f"tiny-intents:{version}", "--json", env=env)
        assert result.returncode == 0, result.stderr
        runs[version] = json.loads(result.stdout)["run_id"]
    shown = run_cli("eval", str(suite), "--model", f"tiny-intents:{good.version}", env=env)  # no terminal here
    assert shown.returncode == 0 and re.search(r"==> \S+: generating \d+/\d+", shown.stderr), shown.stderr

    compared = run_cli("eval", "compare", runs[good.version], runs[bad.version], "--json", env=env)
    assert compared.returncode == 0, compared.stderr
    rows = {r["metric"]: r for r in json.loads(compared.stdout)["metrics"]}
    assert rows["accuracy"]["a"] == 1.0 and rows["accuracy"]["b"] < 0.5 and rows["accuracy"]["significant"]
    assert rows["latency_ms"]["note"] == "per-batch timing, not tested" and not rows["latency_ms"]["significant"]
    shown_compare = run_cli("eval", "compare", runs[good.version], runs[bad.version], env=env).stdout
    assert "A better" in shown_compare and "per-batch timing, not tested" in shown_compare

    sheet = tmp_path / "review" / "sheet"
    exported = run_cli(
        "eval",
        "human",
        "export",
        f"tiny-intents:{good.version}",
        f"tiny-intents:{bad.version}",
        "--task",
        "intent",
        "--out",
        str(sheet),
        "--seed",
        "3",
        "--json",
        env=env,
    )
    assert exported.returncode == 0, exported.stderr
    with open(sheet.with_suffix(".csv"), newline="") as f:
        rows_out = list(csv.DictReader(f))
    assert list(rows_out[0]) == ["id", "prompt", "left", "right", "rating", "comment"]
    assert "tiny-intents" not in sheet.with_suffix(".csv").read_text()  # blinded
    key = json.loads(sheet.with_suffix(".key.json").read_text())
    sides = [key["rows"][r["id"]]["left"] for r in rows_out]
    assert {"a", "b"} == set(sides)  # randomised, not all on one side
    # Raters prefer the correct labels (A, the good version) on every row but the last, a tie.
    for row, left in zip(rows_out, sides):
        row["rating"] = "left" if left == "a" else "right"
    rows_out[-1]["rating"] = "tie"
    with open(sheet.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows_out[0]))
        writer.writeheader()
        writer.writerows(rows_out)

    pairs = tmp_path / "pairs.jsonl"
    imported = run_cli(
        "eval", "human", "import", str(sheet.with_suffix(".csv")), "--pairs", str(pairs), "--json", env=env
    )
    assert imported.returncode == 0, imported.stderr
    review = json.loads(imported.stdout)
    assert (review["wins"], review["losses"], review["ties"]) == (0, 7, 1)
    assert review["win_rate"] == pytest.approx(0.5 / 8)
    from tuneloop.monitors.metrics.stats import wilson_interval

    assert (review["low"], review["high"]) == pytest.approx((wilson_interval(0.5, 8).low, wilson_interval(0.5, 8).high))
    assert metrics_of(rc.mlflow.get_model_version("tiny-intents", bad.version))["win_rate"] == pytest.approx(0.5 / 8)
    assert rc.mlflow.get_run(review["review_id"]).data.metrics["win_rate"] == pytest.approx(0.5 / 8)

    preference = data_io.load(pairs)  # the pairs are valid DPO data
    assert preference.format == "preference" and len(preference) == review["pairs_written"] == 7
    assert [r["chosen"][0]["content"] for r in preference.rows] == [a for _, a in INTENTS[:7]]
    parse_recipe({"name": "x", "method": "dpo", "base": "tiny:1", "data": {"train": str(pairs)}})

    bad_ratings = tmp_path / "review" / "sheet.jsonl"
    lines = [json.loads(x) for x in bad_ratings.read_text().splitlines()]
    lines[1]["rating"] = "maybe"
    bad_ratings.write_text("".join(json.dumps(x) + "\n" for x in lines))
    refused = run_cli("eval", "human", "import", str(bad_ratings), env=env)
    assert refused.returncode == 1 and f"{bad_ratings}:2: rating `maybe`" in refused.stderr


def test_bad_suites_fail_before_any_model_loads(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "suite.yaml"
    env = {"TUNELOOP_HOME": str(tmp_path / "home")}
    path.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "extra": 1,
                "tasks": [
                    {
                        "name": "t",
                        "data": "missing.jsonl",
                        "metrics": ["rouge", "meteor"],
                        "prompt_template": "no field",
                    }
                ],
            }
        )
    )
    result = run_cli("eval", str(path), "--model", "nothing:1", env=env)
    assert result.returncode == 2
    for expected in (
        "`extra`: unknown key",
        "`tasks.0.metrics`: unknown metric(s) meteor",
        "`tasks.0.prompt_template`: must contain `{prompt}`",
    ):
        assert expected in result.stderr, result.stderr

    task = {"name": "t", "data": "missing.jsonl", "metrics": ["bleu"]}
    path.write_text(yaml.safe_dump({"name": "s", "tasks": [task, task]}))
    result = run_cli("eval", str(path), "--model", "nothing:1", env=env)
    assert result.returncode == 2 and "task names must be unique; repeated: t" in result.stderr

    path.write_text(yaml.safe_dump({"name": "s", "tasks": [task]}))
    result = run_cli("eval", str(path), "--model", "nothing:1", env=env)
    assert result.returncode == 2 and f"`tasks.0.data`: `{tmp_path / 'missing.jsonl'}` does not exist" in result.stderr
