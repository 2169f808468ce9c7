"""Per-version serving figures: counted as requests are answered, logged every `serve.figures_seconds` as
metrics of this server's run in the served model's experiment (`v<N>/requests`, `.../latency_p95_ms`, ...),
and written on each served version (tag `tuneloop.serving`, shown on its registry page).

The reporter's thread does every MLflow call; when MLflow cannot be reached, the interval's figures are
kept and logged with the next one that can be, and serving goes on.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from tuneloop.names import RunTag, Tag, serving_metric
from tuneloop.serving.worker import Periodic

log = logging.getLogger("tuneloop.serve")

DESCRIBE_EVERY_S = 300.0  # a version's registry page is rewritten at most this often (its run has every interval)


@dataclass
class _Interval:
    requests: int = 0
    completion_tokens: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    rejected: int = 0
    shadow_answers: int = 0

    def merge(self, other: _Interval) -> None:
        self.requests += other.requests
        self.completion_tokens += other.completion_tokens
        self.latencies_ms += other.latencies_ms
        self.errors += other.errors
        self.rejected += other.rejected
        self.shadow_answers += other.shadow_answers


class ServingFigures:
    """Counters per version, safe to call from the event loop and the model and recorder threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: dict[int, _Interval] = {}
        self._totals: dict[int, int] = {}
        self._since = time.monotonic()

    def answered(self, version: int, latency_ms: float, completion_tokens: int) -> None:
        with self._lock:
            interval = self._now.setdefault(version, _Interval())
            interval.requests += 1
            interval.completion_tokens += completion_tokens
            interval.latencies_ms.append(latency_ms)
            self._totals[version] = self._totals.get(version, 0) + 1

    def shadow_answered(self, version: int) -> None:
        with self._lock:
            self._now.setdefault(version, _Interval()).shadow_answers += 1

    def failed(self, version: int) -> None:
        with self._lock:
            self._now.setdefault(version, _Interval()).errors += 1

    def rejected(self, version: int) -> None:
        with self._lock:
            self._now.setdefault(version, _Interval()).rejected += 1

    def take(self) -> tuple[dict[int, _Interval], dict[int, int], float]:
        """The interval so far (then a new one starts), the totals, and the interval's length in seconds."""
        with self._lock:
            served = set(self._now) | set(self._totals)  # a version once served reports its quiet intervals too
            taken, self._now = {v: self._now.get(v) or _Interval() for v in served}, {}
            now = time.monotonic()
            seconds, self._since = now - self._since, now
            return taken, dict(self._totals), seconds

    def give_back(self, taken: dict[int, _Interval]) -> None:
        """An interval that could not be logged joins the next one."""
        with self._lock:
            for version, interval in taken.items():
                self._now.setdefault(version, _Interval()).merge(interval)


def summary(interval: _Interval, total: int, seconds: float) -> dict[str, float]:
    """The figures of one version over one interval."""
    figures = {
        "requests": float(interval.requests),
        "completion_tokens_per_s": interval.completion_tokens / seconds if seconds > 0 else 0.0,
        "errors": float(interval.errors),
        "rejected_429": float(interval.rejected),
        "shadow_answers": float(interval.shadow_answers),
        "requests_total": float(total),
    }
    if interval.latencies_ms:
        quantiles: list[float] = np.percentile(interval.latencies_ms, [50, 95]).tolist()
        p50, p95 = quantiles
        figures |= {"latency_p50_ms": p50, "latency_p95_ms": p95}
    return figures


class ServingRun:
    """This server's run: started on the first report, its figures logged every `every_s`, ended on close."""

    def __init__(
        self,
        rc: Any,
        name: str,
        address: str,
        figures: ServingFigures,
        extra: Callable[[], dict[str, float]],
        *,
        every_s: float,
    ) -> None:
        self.rc, self.name, self.address, self.figures, self.extra = rc, name, address, figures, extra
        self.every_s, self.step = every_s, 0
        self._described: dict[int, float] = {}  # when each version's page was last rewritten (monotonic)
        self.run_id: str | None = None
        self._reporter = Periodic("tuneloop-figures", every_s, self.report)

    def close(self) -> None:
        """Log the last interval and end the run (FINISHED)."""
        self._reporter.close()
        if self.run_id is not None:
            try:
                self.rc.mlflow.set_terminated(self.run_id, "FINISHED")
            except Exception as error:  # noqa: BLE001 - MLflow down at shutdown: the run stays RUNNING
                log.warning("ending serving run %s failed: %s", self.run_id, type(error).__name__)

    def report(self) -> None:
        taken, totals, seconds = self.figures.take()
        try:
            self._log(taken, totals, seconds)
        except Exception as error:  # noqa: BLE001 - kept for the next interval; serving goes on
            self.figures.give_back(taken)
            log.warning("logging serving figures failed: %s", self.rc.settings.scrub(str(error))[:300])

    def _log(self, taken: dict[int, Any], totals: dict[int, int], seconds: float) -> None:
        from mlflow.entities import Metric

        by_version = {v: summary(taken.get(v, _Interval()), totals.get(v, 0), seconds) for v in taken}
        run_id = self._run_id()
        now_ms = int(time.time() * 1000)
        metrics = [
            Metric(serving_metric(version, figure), value, now_ms, self.step)
            for version, figures in by_version.items()
            for figure, value in figures.items()
        ] + [Metric(key, value, now_ms, self.step) for key, value in self.extra().items()]
        if metrics:
            self.rc.mlflow.log_batch(run_id, metrics=metrics)
        self.step += 1
        for version, figures in by_version.items():
            due = time.monotonic() >= self._described.get(version, float("-inf")) + max(self.every_s, DESCRIBE_EVERY_S)
            if due and taken[version] != _Interval():  # a quiet interval leaves the page as it is
                self._describe(version, figures, seconds)
                self._described[version] = time.monotonic()

    def _run_id(self) -> str:
        if self.run_id is None:
            from tuneloop.names import serve_experiment
            from tuneloop.registry.tracking import experiment_id

            experiment = experiment_id(self.rc.mlflow, self.rc.settings, serve_experiment(self.name))
            run = self.rc.mlflow.create_run(
                experiment,
                run_name=f"serve {self.name} on {self.address}",
                tags={
                    RunTag.SERVE_MODEL: self.name,
                    RunTag.SERVE_ADDRESS: self.address,
                    "mlflow.note.content": f"`tuneloop serve {self.name}` on {self.address} (pid {os.getpid()}): "
                    f"per-version figures every {self.every_s:g} s, as `v<N>/<figure>`.",
                },
            )
            self.run_id = str(run.info.run_id)
        return self.run_id

    def _describe(self, version: int, figures: dict[str, float], seconds: float) -> None:
        """The version's latest figures on its registry page (its tag, then its description)."""
        from tuneloop.registry import descriptions

        shown = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "server": self.address,
            "seconds": round(seconds, 1),
        } | {k: round(v, 2) for k, v in figures.items()}
        self.rc.mlflow.set_model_version_tag(self.name, str(version), Tag.SERVING, json.dumps(shown))
        descriptions.refresh(self.rc, self.name, [version])
