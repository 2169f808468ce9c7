"""What a new user trips over, following the README on the shipped examples (issue 15): the monitoring
section on the shipped files, one record schema, error texts that point the right way, one way to name
a version, no promotion without evidence, output a person can read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli

EXAMPLES = REPO / "examples"


def _home(tmp_path: Path) -> dict[str, str]:
    return {"TUNELOOP_HOME": str(tmp_path / "home"), "TUNELOOP_CACHE_DIR": str(tmp_path / "cache")}


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _support_adapter(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> dict[str, str]:
    """The README's `support-qlora` registered (a tiny adapter stands in for the trained one)."""
    from tuneloop.registry.adapters import register_adapter
    from tuneloop.registry.base_models import import_base
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings
    from tuneloop.store.engine import dispose_engines

    env = _home(tmp_path)
    rc = RegistryClient(Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache"))
    base, _ = import_base(rc, "smollm2-135m-instruct", str(tiny_model))
    register_adapter(rc, "support-qlora", tiny_adapter, base_name=base.name, base_version=base.version, method="lora")
    dispose_engines()
    return env


def test_the_readme_monitoring_section_runs_on_the_shipped_files(
    tmp_path: Path, tiny_model: Path, tiny_adapter: Path
) -> None:
    env = _support_adapter(tmp_path, tiny_model, tiny_adapter)
    monitor, rule = str(EXAMPLES / "monitors/support.yaml"), str(EXAMPLES / "alerts/support-drift.yaml")
    records = str(EXAMPLES / "data/support_records.jsonl")

    early = run_cli("monitor", "add", monitor, env=env)  # the alias has no holder yet: said as such, with the fix
    assert early.returncode == 1
    assert "`support-qlora@champion` has no holder" in early.stderr and "unknown model" not in early.stderr
    assert "tuneloop models promote support-qlora:VERSION --alias champion" in early.stderr

    _ok(run_cli("models", "promote", "support-qlora:1", "--alias", "champion", env=env))  # NAME:VERSION, one argument
    added = json.loads(_ok(run_cli("monitor", "add", monitor, "--json", env=env)).stdout)
    assert added["reference_records"] == 300
    added_rule = _ok(run_cli("alerts", "add", rule, env=env)).stdout
    assert "fires when any check drifted in 3 judged window(s) in a row" in added_rule
    loop = _ok(run_cli("loop", "add", str(EXAMPLES / "loops/support.yaml"), env=env)).stdout
    assert "on incidents of `support-drift` and cron `0 3 1 */3 *` (UTC)" in loop
    ingested = json.loads(_ok(run_cli("monitor", "ingest", records, "--json", env=env)).stdout)
    assert ingested["stored"] == 1500
    checked = _ok(
        run_cli("monitor", "check", "support-champion", env=env)
    )  # judges the six windows, as the backtest below
    assert [
        line.split(":")[1].split()[0]
        for line in checked.stdout.splitlines()
        if line.startswith("support-champion window")
    ] == ["ok", "ok", "ok", "drift", "drift", "drift"], checked.stdout
    assert "alert 1 (support-drift) opened" in checked.stdout
    assert "rule `support-drift`: an incident is open since window 5" in checked.stdout  # where it stands, in words
    latest = _ok(run_cli("monitor", "check", "support-champion", "--latest", env=env))
    assert "drift (re-judged: --latest) (250 records" in latest.stdout  # the newest 250 records hold German tickets

    # A monitor on an alias with no records of its own says where this model's records are.
    _ok(run_cli("models", "promote", "support-qlora@champion", "--alias", "challenger", env=env))
    shadow = tmp_path / "challenger.yaml"
    spec = yaml.safe_load(Path(monitor).read_text())
    shadow.write_text(
        yaml.safe_dump(
            {
                **spec,
                "name": "support-challenger",
                "model": "support-qlora@challenger",
                "reference": {"file": str(EXAMPLES / "data/support_reference.jsonl")},
            }
        )
    )
    _ok(run_cli("monitor", "add", str(shadow), env=env))
    empty = json.loads(_ok(run_cli("monitor", "check", "support-challenger", "--json", env=env)).stdout)
    assert empty["judged"] == [] and empty["latest"] is None
    assert any("1,500 under alias `champion` (v1)" in note for note in empty["notes"]), empty["notes"]

    # The backtest of the same shipped files: the README's command, the same rule.
    replay = _ok(run_cli("monitor", "backtest", "--monitor", monitor, "--current", records, "--alert", rule, env=env))
    assert "3 of 6 judged windows drifted" in replay.stdout
    assert "fired at window 5, after drift from window 3 on; still open at the last window" in replay.stdout
    assert not re.search(r"[\[{]'", replay.stdout + checked.stdout + added_rule + loop)  # no Python repr


def test_chat_and_instruction_rows_are_reference_records(tmp_path: Path) -> None:
    from tuneloop.monitors.backtest import read_records
    from tuneloop.monitors.ingestion.records import record_from_training_row
    from tuneloop.rowfiles import chat_prompt

    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where is order 12?"},
            {"role": "assistant", "content": "Asking."},
            {"role": "user", "content": "Still waiting."},
            {"role": "assistant", "content": "It ships today."},
        ]
    }
    record = record_from_training_row(chat)
    assert (record.prompt, record.output) == ("Where is order 12?\nStill waiting.", "It ships today.")
    assert record.prompt == chat_prompt(chat["messages"])  # the one join the server will use too
    path = tmp_path / "mixed.jsonl"
    rows = [
        chat,
        {"instruction": "Classify", "input": "refund me", "response": "refund"},
        {"prompt": "p", "output": "o", "feedback": {"label": "x"}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = read_records(path)
    assert [(r.prompt, r.output) for r in read] == [
        (record.prompt, record.output),
        ("Classify\n\nrefund me", "refund"),
        ("p", "o"),
    ]
    assert read[2].label == "x"
    # The shipped chat training file works as a backtest reference (it was refused row by row).
    monitor = tmp_path / "m.yaml"
    monitor.write_text("name: m\nwindow: {size: 100}\nmin_size: 10\nchecks: [descriptors]\n")
    big = tmp_path / "train.jsonl"
    lines = (EXAMPLES / "data/support_train.jsonl").read_text().splitlines()
    big.write_text("\n".join(lines * 4) + "\n")  # 128 rows: over the 100 a reference needs
    result = _ok(
        run_cli(
            "monitor",
            "backtest",
            "--monitor",
            str(monitor),
            "--reference",
            str(big),
            "--current",
            str(EXAMPLES / "data/support_records.jsonl"),
            "--json",
            env=_home(tmp_path),
        )
    )
    assert json.loads(result.stdout)["reference_records"] == 128


ROWS = [  # the same feedback, every way a user may write it
    {
        "model": "tiny:1",
        "id": "flat",
        "prompt": "p",
        "output": "o",
        "label": "refund",
        "rating": 4,
        "reference_answer": "r",
    },
    {
        "model": "tiny:1",
        "id": "nested",
        "prompt": "p",
        "output": "o",
        "feedback": {"label": "refund", "rating": 4, "reference": "r"},
    },
    {
        "model": "tiny:1",
        "id": "mixed",
        "prompt": "p",
        "output": "o",
        "label": "refund",
        "feedback": {"rating": 4, "reference_answer": "r"},
    },
]


def test_one_record_schema_for_ingest_and_backtest(tmp_path: Path, tiny_model: Path) -> None:
    from tuneloop.monitors.backtest import read_records

    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert {(r.label, r.rating, r.reference_answer) for r in read_records(good)} == {("refund", 4.0, "r")}
    csv = tmp_path / "good.csv"
    csv.write_text("model,id,prompt,output,feedback_label,feedback_rating,reference\ntiny:1,csv,p,o,refund,4,r\n")
    assert [(r.label, r.rating, r.reference_answer) for r in read_records(csv)] == [("refund", 4.0, "r")]

    env = _home(tmp_path)
    _ok(run_cli("models", "import-base", "tiny", "--source", str(tiny_model), env=env))
    for path in (good, csv):
        _ok(run_cli("monitor", "ingest", str(path), env=env))
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'home' / 'tuneloop.db'}")
    with engine.connect() as conn:
        stored = set(conn.execute(sa.text("SELECT record_id, label, rating, reference FROM feedback")).all())
    engine.dispose()
    assert stored == {(i, "refund", 4.0, "r") for i in ("flat", "nested", "mixed", "csv")}

    bad = tmp_path / "bad.jsonl"  # refused alike by both, with the line and the field
    bad.write_text(
        json.dumps({"model": "tiny:1", "prompt": "p", "output": "o", "lable": "refund"})
        + "\n"
        + json.dumps({"model": "tiny:1", "prompt": "p", "output": "o", "label": "a", "feedback": {"label": "b"}})
        + "\n"
    )
    ingest = run_cli("monitor", "ingest", str(bad), env=env)
    monitor = tmp_path / "m.yaml"
    monitor.write_text("name: m\nwindow: {size: 100}\nmin_size: 10\nchecks: [descriptors]\n")
    replay = run_cli(
        "monitor", "backtest", "--monitor", str(monitor), "--reference", str(good), "--current", str(bad), env=env
    )
    for result in (ingest, replay):
        assert result.returncode == 1
        assert f"{bad}:1: `lable`: unknown field" in result.stderr
        assert f"{bad}:2: `label` and `feedback.label` disagree" in result.stderr


def test_set_addresses_list_items_by_name_and_index_and_limit_caps_every_task(tmp_path: Path) -> None:
    from tuneloop.errors import ConfigError
    from tuneloop.pipelines.evaluation.suites import cap_tasks, load_suite
    from tuneloop.pipelines.training.recipes import load_recipe

    suite = EXAMPLES / "evals/support.yaml"
    by_index = load_suite(suite, ["tasks.0.limit=2", "tasks.1.generation.max_new_tokens=3"])
    by_name = load_suite(suite, ["tasks.answers.limit=2", "tasks.intents.generation.max_new_tokens=3"])
    assert by_index == by_name and by_name.tasks[0].limit == 2 and by_name.tasks[1].generation.max_new_tokens == 3
    with pytest.raises(ConfigError, match=r"no item named `nope` in `tasks` \(names: `answers`, `intents`\)"):
        load_suite(suite, ["tasks.nope.limit=2"])
    with pytest.raises(ConfigError, match="out of range"):
        load_suite(suite, ["tasks.5.limit=2"])
    assert [t.limit for t in cap_tasks(load_suite(suite, ["tasks.answers.limit=1"]), 3).tasks] == [1, 3]
    recipe = load_recipe(
        EXAMPLES / "recipes/lora_intents.yaml", ["training.max_steps=7", "lora.target_modules=[q_proj]"]
    )
    assert recipe.training.max_steps == 7 and recipe.lora.target_modules == ["q_proj"]  # the same syntax for recipes
    env = _home(tmp_path)
    helped = _ok(run_cli("eval", "run", "--help", env=env)).stdout
    assert "tasks.answers.limit=20" in helped and "--limit N" in helped
    refused = run_cli("eval", str(suite), "--model", "x:1", "--limit", "0", env=env)
    assert refused.returncode == 2 and "--limit" in refused.stderr


def test_fix_texts_point_the_right_way(tmp_path: Path, tiny_model: Path) -> None:
    env = _home(tmp_path)
    missing = run_cli("train", "nowhere.yaml", "--check", env=env, cwd=tmp_path)
    assert (
        missing.returncode == 2 and f"recipe file `nowhere.yaml` (from `{tmp_path}`) does not exist" in missing.stderr
    )
    assert "fix the keys" not in missing.stderr and "examples/recipes/" in missing.stderr

    keys = _ok(run_cli("train", "--keys", env=env)).stdout
    for key in ("training.max_steps", "lora.r", "data.train", "quantization.quant_type", "dpo.beta"):
        assert key in keys
    listed = json.loads(_ok(run_cli("train", "--keys", "--json", env=env)).stdout)
    by_key = {row["key"]: row for row in listed}
    assert by_key["training.max_steps"] == {
        "key": "training.max_steps",
        "type": "int",
        "default": "100",
        "help": "Optimizer steps",
        "methods": "all",
    }
    assert by_key["quantization.quant_type"]["methods"] == "qlora"
    assert by_key["lora.r"]["methods"] == "qlora, lora, dpo, hybrid"
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text(
        yaml.safe_dump(
            {**yaml.safe_load((EXAMPLES / "recipes/lora_intents.yaml").read_text()), "trainig": {"max_steps": 1}}
        )
    )
    refused = run_cli("train", str(bad_key), "--check", env=env)
    assert (
        refused.returncode == 2
        and "`trainig`: unknown key" in refused.stderr
        and "tuneloop train --keys" in refused.stderr
    )

    copied = tmp_path / "elsewhere" / "recipe.yaml"  # a recipe copied away from its data
    copied.parent.mkdir()
    copied.write_text((EXAMPLES / "recipes/lora_intents.yaml").read_text())
    moved = run_cli("train", str(copied), "--check", env=env)
    assert moved.returncode == 2
    assert f"`data.train`: `{copied.parent.parent / 'data' / 'intents_train.jsonl'}` does not exist" in moved.stderr
    assert "is relative, so it is read from the recipe's folder" in moved.stderr

    unregistered = run_cli("train", str(EXAMPLES / "recipes/lora_intents.yaml"), "--check", env=env)
    assert (
        unregistered.returncode == 1 and "base model `smollm2-135m-instruct` is not registered" in unregistered.stderr
    )
    assert "tuneloop models import-base smollm2-135m-instruct --source" in unregistered.stderr
    _ok(run_cli("models", "import-base", "smollm2-135m-instruct", "--source", str(tiny_model), env=env))
    valid = _ok(run_cli("train", str(EXAMPLES / "recipes/lora_intents.yaml"), "--check", env=env)).stdout
    assert "is valid: lora on base smollm2-135m-instruct:1, 32 training and 8 eval rows (instruction format)" in valid
    assert "{" not in valid


def test_train_says_what_its_loss_is_and_resume_of_a_finished_run_refuses(tmp_path: Path, tiny_model: Path) -> None:
    env = _home(tmp_path)
    _ok(run_cli("models", "import-base", "tiny", "--source", str(tiny_model), env=env))
    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hello"},
                        {"role": "assistant", "content": f"hello world {i % 2}"},
                    ]
                }
            )
            + "\n"
            for i in range(8)
        )
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-chat",
                "method": "lora",
                "base": "tiny:1",
                "data": {"train": "chat.jsonl", "max_length": 32},
                "training": {"max_steps": 4, "batch_size": 4, "checkpoint_every": 2},
            }
        )
    )
    trained = _ok(run_cli("train", str(recipe), env=env)).stdout
    assert "loss of the final weights on the first 16 training rows (eval mode, no dropout" in trained
    assert not re.search(r"[\[{]'", trained)
    run_id = re.search(r"from run (\w+)", trained).group(1)
    again = run_cli("train", "--resume", run_id, env=env)
    assert again.returncode == 1
    assert (
        f"run `{run_id}` already finished: it trained to step 4 (of max_steps 4) and registered tiny-chat v1"
        in again.stderr
    )
    assert "training.max_steps=N" in again.stderr

    from mlflow import MlflowClient

    client = MlflowClient(
        f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}", f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    )
    assert [int(v.version) for v in client.search_model_versions("name = 'tiny-chat'")] == [1]  # one run, one version
    assert max(m.step for m in client.get_metric_history(run_id, "train/loss")) == 4  # nothing trained past max_steps


