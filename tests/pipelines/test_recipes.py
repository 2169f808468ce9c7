"""Recipes: every shipped recipe validates; bad recipes fail at once, naming file and key paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.a3a2416 import STORED_RECIPE
from tests.conftest import REPO, run_cli
from tuneloop.errors import ConfigError
from tuneloop.pipelines.data import formats as data_io
from tuneloop.pipelines.training import recipes
from tuneloop.pipelines.training.recipes import load_recipe

RECIPES = sorted((REPO / "examples" / "recipes").glob("*.yaml"))


def test_there_is_a_recipe_for_every_method() -> None:
    methods = {load_recipe(path).method for path in RECIPES}
    assert methods == {"qlora", "lora", "dpo", "prompt_tuning", "hybrid", "full"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_and_its_data_are_valid(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.data.train.is_file()
    train = data_io.load(recipe.data.train, recipe.data.format)
    assert len(train) >= 8
    assert recipe.data.eval is not None
    held_out = data_io.load(recipe.data.eval, train.format)
    assert len(held_out) >= 4
    assert (train.format == "preference") == (recipe.method == "dpo")


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_every_problem_is_reported_at_once_with_its_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: x\nmethod: lorra\nbase: m:1\ncolour: blue\ndata:\n  train: train.jsonl\n"
        "training:\n  max_steps: many\n  batchsize: 4\n",
    )
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = err.value.message
    assert str(path) in message
    for expected in ("`method`", "`colour`: unknown key", "`training.max_steps`", "`training.batchsize`: unknown key"):
        assert expected in message


def test_overrides_apply_and_are_validated(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nmethod: lora\nbase: m:1\ndata:\n  train: train.jsonl\n")
    recipe = load_recipe(path, ["training.max_steps=7", "lora.target_modules=[q_proj, v_proj]", "alias=challenger"])
    assert recipe.training.max_steps == 7 and recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.alias == "challenger" and recipe.data.train == (tmp_path / "train.jsonl").resolve()
    with pytest.raises(ConfigError, match="`training.max_stepz`: unknown key"):
        load_recipe(path, ["training.max_stepz=7"])
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        load_recipe(path, ["training.max_steps"])


def test_dpo_needs_preference_data(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nmethod: dpo\nbase: m:1\ndata:\n  train: train.jsonl\n  format: chat\n")
    with pytest.raises(ConfigError, match="needs `data.format: preference`"):
        load_recipe(path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmethod: [lora\n")
    with pytest.raises(ConfigError, match=r"r.yaml:\d+` is not valid YAML"):
        load_recipe(path)


def test_train_check_reports_bad_data_before_any_model_loads(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
        '{"messages": [{"role": "user", "content": "no answer"}]}\n'
        "{not json\n"
    )
    (tmp_path / "recipe.yaml").write_text("name: x\nmethod: lora\nbase: m:1\ndata:\n  train: train.jsonl\n")
    proc = run_cli("train", str(tmp_path / "recipe.yaml"), "--check")
    assert proc.returncode == 1
    assert "train.jsonl:2: the last turn is not an assistant turn" in proc.stderr
    assert "train.jsonl:3: not valid JSON" in proc.stderr
    proc = run_cli("train", str(tmp_path / "recipe.yaml"), "--set", "training.batch_size=zero")
    assert proc.returncode == 2 and "`training.batch_size`" in proc.stderr


def test_a_section_of_another_method_is_refused_with_its_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: x\nmethod: qlora\nbase: m:1\ndata:\n  train: train.jsonl\ndpo:\n  beta: 0.2\n"
        "prompt_tuning:\n  num_virtual_tokens: 4\n",
    )
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = err.value.message
    assert "`dpo`: a section of `method: dpo`; `method: qlora` reads `lora`, `quantization`" in message
    assert "`prompt_tuning`: a section of `method: prompt_tuning`" in message
    # An override is checked the same way as a key in the file.
    full = _write(tmp_path, "name: x\nmethod: full\nbase: m:1\ndata:\n  train: train.jsonl\n")
    with pytest.raises(ConfigError, match="`lora`: a section of `method: qlora | lora | dpo | hybrid`"):
        load_recipe(full, ["lora.r=8"])


def test_a_missing_method_is_named_with_the_other_problems(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nbase: m:1\ndata:\n  train: train.jsonl\ntraining:\n  max_steps: 0\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert "`method`: required" in err.value.message and "`training.max_steps`" in err.value.message


def test_every_method_reads_only_its_own_sections() -> None:
    assert {section: recipes.methods_reading(section) for section in recipes.SECTIONS} == {
        "lora": ["qlora", "lora", "dpo", "hybrid"],
        "quantization": ["qlora"],
        "dpo": ["dpo"],
        "hybrid": ["hybrid"],
        "prompt_tuning": ["prompt_tuning"],
    }


def test_a_recipe_stored_by_older_versions_still_loads() -> None:
    """Before recipes were keyed by method (commit a3a2416) a run's recipe.json carried every section."""
    data = json.loads(STORED_RECIPE.read_text())
    assert {"dpo", "prompt_tuning", "hybrid", "quantization"} <= set(data)
    recipe = recipes.parse_stored_recipe(data, str(STORED_RECIPE))
    assert recipe.method == data["method"] and recipe.training.max_steps == data["training"]["max_steps"]
    assert set(type(recipe).model_fields) >= {"lora"} and "dpo" not in type(recipe).model_fields
    with pytest.raises(ConfigError, match="`dpo`: a section of"):
        recipes.parse_recipe(data, "typed")
