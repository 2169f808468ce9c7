"""Dynamic batching on one model thread.

PEFT and transformers are not thread-safe (GUIDE §9): every model call, adapter loads included, runs on
the batcher's thread. Requests collected within `collect_ms` (up to `max_batch`) are generated together;
LoRA versions share a batch through PEFT's `adapter_names` (one name per row, `__base__` for none).
Rows only share a `generate` call when their sampling is the same: every greedy row together, sampled
rows by (temperature, top_p, seed). Greedy rows get the tokens a batch-of-one `generate` gives them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from tuneloop.errors import Overloaded

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Ask:
    """One generation: a rendered prompt, on `adapter` (None: the base itself)."""

    prompt: str
    adapter: str | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def sampling(self) -> tuple[Any, ...]:
        """Rows with equal sampling may share a `generate` call."""
        return ("greedy",) if self.temperature == 0 else ("sample", self.temperature, self.top_p, self.seed)


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop": end of sequence or a stop string; "length": max_new_tokens reached
    batch_rows: int  # rows generated in the same call


@dataclass
class _Job:
    ask: Ask
    future: Future[Answer]


@dataclass
class _Control:
    """Work on the model that is not a generation (attaching or dropping an adapter)."""

    run: Callable[[], Any]
    future: Future[Any]


_CLOSE = object()


class Batcher:
    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch: int = 16, collect_ms: float = 5.0, max_queue: int = 256
    ) -> None:
        tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.collect_s = max_batch, collect_ms / 1000
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._serve, name="tuneloop-model", daemon=True)
        self._thread.start()

    # --- what other threads call ---------------------------------------------------------------
    def submit(self, ask: Ask) -> Future[Answer]:
        job = _Job(ask, Future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(
                f"the model's queue is full ({self._queue.maxsize} requests waiting)", hint="retry in a moment"
            ) from None
        return job.future

    def on_model_thread(self, run: Callable[[], Any]) -> Future[Any]:
        """Run `run` on the model thread between batches (e.g. `model.load_adapter(...)`)."""
        control = _Control(run, Future())
        self._queue.put(control)
        return control.future

    def close(self, timeout_s: float = 30) -> None:
        """Finish what is queued, then stop the model thread."""
        self._queue.put(_CLOSE)
        self._thread.join(timeout_s)

    # --- the model thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is _CLOSE:
                return
            if isinstance(item, _Control):
                _settle(item.future, item.run)
                continue
            batch, after = self._collect(item)
            for group in _by_sampling(batch):
                self._generate(group)
            if after is _CLOSE:
                return
            if after is not None:
                _settle(after.future, after.run)

    def _collect(self, first: _Job) -> tuple[list[_Job], Any]:
        """Jobs that arrive within the collection window, and the control item that ended it early."""
        batch, deadline = [first], time.monotonic() + self.collect_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not isinstance(item, _Job):
                return batch, item
            batch.append(item)
        return batch, None

    def _generate(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            answers = self._answer([j.ask for j in live])
        except Exception as error:  # noqa: BLE001 - the callers get the error; the thread serves on
            for job in live:
                job.future.set_exception(error)
            return
        for job, answer in zip(live, answers, strict=True):
            job.future.set_result(answer)

    def _answer(self, asks: list[Ask]) -> list[Answer]:
        import torch

        tokenizer = self.tokenizer
        batch = tokenizer([a.prompt for a in asks], return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(next(self.model.parameters()).device)
        first = asks[0]
        sampling: dict[str, Any] = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
            if first.seed is not None:
                torch.manual_seed(first.seed)
        if hasattr(self.model, "peft_config"):
            sampling["adapter_names"] = [a.adapter or BASE for a in asks]
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=max(a.max_new_tokens for a in asks),
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        return [
            _finish(
                tokenizer,
                ask,
                new[row].tolist()[: ask.max_new_tokens],
                int(batch["attention_mask"][row].sum()),
                len(asks),
            )
            for row, ask in enumerate(asks)
        ]


def _finish(tokenizer: Any, ask: Ask, tokens: list[int], prompt_tokens: int, rows: int) -> Answer:
    """The row's text up to its end of sequence or first stop string, and why it ended."""
    finish, generated = "length", len(tokens)
    if tokenizer.eos_token_id in tokens:
        end = tokens.index(tokenizer.eos_token_id)
        tokens, finish, generated = tokens[:end], "stop", end + 1  # the end-of-sequence token was generated too
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    cuts = [text.index(s) for s in ask.stop if s in text]
    if cuts:
        text, finish = text[: min(cuts)], "stop"
    return Answer(text.strip(), prompt_tokens, generated, finish, rows)


def _by_sampling(jobs: list[_Job]) -> list[list[_Job]]:
    groups: dict[tuple[Any, ...], list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.ask.sampling(), []).append(job)
    return list(groups.values())


def _settle(future: Future[Any], run: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(run())
    except Exception as error:  # noqa: BLE001 - handed to the caller
        future.set_exception(error)