def test_every_version_argument_takes_name_version_and_name_alias(tmp_path: Path, tiny_model: Path) -> None:
    env = _home(tmp_path)
    _ok(run_cli("models", "import-base", "tiny", "--source", str(tiny_model), env=env))
    two_args = json.loads(
        _ok(run_cli("models", "promote", "tiny", "1", "--alias", "champion", "--json", env=env)).stdout
    )
    by_alias = json.loads(
        _ok(run_cli("models", "promote", "tiny@champion", "--alias", "stable", "--json", env=env)).stdout
    )
    assert two_args["entry"]["to_version"] == by_alias["entry"]["to_version"] == 1
    metrics = _ok(run_cli("models", "set-metrics", "tiny@stable", "accuracy=0.5", env=env)).stdout
    assert metrics.strip() == "recorded accuracy=0.5 on tiny v1"
    refused = run_cli("models", "promote", "tiny", "--alias", "champion", env=env)
    assert refused.returncode == 2 and "write tiny:VERSION, tiny@ALIAS or `tiny VERSION`" in refused.stderr
    both = run_cli("models", "merge", "tiny:1", "1", env=env)
    assert both.returncode == 2 and "`tiny:1` already names a version" in both.stderr
    unknown = run_cli("models", "merge", "tiny@nobody", env=env)
    assert unknown.returncode == 1 and "`tiny@nobody` has no holder" in unknown.stderr


