"""Build the trainable model for a recipe's method from a base model folder.

TRL and PEFT do the work; this module only maps the recipe onto their configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.errors import ConfigError
from tuneloop.pipelines.training.precision import PrecisionChoice
from tuneloop.pipelines.training.recipes import (
    DpoRecipe,
    FullRecipe,
    HybridRecipe,
    LoraBased,
    PromptTuningRecipe,
    QloraRecipe,
    Recipe,
)
from tuneloop.quiet import PEFT_READS_A_DEPRECATED_NAME, ignoring

FULL_FINETUNE_MAX_PARAMETERS = 1_000_000_000


def _torch_dtype(choice: PrecisionChoice) -> Any:
    import torch

    return torch.bfloat16 if choice.dtype == "bfloat16" else torch.float32


def lora_config(recipe: LoraBased, modules_to_save: list[str] | None = None) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=recipe.lora.target_modules,
        modules_to_save=modules_to_save,
        task_type="CAUSAL_LM",
    )


def load_base(folder: Path, recipe: Recipe, choice: PrecisionChoice) -> Any:
    """The base model, 4-bit NF4 for qlora (compute dtype from the precision policy), else plain."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = _torch_dtype(choice)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if isinstance(recipe, QloraRecipe):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=recipe.quantization.quant_type,
            bnb_4bit_use_double_quant=recipe.quantization.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = choice.device
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if isinstance(recipe, FullRecipe) and model.num_parameters() > FULL_FINETUNE_MAX_PARAMETERS:
        raise ConfigError(
            f"`method: full` is for small models; this base has {model.num_parameters():,} parameters",
            hint="use `method: lora` or `qlora`",
        )
    return model


def trainable_model(base: Any, recipe: Recipe, choice: PrecisionChoice, sft_adapter: Path | None = None) -> Any:
    """Wrap the base for the recipe's method; returns a PEFT model, or the base itself for `full`."""
    with ignoring(*PEFT_READS_A_DEPRECATED_NAME):
        return _wrapped_for(base, recipe, choice, sft_adapter)


def _wrapped_for(base: Any, recipe: Recipe, choice: PrecisionChoice, sft_adapter: Path | None) -> Any:
    from peft import PeftModel, PromptTuningConfig, PromptTuningInit, get_peft_model, prepare_model_for_kbit_training

    if isinstance(recipe, FullRecipe):
        if choice.gradient_checkpointing:
            base.gradient_checkpointing_enable()
        return base
    if isinstance(recipe, QloraRecipe):
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=choice.gradient_checkpointing)
    elif choice.gradient_checkpointing:
        base.gradient_checkpointing_enable()
        base.enable_input_require_grads()
    if isinstance(recipe, PromptTuningRecipe):
        init = recipe.prompt_tuning.init_text
        config = PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=recipe.prompt_tuning.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if init else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=init,
            tokenizer_name_or_path=str(base.name_or_path) if init else None,
        )
        return get_peft_model(base, config)
    if isinstance(recipe, DpoRecipe) and sft_adapter is not None:
        return PeftModel.from_pretrained(base, sft_adapter, is_trainable=True)
    modules_to_save = recipe.hybrid.full_train if isinstance(recipe, HybridRecipe) else None
    return get_peft_model(base, lora_config(recipe, modules_to_save))
