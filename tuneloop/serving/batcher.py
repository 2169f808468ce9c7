"""Dynamic batching on one model thread.

PEFT and transformers are not thread-safe (GUIDE §9): every model call, adapter loads included, runs on
the batcher's thread. Requests collected within `collect_ms` (up to `max_batch`) are generated together;
LoRA versions share a batch through PEFT's `adapter_names` (one name per row, `__base__` for none).
Rows only share a `generate` call when their sampling is the same: every greedy row together, sampled
rows by (temperature, top_p, seed). Greedy rows get the tokens a batch-of-one `generate` gives them.

Spare work (shadow answers, which nobody waits for) never delays a caller: it waits in a bounded queue of
its own and joins a small batch of callers' requests (with the same sampling, while the batch holds at
most `SPARE_RIDE_SHARE` of `max_batch` rows: rows are not free on a CPU), or runs alone once no caller has
been seen for `SPARE_IDLE_S` — callers whose answers just left come back within ms, and a batch of spare
work started in that gap would hold their next requests for a whole generation. When that queue is full
the server is saturated: new spare work is dropped and counted (`spare_dropped`).

While a batch runs, `_Rows` (a stopping criterion, called once per generated token) follows each row:
it hands a streaming caller each new piece of text, and ends a row early — generation goes on for the
others — when it reaches a stop string, its own `max_new_tokens`, or its caller went away.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from tuneloop.errors import Overloaded
from tuneloop.serving import mixed_lora
from tuneloop.serving.mixed_lora import BASE
from tuneloop.serving.worker import QueueWorker

COLLECT_GROWTH = 20  # a batch collects for at most this many collection windows
SPARE_IDLE_S = 0.25  # spare work runs alone only after this long without a caller's request
# Spare work joins a callers' batch only while the batch is this small a share of `max_batch`: on these CPUs
# every row costs (8 callers + 2 shadow rows made the callers' p95 1.26x; none joining: 1.02x).
SPARE_RIDE_SHARE = 0.25
_WAKE = object()  # queued with spare work, so an idle model thread looks at it


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
    finish_reason: str  # "stop": end of sequence or stop string; "length": max_new_tokens; "cancelled": caller left
    batch_rows: int  # rows generated in the same call


@dataclass
class _Job:
    ask: Ask
    future: Future[Answer]
    on_text: Callable[[str], None] | None = None  # called on the model thread with each new piece of text
    cancel: threading.Event | None = None  # set when the caller went away: the row ends as "cancelled"


@dataclass
class _Control:
    """Work on the model that is not a generation (attaching or dropping an adapter)."""

    run: Callable[[], Any]
    future: Future[Any]


class SpareDropped(Overloaded):
    """Spare work refused because the server is saturated (its queue is full)."""


class Batcher(QueueWorker):
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 16,
        max_spare: int | None = None,  # spare (shadow) work queued at most; twice max_batch by default
        collect_ms: float = 5.0,
        max_queue: int = 256,
    ) -> None:
        tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.collect_s = max_batch, collect_ms / 1000
        self.max_spare = max_spare if max_spare is not None else 2 * max_batch
        self._spare: deque[_Job] = deque()
        self._spare_lock = threading.Lock()
        self.spare_dropped = 0
        self._last_caller = float("-inf")  # when a caller's request last arrived or was answered
        self._last_rows = 1  # callers' requests in the last batch: how many the next one waits for
        super().__init__("tuneloop-model", max_queue=max_queue)

    # --- what other threads call ---------------------------------------------------------------
    def submit(
        self,
        ask: Ask,
        *,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Future[Answer]:
        """Queue `ask`. `on_text` receives the answer's text piece by piece as it is generated (the pieces
        join to the answer's text); setting `cancel` ends it early with what was generated so far."""
        job = _Job(ask, Future(), on_text, cancel)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(
                f"the model's queue is full ({self._queue.maxsize} requests waiting)", hint="retry in a moment"
            ) from None
        return job.future

    def submit_spare(self, ask: Ask, *, cancel: threading.Event | None = None) -> Future[Answer]:
        """Queue `ask` as spare work (see the module's docstring); its future fails with `SpareDropped`
        when the spare queue is full."""
        job = _Job(ask, Future(), None, cancel)
        with self._spare_lock:
            full = len(self._spare) >= self.max_spare
            if full:
                self.spare_dropped += 1
            else:
                self._spare.append(job)
        if full:
            job.future.set_exception(SpareDropped(f"the spare queue is full ({self.max_spare} waiting)"))
            return job.future
        with contextlib.suppress(queue.Full):  # a full queue of callers' requests will not be idle soon anyway
            self._queue.put_nowait(_WAKE)
        return job.future

    def on_model_thread(self, run: Callable[[], Any]) -> Future[Any]:
        """Run `run` on the model thread between batches (e.g. `model.load_adapter(...)`)."""
        control = _Control(run, Future())
        self._queue.put(control)
        return control.future

    # --- the model thread ----------------------------------------------------------------------
    def _handle(self, item: Any) -> object | None:
        if isinstance(item, _Control):
            _settle(item.future, item.run)
            return None
        if item is _WAKE:
            self._spare_alone()
            return None
        batch, after = self._collect(item)
        room = int(self.max_batch * SPARE_RIDE_SHARE) - len(batch)
        batch += self._take_spare(room, {j.ask.sampling() for j in batch})
        for group in _by_sampling(batch):
            self._generate(group)
        self._last_caller = time.monotonic()
        self._wake_later(SPARE_IDLE_S)  # spare work left behind runs alone if no caller comes meanwhile
        if isinstance(after, _Control):
            _settle(after.future, after.run)
        return after

    def _spare_alone(self) -> None:
        """Spare work in a batch of its own, if the model is idle: no caller waiting (that caller's batch
        comes first, and looks again after it), and none for a while (else look again when it is over)."""
        if not self._queue.empty():
            return
        quiet_for = time.monotonic() - self._last_caller
        if quiet_for < SPARE_IDLE_S:
            self._wake_later(SPARE_IDLE_S - quiet_for)
            return
        for group in _by_sampling(self._take_spare(self.max_batch, None)):
            self._generate(group)
        self._wake_later(0.0)  # more than a batch was waiting: the rest next, unless a caller comes first

    def _wake_later(self, delay_s: float) -> None:
        """Queue a look at the spare work in `delay_s`, if any is waiting then."""

        def wake() -> None:
            with self._spare_lock:
                waiting = bool(self._spare)
            if waiting:
                with contextlib.suppress(queue.Full):
                    self._queue.put_nowait(_WAKE)

        with self._spare_lock:
            if not self._spare:
                return
        timer = threading.Timer(delay_s, wake)
        timer.daemon = True
        timer.start()

    def _collect(self, first: _Job) -> tuple[list[_Job], Any]:
        """Jobs that arrive within the collection window, and the control item that ended it early.

        The window closes `collect_ms` after the latest arrival, and stays open (for at most
        `COLLECT_GROWTH` windows in all) until as many requests have come as the last batch held:
        callers whose answers left together send their next requests some ms apart, as each response is
        written, and a batch closed before the last of them arrives makes it wait a whole generation."""
        batch, now = [first], time.monotonic()
        deadline, cap = now + self.collect_s, now + self.collect_s * COLLECT_GROWTH
        expected = min(self._last_rows, self.max_batch)
        while len(batch) < self.max_batch:
            wait_until = cap if len(batch) < expected else deadline
            try:
                item = self._queue.get(timeout=max(0.0, wait_until - time.monotonic()))
            except queue.Empty:
                break
            if item is _WAKE:
                continue
            if not isinstance(item, _Job):
                return batch, item
            batch.append(item)
            deadline = min(cap, time.monotonic() + self.collect_s)
        self._last_rows = len(batch)
        return batch, None

    def _take_spare(self, most: int, sampling: set[tuple[Any, ...]] | None) -> list[_Job]:
        """Up to `most` spare jobs, oldest first; with `sampling`, only jobs that can join those rows."""
        taken: list[_Job] = []
        with self._spare_lock:
            for job in list(self._spare):
                if len(taken) >= most:
                    break
                if sampling is None or job.ask.sampling() in sampling:
                    self._spare.remove(job)
                    taken.append(job)
        return taken

    def _generate(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        for job in [j for j in live if j.cancel is not None and j.cancel.is_set()]:
            live.remove(job)  # its caller went away while it waited
            job.future.set_result(Answer("", 0, 0, "cancelled", 0))
        if not live:
            return
        live.sort(key=lambda j: j.ask.adapter or BASE)  # each version's rows one slice (`mixed_lora`)
        try:
            answers = self._answer(live)
        except Exception as error:  # noqa: BLE001 - the callers get the error; the thread serves on
            for job in live:
                job.future.set_exception(error)
            return
        for job, answer in zip(live, answers, strict=True):
            job.future.set_result(answer)

    @contextlib.contextmanager
    def _adapters(self, sampling: dict[str, Any], names: list[str]) -> Iterator[None]:
        """Which adapter each row runs on. One adapter for every row: made active, the plain forward
        (PEFT's per-row path costs ~10% even then); several: each version's slice of rows through its own
        adapter (`mixed_lora`), or PEFT's one name per row (`adapter_names`) where that cannot apply."""
        if not hasattr(self.model, "peft_config"):
            yield
        elif len(set(names)) > 1 and mixed_lora.supports(self.model, set(names) - {BASE}):
            with mixed_lora.grouped_rows(self.model, names):
                yield
        elif len(set(names)) > 1:
            sampling["adapter_names"] = names
            yield
        elif names[0] == BASE:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(names[0])
            yield

    def _answer(self, jobs: list[_Job]) -> list[Answer]:
        import torch
        from transformers import StoppingCriteriaList

        tokenizer, asks = self.tokenizer, [j.ask for j in jobs]
        batch = tokenizer([a.prompt for a in asks], return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(next(self.model.parameters()).device)
        first = asks[0]
        sampling: dict[str, Any] = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
            if first.seed is not None:
                torch.manual_seed(first.seed)
        rows = _Rows(tokenizer, jobs)
        with torch.inference_mode(), self._adapters(sampling, [a.adapter or BASE for a in asks]):
            self.model.generate(
                **batch,
                max_new_tokens=max(a.max_new_tokens for a in asks),
                pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList([rows]),
                **sampling,
            )
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        return [rows.answer(i, int(prompt_tokens[i])) for i in range(len(jobs))]


class _Row:
    def __init__(self, job: _Job) -> None:
        self.job = job
        self.tokens: list[int] = []
        self.text = ""  # the answer so far, as far as it can be sent
        self.sent = ""  # what a streaming caller has received
        self.finish: str | None = None  # why the row ended, once it has
        self.generated = 0  # tokens generated, the end-of-sequence token included


class _Rows:
    """A stopping criterion following each row of one `generate` call (see the module's docstring)."""

    def __init__(self, tokenizer: Any, jobs: list[_Job]) -> None:
        self.tokenizer, self.rows = tokenizer, [_Row(j) for j in jobs]

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if row.finish is None:
                self._advance(row, int(token))
        return torch.tensor([row.finish is not None for row in self.rows], device=input_ids.device)

    def _advance(self, row: _Row, token: int) -> None:
        ask = row.job.ask
        row.generated += 1
        if token == self.tokenizer.eos_token_id:
            row.finish = "stop"
        else:
            row.tokens.append(token)
            if len(row.tokens) >= ask.max_new_tokens:
                row.finish = "length"
        if row.finish is None and row.job.cancel is not None and row.job.cancel.is_set():
            row.finish = "cancelled"
        if ask.stop or row.job.on_text is not None or row.finish is not None:
            self._read(row)

    def _read(self, row: _Row) -> None:
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        cuts = [text.index(s) for s in row.job.ask.stop if s in text]
        if cuts:
            text, row.finish = text[: min(cuts)], "stop"
        if row.finish == "cancelled":
            return  # what the caller received is what was answered
        row.text = text.strip() if row.finish is not None else _safe_prefix(text, row.job.ask.stop)
        if row.job.on_text is not None and row.text.startswith(row.sent) and len(row.text) > len(row.sent):
            piece, row.sent = row.text[len(row.sent) :], row.text
            row.job.on_text(piece)

    def answer(self, index: int, prompt_tokens: int) -> Answer:
        row = self.rows[index]
        if row.finish is None:  # generate ended before the row did (the batch's length limit)
            row.finish = "length"
            self._read(row)
        text = row.sent if row.finish == "cancelled" else row.text
        return Answer(text, prompt_tokens, row.generated, row.finish, len(self.rows))


def _safe_prefix(text: str, stops: tuple[str, ...]) -> str:
    """What of a running row's text can be sent without being taken back: no leading or trailing
    whitespace (the answer is stripped), no half character, no tail that may begin a stop string."""
    text = text.strip().removesuffix("\ufffd").rstrip()
    for k in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stops):
            return text[:-k].rstrip()
    return text


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
