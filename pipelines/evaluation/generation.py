"""Batched generation for evaluation: left-padded prompts, greedy by default, with latency and token counts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    output_tokens: int
    latency_ms: float  # wall time of the batch the example was generated in


def render_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """Chat rows go through the tokenizer's chat template (with the generation prompt); plain text stays as is."""
    if isinstance(prompt, str):
        return prompt
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in prompt)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int = 8,
    progress: Any = None,
) -> list[Generation]:
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    device = next(model.parameters()).device
    out: list[Generation] = []
    for at in range(0, len(prompts), batch_size):
        chunk = list(prompts[at : at + batch_size])
        batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        start = time.perf_counter()
        with torch.inference_mode():
            generated = model.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
            )
        latency_ms = (time.perf_counter() - start) * 1000
        new = generated[:, batch["input_ids"].shape[1] :]
        for row in range(len(chunk)):
            tokens = new[row].tolist()
            if tokenizer.eos_token_id in tokens:
                tokens = tokens[: tokens.index(tokenizer.eos_token_id) + 1]
            out.append(
                Generation(
                    text=tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    prompt_tokens=int(batch["attention_mask"][row].sum()),
                    output_tokens=len(tokens),
                    latency_ms=latency_ms,
                )
            )
        if progress is not None:
            progress.update(len(chunk))
    return out
