"""Merging a LoRA adapter into its full-precision base, tensor by tensor."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import build_tiny_adapter, run_cli
from tuneloop.names import Tag


def _logits(model, tokenizer):
    import torch

    ids = tokenizer("what is the capital of france hello world", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_merged_logits_equal_base_plus_adapter(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.pipelines.training.merge import merge_folder

    adapter = build_tiny_adapter(tiny_model, tmp_path / "adapter")
    merge_folder(tiny_model, adapter, tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    expected = _logits(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter).eval(), tokenizer
    )
    base_only = _logits(AutoModelForCausalLM.from_pretrained(tiny_model).eval(), tokenizer)
    merged = _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval(), tokenizer)
    assert torch.allclose(merged, expected, atol=1e-4)
    assert not torch.allclose(base_only, expected, atol=1e-2)  # the adapter really changes the model


def test_merge_command_registers_with_lineage(sqlite_rc, tiny_model: Path, tiny_adapter: Path) -> None:
    from tuneloop.registry.adapters import register_adapter
    from tuneloop.registry.base_models import import_base
    from tuneloop.registry.catalog import lineage_chain

    import_base(sqlite_rc, "tiny", str(tiny_model))
    register_adapter(sqlite_rc, "tiny-lora", tiny_adapter, base_name="tiny", base_version=1, method="qlora")
    env = {"TUNELOOP_HOME": str(sqlite_rc.settings.home)}
    proc = run_cli("models", "merge", "tiny-lora", "1", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    mv = sqlite_rc.mlflow.get_model_version("tiny-lora-merged", "1")
    assert mv.tags[Tag.KIND] == "base" and mv.tags[Tag.METHOD] == "merge:qlora"
    chain = [step["model"] for step in lineage_chain(sqlite_rc, mv)]
    assert chain == ["tiny-lora-merged:1", "tiny-lora:1", "tiny:1"]
    refused = run_cli("models", "merge", "tiny", "1", env=env)
    assert refused.returncode == 1 and "is not an adapter" in refused.stderr


def test_prompt_tuning_cannot_be_merged(tiny_model: Path, tmp_path: Path) -> None:
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneloop.errors import Conflict
    from tuneloop.pipelines.training.merge import merge_folder

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2),
    )
    model.save_pretrained(tmp_path / "pt")
    with pytest.raises(Conflict, match="only LoRA adapters can be merged"):
        merge_folder(tiny_model, tmp_path / "pt", tmp_path / "out")
