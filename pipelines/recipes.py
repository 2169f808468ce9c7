"""Training recipes: YAML validated by pydantic before anything heavy loads.

Unknown keys are refused, every problem is reported at once with its key path and the recipe file,
and `--set a.b=value` overrides are applied (and validated) like keys in the file. Relative data
paths are resolved against the recipe's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneloop.errors import ConfigError

Method = Literal["qlora", "lora", "dpo", "prompt_tuning", "hybrid", "full"]
DataFormat = Literal["auto", "chat", "instruction", "completion", "preference"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSettings(_Strict):
    train: Path = Field(description="Training file: .jsonl, .csv or .parquet")
    eval: Path | None = Field(None, description="Held-out file in the same format (recommended)")
    format: DataFormat = Field("auto", description="Row format; `auto` detects it from the fields")
    max_length: int = Field(512, ge=8, le=32768, description="Tokens per row; longer rows are reported, not cut")


class LoraSettings(_Strict):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules that get LoRA")


class QuantizationSettings(_Strict):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


class PromptTuningSettings(_Strict):
    num_virtual_tokens: int = Field(16, ge=1, le=512)
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
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps")
    learning_rate: float = Field(2e-4, gt=0.0, lt=1.0)
    warmup_steps: int = Field(0, ge=0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="`auto` picks bf16 only where it is fast")
    gradient_checkpointing: Literal["auto", "on", "off"] = Field("auto", description="`auto`: only when memory needs it")
    checkpoint_every: int = Field(50, ge=1, description="Save a resumable checkpoint every N steps")
    log_every: int = Field(1, ge=1, description="Log metrics every N steps")
    eval_every: int | None = Field(None, ge=1, description="Evaluate on the eval set every N steps")


class Recipe(_Strict):
    name: str = Field(description="Registered model name the adapter is registered under")
    method: Method
    base: str = Field(description="Base model: NAME (its champion), NAME@ALIAS or NAME:VERSION")
    data: DataSettings
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: QuantizationSettings = Field(default_factory=QuantizationSettings)
    prompt_tuning: PromptTuningSettings = Field(default_factory=PromptTuningSettings)
    hybrid: HybridSettings = Field(default_factory=HybridSettings)
    dpo: DpoSettings = Field(default_factory=DpoSettings)
    alias: str | None = Field(None, description="Alias the registered version takes, e.g. challenger")
    description: str = ""

    @model_validator(mode="after")
    def _method_fits_data(self) -> Recipe:
        if self.method == "dpo" and self.data.format not in ("auto", "preference"):
            raise ValueError("`method: dpo` needs `data.format: preference` (prompt/chosen/rejected rows)")
        if self.method != "dpo" and self.data.format == "preference":
            raise ValueError(f"`method: {self.method}` trains on demonstrations; preference data needs `method: dpo`")
        return self


def _parse_value(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (value parsed as YAML: numbers, booleans, lists) to a recipe dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"`--set {item}` is not KEY=VALUE", hint="e.g. --set training.max_steps=20")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"`--set {item}`: `{part}` is not a section", hint="check the key path")
            node = child
        node[parts[-1]] = _parse_value(raw)
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every problem in one ConfigError naming file and key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe `{path}` does not exist", hint="pass a YAML recipe; see examples/recipes/")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f":{where.line + 1}" if where else ""
        raise ConfigError(f"`{path}{line}` is not valid YAML: {getattr(exc, 'problem', exc)}", hint="fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"`{path}` must hold a mapping of recipe keys", hint="see examples/recipes/")
    data = apply_overrides(data, overrides or [])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(recipe)"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"`{where}`: {message}")
        raise ConfigError(
            f"invalid recipe `{path}`:\n  " + "\n  ".join(problems),
            hint="fix the keys above; `tuneloop train --help` and examples/recipes/ show every key",
        ) from None
    root = path.resolve().parent
    data_settings = recipe.data.model_copy(
        update={
            "train": (root / recipe.data.train).resolve(),
            "eval": (root / recipe.data.eval).resolve() if recipe.data.eval else None,
        }
    )
    return recipe.model_copy(update={"data": data_settings})
