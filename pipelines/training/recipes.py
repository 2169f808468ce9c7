"""Training recipes: YAML validated by pydantic before anything heavy loads.

Unknown keys are refused, every problem is reported at once with its key path and the recipe file,
and `--set a.b=value` overrides are applied (and validated) like keys in the file. Relative data
paths are resolved against the recipe's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, Field, ValidationError, model_validator

from tuneloop.errors import ConfigError
from tuneloop.names import AdapterMethod
from tuneloop.yaml_models import Strict as _Strict
from tuneloop.yaml_models import apply_overrides, describe_keys, invalid, problems_of, read_yaml_mapping

__all__ = ["Recipe", "apply_overrides", "load_recipe", "parse_recipe", "parse_stored_recipe"]

METHOD_HELP = (
    "How to train: qlora, lora, dpo, prompt_tuning, hybrid or full; it decides which sections the recipe takes"
)
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


class _RecipeBase(_Strict):
    """What every method's recipe holds; each method adds the sections it reads (and only those)."""

    name: str = Field(description="Registered model name the adapter is registered under")
    base: str = Field(description="Base model: NAME (its champion), NAME@ALIAS or NAME:VERSION")
    data: DataSettings
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    alias: str | None = Field(None, description="Alias the registered version takes, e.g. challenger")
    description: str = Field("", description="Free text, recorded with the run")

    @model_validator(mode="after")
    def _method_fits_data(self) -> _RecipeBase:
        method = getattr(self, "method", None)
        if method == AdapterMethod.DPO and self.data.format not in ("auto", "preference"):
            raise ValueError("`method: dpo` needs `data.format: preference` (prompt/chosen/rejected rows)")
        if method != AdapterMethod.DPO and self.data.format == "preference":
            raise ValueError(f"`method: {method}` trains on demonstrations; preference data needs `method: dpo`")
        return self


class PromptTuningRecipe(_RecipeBase):
    prompt_tuning: PromptTuningSettings = Field(default_factory=PromptTuningSettings)
    method: Literal[AdapterMethod.PROMPT_TUNING] = Field(description=METHOD_HELP)


class _LoraRecipe(_RecipeBase):
    """Methods that train LoRA matrices on a frozen base."""

    lora: LoraSettings = Field(default_factory=LoraSettings)


class QloraRecipe(_LoraRecipe):
    quantization: QuantizationSettings = Field(default_factory=QuantizationSettings)
    method: Literal[AdapterMethod.QLORA] = Field(description=METHOD_HELP)


class LoraRecipe(_LoraRecipe):
    method: Literal[AdapterMethod.LORA] = Field(description=METHOD_HELP)


class DpoRecipe(_LoraRecipe):
    dpo: DpoSettings = Field(default_factory=DpoSettings)
    method: Literal[AdapterMethod.DPO] = Field(description=METHOD_HELP)


class HybridRecipe(_LoraRecipe):
    hybrid: HybridSettings = Field(default_factory=HybridSettings)
    method: Literal[AdapterMethod.HYBRID] = Field(description=METHOD_HELP)


class FullRecipe(_RecipeBase):
    method: Literal[AdapterMethod.FULL] = Field(description=METHOD_HELP)


Recipe = Annotated[
    QloraRecipe | LoraRecipe | DpoRecipe | HybridRecipe | PromptTuningRecipe | FullRecipe,
    Field(discriminator="method"),
]
LoraBased = QloraRecipe | LoraRecipe | DpoRecipe | HybridRecipe

RECIPE_CLASSES: dict[str, type[_RecipeBase]] = {
    AdapterMethod.QLORA: QloraRecipe,
    AdapterMethod.LORA: LoraRecipe,
    AdapterMethod.DPO: DpoRecipe,
    AdapterMethod.HYBRID: HybridRecipe,
    AdapterMethod.PROMPT_TUNING: PromptTuningRecipe,
    AdapterMethod.FULL: FullRecipe,
}
_COMMON = set(_RecipeBase.model_fields) | {"method"}
SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation
    for cls in RECIPE_CLASSES.values()
    for name, field in cls.model_fields.items()
    if name not in _COMMON and isinstance(field.annotation, type)
}


def methods_reading(section: str) -> list[str]:
    """The methods whose recipes take `section`."""
    return [method for method, cls in RECIPE_CLASSES.items() if section in cls.model_fields]


def parse_recipe(data: dict[str, Any], source: str | Path = "(recipe)") -> Recipe:
    """Validate a recipe mapping as the recipe of its `method`; one ConfigError lists every problem.

    A section another method reads (a `dpo:` block in a `qlora` recipe) is refused with its key path:
    it would be silently ignored otherwise.
    """
    method = data.get("method")
    cls = RECIPE_CLASSES.get(str(method)) if method is not None else None
    if cls is None:
        allowed = ", ".join(RECIPE_CLASSES)
        problem = "`method`: required" if method is None else f"`method`: `{method}` is not one of {allowed}"
        rest = {k: v for k, v in data.items() if k not in SECTIONS}
        problems = [problem] + [p for p in _problems(LoraRecipe, rest | {"method": "lora"}) if "`method`" not in p]
        raise invalid("recipe", source, problems, KEYS_HINT)
    problems = [
        f"`{key}`: a section of `method: {' | '.join(methods_reading(key))}`; `method: {method}` reads "
        + (", ".join(f"`{s}`" for s in cls.model_fields if s in SECTIONS) or "no method section")
        for key in data
        if key in SECTIONS and key not in cls.model_fields
    ]
    problems += _problems(cls, {k: v for k, v in data.items() if k in cls.model_fields or k not in SECTIONS})
    if problems:
        raise invalid("recipe", source, problems, KEYS_HINT)
    return cast(Recipe, cls.model_validate(data))


def parse_stored_recipe(data: dict[str, Any], source: str) -> Recipe:
    """A recipe stored in a training run. Older versions (before recipes were keyed by method) stored
    every method's section at its default; sections the method does not read were never used, so
    they are dropped rather than refused."""
    method = RECIPE_CLASSES.get(str(data.get("method")))
    if method is not None:
        data = {k: v for k, v in data.items() if k not in SECTIONS or k in method.model_fields}
    return parse_recipe(data, source)


def _problems(cls: type[_RecipeBase], data: dict[str, Any]) -> list[str]:
    try:
        cls.model_validate(data)
    except ValidationError as exc:
        return problems_of(exc, "recipe")
    return []


def recipe_keys() -> list[dict[str, str]]:
    """Every recipe key with its type, default, help and the methods that read it (for `train --keys`)."""
    rows = [row | {"methods": "all"} for row in describe_keys(_RecipeBase)]
    rows.insert(
        1,
        {
            "key": "method",
            "type": " | ".join(RECIPE_CLASSES),
            "default": "(required)",
            "help": METHOD_HELP,
            "methods": "all",
        },
    )
    for section, model in SECTIONS.items():
        methods = ", ".join(methods_reading(section))
        rows += [row | {"methods": methods} for row in describe_keys(model, f"{section}.")]
    return rows


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
    data = read_yaml_mapping(
        path, kind="recipe", overrides=overrides, hint=KEYS_HINT, examples="examples/recipes/ has one recipe per method"
    )
    recipe = parse_recipe(data, path)
    root = path.resolve().parent
    _check_local_data(path, recipe, root)
    data_settings = recipe.data.model_copy(
        update={
            "train": (root / recipe.data.train).resolve(),
            "eval": (root / recipe.data.eval).resolve() if recipe.data.eval else None,
        }
    )
    return recipe.model_copy(update={"data": data_settings})
