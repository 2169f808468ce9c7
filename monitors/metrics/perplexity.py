"""Perplexity: exp of the token-weighted mean negative log-likelihood over a held-out set.

Texts longer than the window are scored with a sliding window (each token is predicted once, with up
to `window` tokens of context; windows advance by `stride`). When a prompt is given, only the
continuation's tokens are scored, conditioned on the prompt, as in training. Windows are batched
by length so padding costs little.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ScoredSequence:
    input_ids: list[int]
    first_scored: int  # tokens before this index are context only


@dataclass
class PerplexityResult:
    perplexity: float
    nll: list[float]  # per example: summed NLL of its scored tokens
    tokens: list[int]  # per example: number of scored tokens
    seconds: float

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.total_tokens / self.seconds if self.seconds > 0 else float("nan")


def from_nll(nll: Sequence[float], tokens: Sequence[int]) -> float:
    total = sum(tokens)
    return math.exp(sum(nll) / total) if total else float("nan")


def encode(tokenizer: Any, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[ScoredSequence]:
    """Token ids of each text; with prompts, the prompt comes first and is not scored."""
    out = []
    for i, body in enumerate(texts):
        prompt_ids = tokenizer(prompts[i], add_special_tokens=True)["input_ids"] if prompts else []
        body_ids = tokenizer(body, add_special_tokens=not prompts)["input_ids"]
        out.append(ScoredSequence(list(prompt_ids) + list(body_ids), first_scored=max(1, len(prompt_ids))))
    return out


@dataclass(frozen=True)
class _Window:
    example: int
    ids: list[int]
    score_from: int  # local index of the first token scored in this window


def _windows(sequences: Sequence[ScoredSequence], window: int, stride: int) -> list[_Window]:
    out = []
    for i, seq in enumerate(sequences):
        length = len(seq.input_ids)
        scored_until = 0  # every token before this is already scored (or context only)
        begin = 0
        while True:
            end = min(begin + window, length)
            first = max(scored_until, seq.first_scored, begin + 1)
            if first < end:
                out.append(_Window(i, seq.input_ids[begin:end], first - begin))
            scored_until = max(scored_until, end)
            if end >= length:
                break
            begin += stride
    return out


def perplexity(
    model: Any,
    sequences: Sequence[ScoredSequence],
    *,
    batch_size: int = 8,
    window: int | None = None,
    stride: int | None = None,
    pad_token_id: int = 0,
) -> PerplexityResult:
    import torch

    window = window or min(int(getattr(model.config, "max_position_embeddings", 1024) or 1024), 1024)
    stride = stride or window // 2
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in (0, window]; got stride={stride}, window={window}")
    windows = sorted(_windows(sequences, window, stride), key=lambda w: len(w.ids))
    nll = [0.0] * len(sequences)
    tokens = [0] * len(sequences)
    device = next(model.parameters()).device
    start = time.perf_counter()
    with torch.inference_mode():
        for at in range(0, len(windows), batch_size):
            batch = windows[at : at + batch_size]
            width = max(len(w.ids) for w in batch)
            ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, w in enumerate(batch):
                ids[row, : len(w.ids)] = torch.tensor(w.ids)
                mask[row, : len(w.ids)] = 1
                labels[row, w.score_from : len(w.ids)] = ids[row, w.score_from : len(w.ids)]
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            targets = labels[:, 1:].to(device)
            scored = targets != -100  # only scored positions go through the softmax
            per_token = torch.nn.functional.cross_entropy(
                logits[:, :-1][scored].float(), targets[scored], reduction="none"
            )
            rows = scored.nonzero()[:, 0]
            sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows, per_token.double())
            counts = scored.sum(dim=1)
            for row, w in enumerate(batch):
                nll[w.example] += float(sums[row])
                tokens[w.example] += int(counts[row])
    return PerplexityResult(
        perplexity=from_nll(nll, tokens), nll=nll, tokens=tokens, seconds=time.perf_counter() - start
    )