def test_promotion_without_evidence_is_refused_from_the_cli(tmp_path: Path, tiny_model: Path) -> None:
    env = _home(tmp_path)
    _ok(run_cli("models", "import-base", "tiny", "--source", str(tiny_model), env=env))
    _ok(run_cli("models", "gates", "tiny", "--set", "rougeL >= champion - 0.02", env=env))
    _ok(run_cli("models", "set-metrics", "tiny:1", "rougeL=0.4", env=env))  # measured, but nothing to compare with
    refused = run_cli("models", "promote", "tiny:1", "--alias", "champion", env=env)
    assert (
        refused.returncode == 1
        and "no evidence" in refused.stderr
        and "skipped rougeL >= champion - 0.02" in refused.stderr
    )
    assert "tuneloop eval" in refused.stderr and "--force --reason" in refused.stderr
    forced = _ok(
        run_cli("models", "promote", "tiny:1", "--alias", "champion", "--force", "--reason", "first", env=env)
    ).stdout
    assert "gate skipped" in forced and "(FORCED)" in forced


def test_demo_help_and_the_readme_give_the_same_measured_time() -> None:
    readme = (REPO / "README.md").read_text()
    helped = run_cli("demo", "--help").stdout
    found = re.search(r"about (\d+) min on 2 CPU cores", " ".join(helped.split()))
    assert found, helped
    section = readme.split("## What the demo does", 1)[1].split("\n## ", 1)[0]
    assert f"about {found.group(1)} min on 2 CPU cores" in " ".join(section.split())
