"""Training recipes: YAML validated by pydantic before anything heavy loads.

Unknown keys are refused, every problem is reported at once with its key path and the recipe file,
and `--set a.b=value` overrides are applied (and validated) like keys in the file. Relative data
paths are resolved against the recipe's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tuneloop.errors import ConfigError
from tuneloop.yaml_models import Strict as _Strict
from tuneloop.yaml_models import apply_overrides, load_yaml_model

__all__ = ["Recipe", "apply_overrides", "load_recipe"]

Method = Literal["qlora", "lora", "dpo", "prompt_tuning", "hybrid", "full"]
DataFormat = Literal["auto", "chat", "instruction", "completion", "preference"]


class DataSettings(_Strict):
    train: Path = Field(description="Training file: .jsonl, .csv or .parquet")
    eval: Path | None = Field(None, description="Held-out file in the same format (recommended)")
    format: DataFormat = Field("auto", description="Row format; `auto` detects it from the fields")
    max_length: int = Field(512, ge=8, le=32768, description="Tokens per row; longer rows are reported, not cut")


class LoraSettings(_Strict):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules that get LoRA")


class QuantizationSettings(_Strict):
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen base (qlora)")
    double_quant: bool = Field(True, description="Also quantize the quantization constants (qlora)")


class PromptTuningSettings(_Strict):
    num_virtual_tokens: int = Field(16, ge=1, le=512, description="Length of the trained soft prompt")
    init_text: str | None = Field(None, description="Initialise the soft prompt from this text")


class HybridSettings(_Strict):
    full_train: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="Module name patterns trained in full (e.g. `lm_head`, `layers.0.`); LoRA elsewhere",
    )


class DpoSettings(_Strict):
    beta: float = Field(0.1, gt=0.0, description="DPO temperature")
    sft_adapter: str | None = Field(None, description="Start from this adapter (NAME:VERSION or NAME@ALIAS)")


class TrainingSettings(_Strict):
    max_steps: int = Field(100, ge=1, description="Optimizer steps")
    batch_size: int = Field(4, ge=1, description="Rows per device per step")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps")
    learning_rate: float = Field(2e-4, gt=0.0, lt=1.0, description="Peak learning rate (AdamW)")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warm-up to the peak")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after warm-up"
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm")
    seed: int = Field(42, description="Seeds weights, dropout and data order: the same seed trains the same adapter")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="`auto` picks bf16 only where it is fast")
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="`auto`: only when memory needs it"
    )
    checkpoint_every: int = Field(50, ge=1, description="Save a resumable checkpoint every N steps")
    log_every: int = Field(1, ge=1, description="Log metrics every N steps")
    eval_every: int | None = Field(None, ge=1, description="Evaluate on the eval set every N steps")


class Recipe(_Strict):
    name: str = Field(description="Registered model name the adapter is registered under")
    method: Method = Field(description="How to train: qlora, lora, dpo, prompt_tuning, hybrid or full")
    base: str = Field(description="Base model: NAME (its champion), NAME@ALIAS or NAME:VERSION")
    data: DataSettings
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: QuantizationSettings = Field(default_factory=QuantizationSettings)
    prompt_tuning: PromptTuningSettings = Field(default_factory=PromptTuningSettings)
    hybrid: HybridSettings = Field(default_factory=HybridSettings)
    dpo: DpoSettings = Field(default_factory=DpoSettings)
    alias: str | None = Field(None, description="Alias the registered version takes, e.g. challenger")
    description: str = Field("", description="Free text, recorded with the run")

    @model_validator(mode="after")
    def _method_fits_data(self) -> Recipe:
        if self.method == "dpo" and self.data.format not in ("auto", "preference"):
            raise ValueError("`method: dpo` needs `data.format: preference` (prompt/chosen/rejected rows)")
        if self.method != "dpo" and self.data.format == "preference":
            raise ValueError(f"`method: {self.method}` trains on demonstrations; preference data needs `method: dpo`")
        return self


KEYS_HINT = "fix the keys above; `tuneloop train --keys` lists every key with its default, examples/recipes/ shows one recipe per method"
REMOTE_DATA_ROOTS = ("/data/", "/gcs/")  # paths that exist only inside a remote training job


def _check_local_data(path: Path, recipe: Recipe, root: Path) -> None:
    """Refuse missing data files, saying how a relative path was read (against the recipe's folder)."""
    problems = []
    for key, value in (("data.train", recipe.data.train), ("data.eval", recipe.data.eval)):
        if value is None or str(value).startswith(REMOTE_DATA_ROOTS):
            continue
        resolved = (root / value).resolve()
        if resolved.is_file():
            continue
        how = "" if value.is_absolute() else f" (`{value}` is relative, so it is read from the recipe's folder)"
        problems.append(f"`{key}`: `{resolved}` does not exist{how}")
    if problems:
        raise ConfigError(
            f"invalid recipe `{path}`:\n  " + "\n  ".join(problems),
            hint="fix the path, relative to the recipe file, or give an absolute path",
        )


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every problem in one ConfigError naming file and key."""
    path = Path(path)
    recipe = load_yaml_model(
        path,
        Recipe,
        kind="recipe",
        overrides=overrides,
        hint=KEYS_HINT,
        examples="examples/recipes/ has one recipe per method",
    )
    root = path.resolve().parent
    _check_local_data(path, recipe, root)
    data_settings = recipe.data.model_copy(
        update={
            "train": (root / recipe.data.train).resolve(),
            "eval": (root / recipe.data.eval).resolve() if recipe.data.eval else None,
        }
    )
    return recipe.model_copy(update={"data": data_settings})
