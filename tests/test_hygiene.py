"""The CLI writes nowhere but `TUNELOOP_HOME` and the cache folder: not into the folder it is run from
(MLflow 3's default tracking URI is `sqlite:///mlflow.db` in the working directory), not into the
user's home (library caches), not next to its input files. And it prints tuneloop's own progress only:
the libraries' bars and warnings come through with `-v`."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.conftest import chat_file, run_cli, tiny_lora_recipe

# Lines the libraries underneath print (transformers, TRL/datasets, MLflow, bitsandbytes).
THIRD_PARTY = (
    "Loading weights",
    "Writing model shards",
    "Downloading artifacts",
    "Tokenizing train dataset",
    "[transformers]",
    "kernels-community",
    "{'loss'",
)


PYTHON_WARNING = re.compile(
    r"\b\w*Warning: "
)  # how Python prints a warning nobody silenced: `file:line: Category: text`


def third_party_lines(output: str) -> list[str]:
    return [
        line
        for line in output.splitlines()
        if any(marker in line for marker in THIRD_PARTY) or PYTHON_WARNING.search(line)
    ]


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def test_import_train_eval_from_an_empty_folder_write_only_home_and_cache_and_print_only_tuneloop(
    tmp_path: Path, tiny_model: Path
) -> None:
    inputs, work, user_home = tmp_path / "inputs", tmp_path / "work", tmp_path / "user-home"
    for folder in (inputs, work, user_home):
        folder.mkdir()
    rows = [("order status", "your order has shipped"), ("reset password", "use the reset link")] * 4
    data = chat_file(inputs / "chat.jsonl", rows)
    training = {"max_steps": 20, "batch_size": 4, "checkpoint_every": 1}
    recipe = tiny_lora_recipe(inputs / "recipe.yaml", data, training=training, lora={"r": 4, "alpha": 8})
    suite = inputs / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "tasks": [
                    {"name": "t", "data": str(data), "metrics": ["exact_match"], "generation": {"max_new_tokens": 2}}
                ],
            }
        )
    )
    before = _tree(inputs)
    env = {
        "TUNELOOP_HOME": str(tmp_path / "home"),
        "TUNELOOP_CACHE_DIR": str(tmp_path / "cache"),
        "HOME": str(user_home),
        "XDG_CACHE_HOME": str(user_home / ".cache"),
    }

    for args in (
        ("models", "import-base", "tiny", "--source", str(tiny_model)),
        ("train", str(recipe), "--set", "training.max_steps=2"),
        ("eval", str(suite), "--model", "tiny-lora:1"),
        ("models", "list", "--json"),
    ):
        result = run_cli(*args, env=env, cwd=work)
        assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}"
        noise = third_party_lines(result.stdout + result.stderr)
        assert noise == [], f"{args} printed:\n" + "\n".join(noise)

    assert _tree(work) == {}, "written into the working folder"
    assert _tree(user_home) == {}, "written into the user's home"
    assert _tree(inputs) == before, "written next to the inputs"
    assert (tmp_path / "home" / "mlflow.db").is_file()

    chatty = run_cli("-v", "eval", str(suite), "--model", "tiny-lora:1", env=env, cwd=work)
    assert chatty.returncode == 0, chatty.stderr[-3000:]
    assert any("Loading weights" in line for line in third_party_lines(chatty.stderr)), chatty.stderr[-3000:]


def test_a_library_modules_own_bar_is_hidden_around_the_call(monkeypatch) -> None:
    """transformers' GGUF conversion draws "Converting and de-quantizing GGUF tensors..." with a `tqdm`
    it imported itself; `without_bars` hides that one bar, and `-v` lets it through."""
    import io
    import sys
    import types

    from tqdm import tqdm

    from tuneloop.quiet import VERBOSE_ENV, without_bars

    library = types.ModuleType("a_library")
    library.tqdm = tqdm  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "a_library", library)

    def draw() -> str:
        out = io.StringIO()
        for _ in library.tqdm(range(3), desc="converting", file=out):  # type: ignore[attr-defined]
            pass
        return out.getvalue()

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with without_bars("a_library"):
        assert draw() == ""
    assert "converting" in draw()  # restored after the call
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with without_bars("a_library"):
        assert "converting" in draw()
