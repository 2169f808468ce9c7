"""How a registered version's weights are loaded: fp32, or the 4-bit base a QLoRA adapter was trained on.
Shared by the pyfunc wrapper (MLflow's loader) and the server."""

from __future__ import annotations

from typing import Any


def load_kwargs(quantization: dict[str, Any]) -> dict[str, Any]:
    """fp32 weights, or the 4-bit base a QLoRA adapter was trained on (fp32 compute on CPUs)."""
    import torch

    if not quantization:
        return {"dtype": torch.float32}
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {
        "dtype": compute,
        "device_map": "cuda" if torch.cuda.is_available() else "cpu",
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization.get("quant_type", "nf4"),
            bnb_4bit_use_double_quant=bool(quantization.get("double_quant", True)),
            bnb_4bit_compute_dtype=compute,
        ),
    }
