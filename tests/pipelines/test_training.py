"""Training on a tiny random model: every method learns, is tracked in MLflow and registered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.a3a2416 import rewrite_recipe_as_a3a2416
from tests.conftest import REPO
from tuneloop.names import Tag

ROWS = [
    ("what is the capital of france", "paris is the capital of france"),
    ("hello", "hello world"),
    ("password reset please", "yes reset the password in the account"),
    ("refund order", "yes refund the order please"),
    ("shipping order", "the order is shipping thanks"),
    ("help account", "yes help is in the account"),
    ("ticket answer", "the answer to the ticket is yes"),
    ("model question", "the model answer is no"),
]
SETTINGS = {  # method: (learning rate, steps)
    "lora": (0.02, 30),
    "qlora": (0.02, 30),
    "hybrid": (0.02, 30),
    "prompt_tuning": (0.1, 40),
    "full": (0.01, 20),
    "dpo": (0.05, 20),
}


METHOD_SECTIONS = {"prompt_tuning": {"prompt_tuning": {"num_virtual_tokens": 8}}, "full": {}}  # the rest: LoRA


def _data(tmp_path: Path, preference: bool) -> Path:
    path = tmp_path / ("pref.jsonl" if preference else "chat.jsonl")
    with open(path, "w") as f:
        for q, a in ROWS:
            row = (
                {"prompt": q, "chosen": a, "rejected": "no"}
                if preference
                else {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            )
            f.write(json.dumps(row) + "\n")
    return path


def _recipe(method: str, data: Path) -> dict:
    lr, steps = SETTINGS[method]
    return {
        "name": f"tiny-{method.replace('_', '-')}",
        "method": method,
        "base": "tiny:1",
        "data": {"train": str(data), "max_length": 64},
        "training": {
            "max_steps": steps,
            "batch_size": 8,
            "learning_rate": lr,
            "scheduler": "constant",
            "checkpoint_every": 10,
            "seed": 1,
        },
    } | METHOD_SECTIONS.get(method, {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}})


def _history(rc, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(rc.mlflow.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


@pytest.mark.parametrize("method", list(SETTINGS))
def test_method_learns_and_is_registered_with_lineage(method: str, sqlite_rc, tiny_model: Path, tmp_path: Path) -> None:
    from tuneloop.pipelines.training.recipes import parse_recipe
    from tuneloop.pipelines.training.run import train
    from tuneloop.registry.base_models import import_base

    import_base(sqlite_rc, "tiny", str(tiny_model))
    data = _data(tmp_path, preference=method == "dpo")
    result = train(parse_recipe(_recipe(method, data)), sqlite_rc, alias="challenger")

    losses = _history(sqlite_rc, result.run_id, "train/loss")
    assert len(losses) == SETTINGS[method][1]  # one per step, no gaps
    if method == "dpo":
        margins = _history(sqlite_rc, result.run_id, "train/dpo_margin")
        assert margins[-1] > margins[0] + 0.5
    assert losses[-1] < 0.3 * losses[0], f"{method}: {losses[0]:.3f} -> {losses[-1]:.3f}"

    run = sqlite_rc.mlflow.get_run(result.run_id)
    # `precision: auto` follows the hardware: bf16 only on CPUs with bf16 units (these VMs come with and without)
    native_bf16 = bool(
        Path("/proc/cpuinfo").read_text().count("avx512_bf16") + Path("/proc/cpuinfo").read_text().count("amx_bf16")
    )
    assert run.data.params["method"] == method
    assert run.data.tags["tuneloop.precision"] == ("bfloat16" if native_bf16 else "float32")
    assert ("AMX/AVX512-BF16" if native_bf16 else "no bf16 units") in run.data.tags["tuneloop.precision_reason"]
    assert {"train/learning_rate", "train/grad_norm", "train/tokens_per_second", "train/final_loss"} <= set(
        run.data.metrics
    )
    from tuneloop.digest import file_sha256

    assert run.data.tags["tuneloop.data.training.sha256"] == "sha256:" + file_sha256(data)
    assert [{t.key: t.value for t in i.tags}["sha256"] for i in run.inputs.dataset_inputs] == [
        "sha256:" + file_sha256(data)
    ]

    mv = sqlite_rc.mlflow.get_model_version_by_alias(result.model, "challenger")
    assert int(mv.version) == result.version and mv.run_id == result.run_id
    assert mv.tags[Tag.TRAINING_RUN_ID] == result.run_id and mv.tags[Tag.BASE_NAME] == "tiny"
    assert mv.tags[Tag.KIND] == ("base" if method == "full" else "adapter")
    assert mv.tags[Tag.METHOD] == method
    assert json.loads(mv.tags[Tag.DATASET_DIGESTS]) == {"train": "sha256:" + file_sha256(data)}


_RELOAD = """
import json, sys
from tuneloop.pipelines.training.recipes import parse_recipe
from tuneloop.pipelines.training.run import reloaded_training_loss
from tuneloop.registry.client import RegistryClient
from tuneloop.settings import Settings
rc = RegistryClient(Settings.model_validate_json(sys.argv[1]))
name, version = sys.argv[2].split(":")
print("LOSS", reloaded_training_loss(rc, name, int(version), parse_recipe(json.loads(sys.argv[3]))))
"""


def _reloaded_loss(rc, version: str, recipe) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", _RELOAD, rc.settings.model_dump_json(), version, recipe.model_dump_json()],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return float(proc.stdout.split("LOSS")[-1])


@pytest.mark.acceptance
@pytest.mark.parametrize("method", list(SETTINGS))
def test_registered_version_reproduces_the_final_loss_in_a_fresh_process(
    method: str, sqlite_rc, tiny_model: Path, tmp_path: Path
) -> None:
    from tuneloop.pipelines.training.recipes import parse_recipe
    from tuneloop.pipelines.training.run import train
    from tuneloop.registry.base_models import import_base

    import_base(sqlite_rc, "tiny", str(tiny_model))
    # fp32 on every CPU: this checks that the registered weights are the trained ones, to 1e-4; under bf16
    # compute (CPUs with AVX512-BF16 pick it) rounding alone moves the loss by ~1e-3 between processes.
    settings = _recipe(method, _data(tmp_path, preference=method == "dpo"))
    settings["training"]["precision"] = "fp32"
    recipe = parse_recipe(settings)
    result = train(recipe, sqlite_rc)
    reloaded = _reloaded_loss(sqlite_rc, f"{result.model}:{result.version}", recipe)
    assert reloaded == pytest.approx(result.final_loss, abs=1e-4)
    if method == "dpo":  # against the base as reference, not against itself (that would give ln 2)
        assert result.final_loss < 0.5


@pytest.mark.acceptance
def test_dpo_on_top_of_an_sft_adapter_keeps_it_as_reference_and_lineage(
    sqlite_rc, tiny_model: Path, tmp_path: Path
) -> None:
    from tuneloop.pipelines.training.recipes import parse_recipe
    from tuneloop.pipelines.training.run import train
    from tuneloop.registry.base_models import import_base
    from tuneloop.registry.catalog import lineage_chain

    import_base(sqlite_rc, "tiny", str(tiny_model))
    sft = train(parse_recipe(_recipe("lora", _data(tmp_path, preference=False))), sqlite_rc, alias="champion")
    spec = _recipe("dpo", _data(tmp_path, preference=True))
    spec["training"] = {
        **spec["training"],
        "learning_rate": 0.01,
        "max_steps": 30,
    }  # gentler: it starts from a sharp SFT model
    recipe = parse_recipe({**spec, "dpo": {"sft_adapter": f"{sft.model}@champion"}})
    result = train(recipe, sqlite_rc)

    mv = sqlite_rc.mlflow.get_model_version(result.model, result.version)
    assert mv.tags[Tag.PARENT_ADAPTER] == f"{sft.model}:{sft.version}"  # pinned, not the alias
    chain = [link["model"] for link in lineage_chain(sqlite_rc, mv)]
    assert chain == [f"{result.model}:{result.version}", f"{sft.model}:{sft.version}", "tiny:1"]
    losses = _history(sqlite_rc, result.run_id, "train/loss")
    assert losses[-1] < 0.3 * losses[0]
    assert _reloaded_loss(sqlite_rc, f"{result.model}:{result.version}", recipe) == pytest.approx(
        result.final_loss, abs=1e-4
    )

    with pytest.raises(Exception, match="is not an adapter of"):
        train(parse_recipe({**spec, "dpo": {"sft_adapter": "tiny:1"}}), sqlite_rc)


def test_method_structure(tiny_model: Path) -> None:
    """qlora: NF4 with double quantization; hybrid: only LoRA + chosen modules train; prompt tuning: only the prompt."""
    import bitsandbytes as bnb

    from tuneloop.pipelines.training.models import load_base, trainable_model
    from tuneloop.pipelines.training.precision import choose
    from tuneloop.pipelines.training.recipes import parse_recipe

    choice = choose("fp32", "off", parameters=0, batch_tokens=0, hidden=0, layers=0)

    def build(method: str, **extra):
        recipe = parse_recipe({"name": "x", "method": method, "base": "tiny:1", "data": {"train": "x.jsonl"}, **extra})
        return trainable_model(load_base(tiny_model, recipe, choice), recipe, choice)

    qlora = build("qlora")
    four_bit = [m for m in qlora.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(m.weight.quant_state.quant_type == "nf4" for m in four_bit)
    assert all(m.weight.quant_state.nested for m in four_bit)  # double quantization

    hybrid = build("hybrid", hybrid={"full_train": ["lm_head"]})
    trainable = {n for n, p in hybrid.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "lm_head" in n for n in trainable)
    assert any("lm_head" in n for n in trainable) and any("lora_" in n for n in trainable)

    prompt = build("prompt_tuning", prompt_tuning={"num_virtual_tokens": 4})
    trainable = [n for n, p in prompt.named_parameters() if p.requires_grad]
    assert trainable and all("prompt_encoder" in n for n in trainable)
    assert sum(p.numel() for p in prompt.parameters() if p.requires_grad) == 4 * 64


def test_qlora_adapter_weights_keep_the_fp32_compute_dtype(tiny_model: Path, tmp_path: Path) -> None:
    """TRL casts a quantized model's trainable weights to bf16; where fp32 was chosen they stay fp32
    (bf16 LoRA weights made a step 1.7x slower on an AVX2 CPU)."""
    import torch
    from transformers import AutoTokenizer

    from tuneloop.pipelines.data import formats as data_io
    from tuneloop.pipelines.training.models import load_base, trainable_model
    from tuneloop.pipelines.training.precision import choose
    from tuneloop.pipelines.training.recipes import parse_recipe
    from tuneloop.pipelines.training.run import _build_trainer

    recipe = parse_recipe(_recipe("qlora", _data(tmp_path, preference=False)))
    choice = choose("fp32", "off", parameters=0, batch_tokens=0, hidden=0, layers=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = trainable_model(load_base(tiny_model, recipe, choice), recipe, choice)
    data = data_io.load(recipe.data.train, tokenizer=tokenizer, max_length=64)
    trainer = _build_trainer(recipe, choice, model, tokenizer, data, None, tmp_path / "out")
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)


def test_bad_data_fails_before_the_model_loads(sqlite_rc, tiny_model: Path, tmp_path: Path) -> None:
    from tuneloop.errors import InvalidInput
    from tuneloop.pipelines.training.recipes import parse_recipe
    from tuneloop.pipelines.training.run import train
    from tuneloop.registry.base_models import import_base

    import_base(sqlite_rc, "tiny", str(tiny_model))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "b"}\n')
    with pytest.raises(InvalidInput, match=r"bad.jsonl:1: `chosen` equals `rejected`"):
        train(parse_recipe({**_recipe("dpo", bad)}), sqlite_rc)
    training = sqlite_rc.mlflow.get_experiment_by_name("tuneloop-training")
    assert training is None or not sqlite_rc.mlflow.search_runs([training.experiment_id])


def _adapter_tensors(rc, name: str, version: int) -> dict:
    from mlflow.artifacts import download_artifacts
    from safetensors.torch import load_file

    mv = rc.mlflow.get_model_version(name, str(version))
    folder = Path(download_artifacts(mv.tags[Tag.ARTIFACT_URI] + "/artifacts/adapter"))
    return load_file(folder / "adapter_model.safetensors")


@pytest.mark.acceptance
def test_kill_9_then_resume_equals_an_uninterrupted_run(sqlite_rc, tiny_model: Path, tmp_path: Path) -> None:
    import torch

    from tuneloop.pipelines.training.recipes import parse_recipe
    from tuneloop.pipelines.training.run import recipe_of_run, train
    from tuneloop.registry.base_models import import_base

    import_base(sqlite_rc, "tiny", str(tiny_model))
    spec = _recipe("lora", _data(tmp_path, preference=False))
    spec["training"].update({"max_steps": 12, "batch_size": 2, "checkpoint_every": 5, "scheduler": "linear"})
    spec["lora"]["dropout"] = 0.1  # dropout draws random numbers: the RNG state must be restored too
    recipe = parse_recipe(spec)
    reference = train(recipe, sqlite_rc)

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.train_worker",
            sqlite_rc.settings.model_dump_json(),
            recipe.model_dump_json(),
            "7",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    run_id = proc.stdout.split("RUN_ID")[1].split()[0]
    assert (sqlite_rc.settings.home / "runs" / run_id / "checkpoint-5").is_dir()
    assert not (sqlite_rc.settings.home / "runs" / run_id / "checkpoint-10").exists()

    # The run resumes from the recipe.json it stored, also in the form a3a2416 wrote (every section).
    assert "dpo" in rewrite_recipe_as_a3a2416(sqlite_rc, run_id)
    resumed = train(recipe_of_run(sqlite_rc, run_id), sqlite_rc, resume_run_id=run_id)
    assert resumed.run_id == run_id
    assert sqlite_rc.mlflow.get_model_version(resumed.model, str(resumed.version)).run_id == run_id
    expected = _adapter_tensors(sqlite_rc, reference.model, reference.version)
    actual = _adapter_tensors(sqlite_rc, resumed.model, resumed.version)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)

    steps = sorted({m.step for m in sqlite_rc.mlflow.get_metric_history(run_id, "train/loss")})
    assert steps == list(range(1, 13))  # steps 6 and 7 were recomputed and logged again: no gap


@pytest.mark.acceptance
def test_two_processes_train_together_and_register_once(sqlite_rc, tiny_model: Path, tmp_path: Path) -> None:
    import os

    import yaml

    from tuneloop.registry.base_models import import_base

    import_base(sqlite_rc, "tiny", str(tiny_model))
    spec = _recipe("lora", _data(tmp_path, preference=False))
    spec["training"].update({"max_steps": 4, "batch_size": 2, "checkpoint_every": 2})
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(spec))
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    env["TUNELOOP_HOME"] = str(sqlite_rc.settings.home)
    proc = subprocess.run(
        [
            str(bin_dir / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            "--no-python",
            str(bin_dir / "tuneloop"),
            "train",
            str(recipe_file),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)  # rank 0 alone prints: exactly one JSON document
    versions = sqlite_rc.mlflow.search_model_versions(f"name = '{result['model']}'")
    assert [int(v.version) for v in versions] == [result["version"]]
    experiment = sqlite_rc.mlflow.get_experiment_by_name("tuneloop-training")
    runs = sqlite_rc.mlflow.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["tuneloop.world_size"] == "2"


def test_a_partial_checkpoint_left_by_a_kill_is_passed_over(tmp_path: Path) -> None:
    from tuneloop.pipelines.training.run import latest_checkpoint

    for step, files in (
        (10, ["trainer_state.json", "optimizer.pt", "rng_state.pth"]),
        (20, ["trainer_state.json", "optimizer.pt", "rng_state_0.pth"]),
        (30, ["README.md"]),  # killed while saving: what CI once found
        (40, ["optimizer.pt", "rng_state.pth", "trainer_state.json"]),
    ):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}" if name.endswith(".json") else "x")
    (tmp_path / "checkpoint-40" / "trainer_state.json").write_text('{"global_step": 4')  # cut short mid-write
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    assert latest_checkpoint(tmp_path / "nothing") is None
