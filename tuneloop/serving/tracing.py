"""Served requests as MLflow traces in the served model's experiment (`<prefix>-serve-NAME`).

A record is exported once it is stored (records are the system of record; a trace is a view of one):
the `Tracer`'s thread takes what is queued, builds one trace per record and writes it to MLflow itself,
so an export that fails is known and counted (`lost`) instead of being logged and forgotten. The queue is
bounded and `offer` never waits: a request is never slowed or failed by tracing. After a failed export
the tracer pauses, counting what arrives meanwhile as lost, so an unreachable MLflow costs one timeout,
not one per request.

A trace's id is its record's (`cmpl-<hex>` is traced as `tr-<hex>`), so feedback posted by record id
finds its trace; its tags name the record, version, kind and, for a shadow answer, the live record it
shadows (`tuneloop.pair_of`). No token is ever in a trace, `user` is the record's hash of it, secrets
held by the settings are masked in prompts and answers, and `serve.trace_redact` replaces both by
their length. Which requests are traced is drawn from the live record's id, so a shadow answer is
traced exactly when the live answer it shadows is.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tuneloop.names import SpanAttribute, TraceTag
from tuneloop.serving.counts import Counts
from tuneloop.serving.worker import CLOSE, QueueWorker
from tuneloop.store.records import NewRecord, RecordKind
from tuneloop.store.traces import TraceLink, TraceStore

log = logging.getLogger("tuneloop.serve")

PAUSE_AFTER_FAILURE_S = 10.0
# Callers whose answers just left send their next requests within a few ms, and a batch closes once they
# stop arriving: export work done in that burst (Python, holding the GIL) delays their arrival and splits
# the next batch. Waiting this long after a record is offered moves the export past the burst, into the
# generation that follows, and exports more traces per call.
SETTLE_S = 0.3
MOST_PER_ROUND = 64
PREVIEW_CHARS = 1000


def trace_id_of(record_id: str) -> str:
    """`cmpl-<32 hex>` -> `tr-<32 hex>`; any other id gets a stable id derived from it."""
    hex_part = record_id.removeprefix("cmpl-")
    if len(hex_part) != 32 or any(c not in "0123456789abcdef" for c in hex_part):
        hex_part = hashlib.sha256(record_id.encode()).hexdigest()[:32]
    return f"tr-{hex_part}"


def traced(record_id: str, share: float) -> bool:
    """Whether the request whose live record is `record_id` is traced: a fixed draw per record id."""
    if share >= 1.0:
        return True
    point = int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "big") / 2**64
    return point < share


@dataclass(frozen=True)
class TraceOptions:
    share: float = 1.0
    redact: bool = False
    max_queue: int = 10_000


class Tracer(QueueWorker):
    """One exporter thread per server: stored records in, MLflow traces out."""

    def __init__(
        self,
        name: str,
        experiment_id: Callable[[], str],
        model_id: Callable[[int], str | None],
        links: TraceStore,
        scrub: Callable[[str], str],
        options: TraceOptions,
    ) -> None:
        # `lost`: MLflow unreachable or failing, or the queue full; the records are stored all the same
        self.name, self.options, self.counts = name, options, Counts("exported", "lost")
        self._experiment_id, self._model_id, self._links, self._scrub = experiment_id, model_id, links, scrub
        self._paused_until = 0.0
        self._client: Any = None
        super().__init__("tuneloop-tracer", max_queue=options.max_queue)

    def _run(self) -> None:
        self._warm_up()
        super()._run()

    def _warm_up(self) -> None:
        """Import MLflow's tracing client and find the experiment now, not while the first answers wait."""
        try:
            from mlflow.tracing.client import TracingClient

            self._client = TracingClient()
            self._experiment_id()
        except Exception as error:  # noqa: BLE001 - the first export tries again
            log.warning("preparing trace export failed: %s", self._scrub(str(error))[:300])

    def offer(self, records: Sequence[NewRecord]) -> None:
        """Queue the sampled ones of `records` (already stored) for export; never waits."""
        chosen = [r for r in records if traced(r.pair_of or r.id, self.options.share)]
        if not chosen:
            return
        try:
            self._queue.put_nowait(chosen)
        except queue.Full:
            self.counts.add(lost=len(chosen))

    def close(self, timeout_s: float = 30) -> None:
        """Export what is queued (within `timeout_s`); what is left is counted as lost."""
        super().close(timeout_s)
        left = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not CLOSE:
                left += len(item)
        self.counts.add(lost=left)

    def _handle(self, item: list[NewRecord]) -> object | None:
        batch, closing = list(item), None
        settled = time.monotonic() + SETTLE_S
        while len(batch) < MOST_PER_ROUND:
            try:
                more = self._queue.get(timeout=max(0.0, settled - time.monotonic()))
            except queue.Empty:
                break
            if more is CLOSE:
                closing = CLOSE
                break
            batch.extend(more)
        self._export(batch)
        return closing

    def _export(self, batch: list[NewRecord]) -> None:
        if time.monotonic() < self._paused_until:
            self.counts.add(lost=len(batch))
            return
        links: list[TraceLink] = []
        try:
            from mlflow.tracing.client import TracingClient

            self._client = self._client or TracingClient()
            experiment_id = self._experiment_id()
            traces = [build_trace(r, experiment_id, self._model_id(r.version), self._text) for r in batch]
            # One call stores every span and creates each trace (its tags, previews, token usage): about 2 ms a
            # trace on SQLite; `start_trace` then adds what only it can set, the metadata (the model link).
            self._client.log_spans(experiment_id, [span for trace in traces for span in trace.data.spans])
            for record, trace in zip(batch, traces, strict=True):
                self._client.start_trace(trace.info)
                links.append(TraceLink(record.id, record.model, trace.info.trace_id, experiment_id, datetime.now(UTC)))
        except Exception as error:  # noqa: BLE001 - MLflow down or failing: count, pause, serve on
            self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_S
            self.counts.add(lost=len(batch) - len(links))
            log.warning(
                "exporting %d trace(s) to MLflow failed (%s); records are stored, traces are counted as lost",
                len(batch) - len(links),
                self._scrub(str(error))[:300],
            )
        self.counts.add(exported=len(links))
        try:
            self._links.add_links(links)
        except Exception as error:  # noqa: BLE001 - the traces exist; only feedback cannot find them
            log.warning("recording %d trace link(s) failed: %s", len(links), type(error).__name__)

    def _text(self, text: str) -> str:
        return f"[redacted: {len(text)} characters]" if self.options.redact else self._scrub(text)


