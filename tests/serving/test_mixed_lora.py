"""Rows grouped by version through their own LoRA adapter: the same logits as PEFT's per-row
`adapter_names` path, and a model with another LoRA variant is left to PEFT."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import WORDS, build_tiny_adapter


def test_segments_are_the_runs_of_equal_names() -> None:
    from tuneloop.serving.mixed_lora import segments

    assert segments(["a", "a", "__base__", "b", "b", "b"]) == [("a", 0, 2), ("__base__", 2, 3), ("b", 3, 6)]
    assert segments([]) == []


def test_grouped_rows_give_the_logits_of_peft_adapter_names(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.serving.mixed_lora import grouped_rows, supports

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(model, build_tiny_adapter(tiny_model, tmp_path / "a", seed=2), adapter_name="a")
    model.load_adapter(build_tiny_adapter(tiny_model, tmp_path / "b", seed=3), adapter_name="b")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.padding_side, tokenizer.pad_token = "left", tokenizer.pad_token or tokenizer.eos_token
    names = ["a", "a", "__base__", "b", "b", "b"]
    batch = tokenizer([" ".join(WORDS[i : i + 3 + i]) for i in range(6)], return_tensors="pt", padding=True)
    assert supports(model, {"a", "b"})
    with torch.inference_mode():
        expected = model(**batch, adapter_names=names).logits
        with grouped_rows(model, names):
            grouped = model(**batch).logits
        after = model(**batch, adapter_names=names).logits  # the layers' own forward is back
    torch.testing.assert_close(grouped, expected)
    torch.testing.assert_close(after, expected)
    assert not torch.allclose(expected[0], expected[3])  # the versions really differ


def test_a_model_with_a_lora_variant_keeps_the_peft_path(tiny_model: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneloop.serving.mixed_lora import supports

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    dora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True), adapter_name="d")
    assert not supports(dora, {"d"})


def test_a_batch_of_another_size_is_refused_not_misrouted(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneloop.serving.mixed_lora import grouped_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(model, build_tiny_adapter(tiny_model, tmp_path / "a"), adapter_name="a").eval()
    with torch.inference_mode(), grouped_rows(model, ["a", "__base__"]), pytest.raises(RuntimeError, match="2 rows"):
        model(input_ids=torch.ones((3, 4), dtype=torch.long))
