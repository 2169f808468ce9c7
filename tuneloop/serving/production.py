"""What a server makes of its answers once they are stored: traces, per-version figures, and the feedback
exchanged with MLflow. Every MLflow call here runs on a thread of its own, never on a request's path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from functools import cache
from typing import Any

from tuneloop.errors import Overloaded
from tuneloop.names import serve_experiment
from tuneloop.serving.capture import Recorder
from tuneloop.serving.figures import ServingFigures, ServingRun
from tuneloop.serving.split import TrafficSplit
from tuneloop.serving.tracing import TraceOptions, Tracer
from tuneloop.serving.worker import Periodic
from tuneloop.store.records import NewRecord, RecordKind

log = logging.getLogger("tuneloop.serve")


class Production:
    def __init__(self, rc: Any, name: str, address: str, recorder: Recorder, split: TrafficSplit) -> None:
        limits = rc.settings.serve
        self.rc, self.name, self._recorder, self._split = rc, name, recorder, split
        self.figures = ServingFigures()
        self.tracer = (
            Tracer(
                name,
                cache(self._experiment_id),
                cache(self._model_id),
                rc.stores.traces,
                rc.settings.scrub,
                TraceOptions(share=limits.trace_share, redact=limits.trace_redact, max_queue=limits.trace_queue),
            )
            if limits.capture and limits.trace_share > 0  # a trace shows a stored record: none without capture
            else None
        )
        self.run = ServingRun(rc, name, address, self.figures, self._server_figures, every_s=limits.figures_seconds)
        self._feedback = Periodic("tuneloop-feedback", rc.settings.feedback.sync_seconds, self.sync_feedback)

    def keep(self, rows: list[NewRecord]) -> Future[None]:
        """Store `rows` (resolved once committed); once stored they are traced and counted."""
        written = self._recorder.write(rows)
        written.add_done_callback(lambda done: None if done.exception() else self._stored(rows))
        return written

    def _stored(self, rows: list[NewRecord]) -> None:
        if self.tracer is not None:
            self.tracer.offer(rows)
        for row in rows:
            if row.kind == RecordKind.SHADOW:
                self.figures.shadow_answered(row.version)
            else:
                self.figures.answered(row.version, row.latency_ms or 0.0, row.meta["usage"]["completion_tokens"])

    @contextmanager
    def counting_failures(self, version: int) -> Iterator[None]:
        """Count what fails inside as the version's 429 or server error (a caller's own mistake is neither)."""
        try:
            yield
        except Overloaded:
            self.figures.rejected(version)
            raise
        except Exception as error:
            if getattr(error, "status", 500) >= 500:
                self.figures.failed(version)
            raise

    def trace_counts(self) -> dict[str, Any]:
        if self.tracer is None:
            return {"enabled": False}
        return {"enabled": True, "share": self.tracer.options.share} | self.tracer.counts.as_dict()

    def sync_feedback(self) -> None:
        from tuneloop.monitors.ingestion import trace_feedback

        try:
            result = trace_feedback.sync(self.rc, self.name)
        except Exception as error:  # noqa: BLE001 - MLflow down: the next round tries again
            log.warning("exchanging feedback with MLflow failed: %s", self.rc.settings.scrub(str(error))[:300])
            return
        if result.pushed or result.pulled:
            log.info("feedback exchanged with MLflow: %s", result.as_dict())

    def close(self) -> None:
        """Export what is queued, log the last figures, exchange feedback once more."""
        if self.tracer is not None:
            self.tracer.close()
        self.run.close()
        self._feedback.close()

    def _server_figures(self) -> dict[str, float]:
        shadow = self._split.shadow_counts.as_dict()
        figures = {f"shadow/{k}": float(v) for k, v in shadow.items()}
        if self.tracer is not None:
            figures |= {f"traces/{k}": float(v) for k, v in self.tracer.counts.as_dict().items()}
        return figures

    def _experiment_id(self) -> str:
        from tuneloop.registry.tracking import experiment_id

        return experiment_id(self.rc.mlflow, self.rc.settings, serve_experiment(self.name))

    def _model_id(self, version: int) -> str | None:
        """The logged model behind a version: MLflow's SQL registry keeps it only as the version's source."""
        mv = self.rc.model_version(self.name, version)
        source = mv.source or ""
        return mv.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)