def build_trace(record: NewRecord, experiment_id: str, model_id: str | None, text: Callable[[str], str]) -> Any:
    """The MLflow trace of one stored record: one root span, chat or completion, with its token usage."""
    from mlflow.entities import Trace, TraceData, TraceInfo, TraceLocation, TraceState
    from mlflow.entities.span import Span

    trace_id = trace_id_of(record.id)
    hex_id = trace_id.removeprefix("tr-")
    end_ns = int(record.ts.timestamp() * 1e9)
    start_ns = end_ns - int((record.latency_ms or 0.0) * 1e6)
    messages = record.meta.get("messages")
    chat = messages is not None
    inputs: dict[str, Any] = (
        {"messages": [{"role": m["role"], "content": text(m["content"])} for m in messages]}
        if messages is not None
        else {"prompt": text(record.prompt)}
    )
    answer = text(record.output)
    outputs: dict[str, Any] = (
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
        if chat
        else {"choices": [{"index": 0, "text": answer}]}
    )
    usage_in = record.meta.get("usage", {})
    usage = {
        "input_tokens": int(usage_in.get("prompt_tokens", 0)),
        "output_tokens": int(usage_in.get("completion_tokens", 0)),
    }
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    span_name = "chat.completions" if chat else "completions"
    attributes = {
        "mlflow.traceRequestId": trace_id,
        "mlflow.experimentId": experiment_id,
        "mlflow.spanType": "CHAT_MODEL" if chat else "LLM",
        "mlflow.spanInputs": inputs,
        "mlflow.spanOutputs": outputs,
        "mlflow.chat.tokenUsage": usage,
        SpanAttribute.VERSION: record.version,
        SpanAttribute.FINISH_REASON: record.meta.get("finish_reason"),
        SpanAttribute.SAMPLING: record.meta.get("sampling"),
    }
    tags = {
        "mlflow.traceName": span_name,
        TraceTag.RECORD: record.id,
        TraceTag.MODEL: record.model,
        TraceTag.VERSION: str(record.version),
        TraceTag.KIND: str(record.kind or RecordKind.LIVE),
    }
    if record.alias:
        tags[TraceTag.ALIAS] = record.alias
    if record.pair_of:
        tags[TraceTag.PAIR_OF] = record.pair_of
    if record.meta.get("user"):
        tags[TraceTag.USER] = str(record.meta["user"])
    attributes |= {f"mlflow.traceTag.{key}": value for key, value in tags.items()}  # the trace's tags
    span = Span.from_dict(
        {
            "trace_id": _b64(int(hex_id, 16), 16),
            "span_id": _b64(int(hex_id[:16], 16) or 1, 8),
            "parent_span_id": None,
            "name": span_name,
            "start_time_unix_nano": start_ns,
            "end_time_unix_nano": end_ns,
            "events": [],
            "status": {"code": "STATUS_CODE_OK", "message": ""},
            "attributes": {key: json.dumps(value) for key, value in attributes.items()},
            "links": [],
        }
    )
    metadata = {
        "mlflow.trace_schema.version": "3",
        "mlflow.trace.tokenUsage": json.dumps(usage),
        "mlflow.source.name": f"tuneloop serve {record.model}",
        "mlflow.source.type": "LOCAL",
    } | ({"mlflow.modelId": model_id} if model_id else {})
    info = TraceInfo(
        trace_id=trace_id,
        trace_location=TraceLocation.from_experiment_id(experiment_id),
        request_time=start_ns // 1_000_000,
        execution_duration=(end_ns - start_ns) // 1_000_000,
        state=TraceState.OK,
        request_preview=_preview(inputs["messages"][-1]["content"] if chat else inputs["prompt"]),
        response_preview=_preview(answer),
        trace_metadata=metadata,
        tags=tags,
    )
    return Trace(info=info, data=TraceData(spans=[span]))


def _b64(number: int, size: int) -> str:
    return base64.b64encode(number.to_bytes(size, "big")).decode()


def _preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
