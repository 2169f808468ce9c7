"""Declared monitors: `add` stores one, `judge_pending` judges its completed windows of production
records and logs each to MLflow (`rejudge_latest`: a `--latest` look), `status` shows every monitor's
last state. `tuneloop.monitors.judging.check` is the path callers take.

Each monitor has one MLflow run (experiment `<prefix>monitors`) created by `add`: the pinned reference
records as an artifact (`reference/<sha256>/records.jsonl`, see `monitors.references`), then a step
per checked window: `drift` (0/1), `records`, `p/<check>` and `stat/<check>` per check, an HTML report
per window and a PNG of the smallest p-value over time against the alarm threshold. Reference
statistics (and embeddings) are built once per reference digest and set of checks, and cached under
`cache_dir`; a lost cache is rebuilt from the run's artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.errors import Conflict, InvalidInput, NotFound
from tuneloop.monitors import reports, tenures
from tuneloop.monitors.drift.checks import Record, WindowResult
from tuneloop.monitors.drift.judge import check_window
from tuneloop.monitors.monitor_spec import MonitorSpec, load_monitor
from tuneloop.monitors.pending import Floor, next_time_index, pending_windows
from tuneloop.monitors.references import (
    as_record,
    embedder,
    materialise,
    pin_records,
    pinned_records,
    require_enough,
    statistics,
)
from tuneloop.monitors.windowing import closes_at
from tuneloop.names import Experiment, RunTag
from tuneloop.registry.client import RegistryClient
from tuneloop.store import Transaction
from tuneloop.store.monitors import JudgedWindow, MonitorRow, WindowPlace
from tuneloop.store.records import ModelSlice


def add(rc: RegistryClient, path: Path, *, replace: bool = False) -> dict[str, Any]:
    spec = load_monitor(path)
    if spec.reference is None or spec.model is None:
        raise InvalidInput(f"monitor `{path}` needs `model` and `reference`", hint="see examples/monitors/support.yaml")
    rc.models.resolve(spec.model)  # an unknown model fails here, not at the first check
    existing = rc.stores.monitors.get(spec.name)
    if existing is not None and not replace:
        raise Conflict(f"monitor `{spec.name}` exists", hint="pass --replace to update it")
    _, version, _ = rc.models.resolve(spec.model)
    records, source = materialise(rc, spec)
    require_enough(records, source)  # before a run exists
    run_id = existing.mlflow_run_id if existing else None
    created = run_id is None
    try:
        if created:
            run_id = _create_run(rc, spec)
        assert run_id is not None
        digest = pin_records(rc, spec, run_id, records, source)
        _describe(rc, spec, run_id, digest, source)
        rc.stores.monitors.save(
            spec.name, spec.model_dump(mode="json"), digest, run_id, version=version, reference_source=source
        )
    except Exception:
        if created and run_id is not None:
            rc.mlflow.delete_run(run_id)  # nothing half-written: no run without its monitor
        raise
    return {
        "monitor": spec.name,
        "model": spec.model,
        "reference": source,
        "reference_records": len(records),
        "reference_sha256": digest,
        "checks": spec.checks,
        "run_id": run_id,
    }


def rejudge_latest(rc: RegistryClient, name: str) -> dict[str, Any]:
    """Judge the monitor's newest records again — the newest `size` (count) or the last `duration` (time) —
    and log it: a look that neither moves the monitor's cursor nor counts as alert evidence."""
    row, spec = _monitor(rc, name)
    watch = tenures.watch(rc, row, spec)
    if not watch.ready:
        raise Conflict(
            f"monitor `{name}` has no reference for version {watch.model.version} yet: {watch.notes[-1]}",
            hint="check again once its first records have arrived",
        )
    model, after = watch.model, watch.floor.after_seq
    if spec.window.kind == "time":
        now = datetime.now(UTC)
        rows = rc.stores.records.of(model, start=now - spec.window.length, after_seq=after)
        place = WindowPlace(
            last_seq=rows[-1].seq if rows else 0,
            start=now - spec.window.length,
            end=now,
            rejudged=True,
            version=model.version,
        )
    else:
        rows = rc.stores.records.of(model, newest=int(spec.window.size), after_seq=after)
        place = WindowPlace(
            last_seq=rows[-1].seq if rows else 0,
            first_seq=rows[0].seq if rows else None,
            rejudged=True,
            version=model.version,
        )
    judge = _Judge(rc, row, spec, watch.tenure.reference_sha256)
    out = judge(place, [as_record(r) for r in rows])
    judge.plot()
    return out


@dataclass
class Pending:
    """What `judge_pending` did: the windows judged, the late records counted, for which version."""

    judged: list[dict[str, Any]]
    late: int
    version: int
    notes: list[str] = field(default_factory=list)


def judge_pending(rc: RegistryClient, name: str, *, limit: int = 1000) -> Pending:
    """Judge every window of monitor `name` that completed since the last judged one of the version it
    watches, oldest first; and count the records that arrived for windows already judged.

    Count windows complete when their last record arrives, time windows `grace` after they end (see
    `monitors.windowing`); records that are the version's reference are not judged against it (see
    `monitors.tenures`). Called again with nothing new, it judges nothing (and cannot stretch an
    alert's K-window streak).
    """
    row, spec = _monitor(rc, name)
    watch = tenures.watch(rc, row, spec)
    model = watch.model
    upto_seq = rc.stores.records.last_seq()
    late = rc.stores.monitors.count_late(name, model, upto_seq=upto_seq) if spec.window.kind == "time" else 0
    if not watch.ready:
        return Pending([], late, model.version, watch.notes)
    last = rc.stores.monitors.last_window(name, counted_only=True, version=model.version)
    windows = pending_windows(
        rc.stores, spec, model, last, floor=watch.floor, upto_seq=upto_seq, now=datetime.now(UTC), limit=limit
    )
    if not windows:
        return Pending([], late, model.version, watch.notes)
    judge = _Judge(rc, row, spec, watch.tenure.reference_sha256)
    judged = [judge(w.place, w.records) for w in windows]
    judge.plot()  # once per check: a catch-up over many windows draws one picture
    return Pending(judged, late, model.version, watch.notes)


def next_window(rc: RegistryClient, name: str) -> str:
    """Where the monitor's next window stands, in words."""
    _, spec = _monitor(rc, name)
    model = tenures.holder(rc, spec)
    floor = tenures.floor_of(spec, rc.stores.monitors.tenure(name, model.version))
    last = rc.stores.monitors.last_window(name, counted_only=True, version=model.version)
    if spec.window.kind == "time":
        index = next_time_index(rc.stores, spec, model, last, floor)
        if index is None:
            return f"no records of {spec.model} yet" + _elsewhere(rc, spec)
        return f"the next window closes at {closes_at(index, spec.window).isoformat()} (window end + grace)"
    arrived = len(_next_window_records(rc, spec, model, last, floor))
    return f"{arrived} of the next window's {spec.window.size} records have arrived" + (
        _elsewhere(rc, spec) if last is None else ""
    )


def _next_window_records(
    rc: RegistryClient, spec: MonitorSpec, model: ModelSlice, last: JudgedWindow | None, floor: Floor
) -> list[Any]:
    """The records of the next, not yet complete, count window."""
    size, stride = spec.window.size, spec.window.count_stride
    if last is None:
        first = floor.after_seq + 1 if floor.after_seq is not None else None
        return rc.stores.records.page(model, from_seq=first, limit=size, not_before=floor.not_before)
    first = last.first_seq if last.first_seq is not None else last.last_seq + 1
    return rc.stores.records.page(
        model, from_seq=first, skip=stride if last.first_seq is not None else 0, limit=size, not_before=floor.not_before
    )


def window_dict(rc: RegistryClient, name: str, window: JudgedWindow) -> dict[str, Any]:
    """A stored window as `monitor check --json` shows one."""
    out: dict[str, Any] = {
        "monitor": name,
        "window_id": window.id,
        "status": str(window.status),
        "size": window.size,
        "drifted_checks": window.drifted_checks,
        "checked_at": window.checked_at.isoformat(),
        "late": window.late,
        "version": window.version,
        **_place(window.first_seq, window.last_seq, window.start, window.end),
    }
    return out


def _place(first_seq: int | None, last_seq: int, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    if start is not None:
        return {"start": start.isoformat(), "end": end.isoformat() if end else None}
    return {"first_seq": first_seq, "last_seq": last_seq}


def why_small(rc: RegistryClient, spec: MonitorSpec, size: int) -> str:
    """Why a window is too small to judge, naming where else this model's records are (other aliases or versions)."""
    name, version, alias = rc.models.resolve(spec.model or "")
    watched = f"alias `{alias}`" if alias else f"version {version}"
    return (
        f"{size} record(s) of {name} under {watched} in the window; {spec.min_size} are needed (min_size)"
        + _elsewhere(rc, spec)
    )


def _elsewhere(rc: RegistryClient, spec: MonitorSpec) -> str:
    """Where else the monitored model's records are, when it has records sent another way ("" when not)."""
    name, version, alias = rc.models.resolve(spec.model or "")
    groups = [
        (a, v, n)
        for a, v, n in rc.stores.records.groups(name)
        if not ((a == alias and v == version) if alias else (v == version and a is None))
    ]
    if not groups:
        return ""
    elsewhere = ", ".join(
        f"{n:,} under alias `{a}` (v{v})" if a else f"{n:,} sent as version {v}"
        for a, v, n in sorted(groups, key=lambda g: -g[2])
    )
    return f". This model has other records: {elsewhere} — the monitor watches `{spec.model}` only"


def _monitor(rc: RegistryClient, name: str) -> tuple[MonitorRow, MonitorSpec]:
    row = rc.stores.monitors.get(name)
    if row is None:
        raise NotFound(
            f"no monitor `{name}`",
            hint="add one with `tuneloop monitor add FILE`; `tuneloop monitor status` lists them",
        )
    return row, MonitorSpec.model_validate(row.spec)


class _Judge:
    """Judges windows of one monitor in one check: the reference statistics and the embedder are loaded once."""

    def __init__(self, rc: RegistryClient, row: MonitorRow, spec: MonitorSpec, reference_sha256: str | None) -> None:
        assert reference_sha256 is not None
        self.rc, self.row, self.spec, self.digest = rc, row, spec, reference_sha256
        self.reference = statistics(rc, spec, reference_sha256, None, run_id=row.mlflow_run_id)
        self.embedder = embedder(rc) if "embedding" in spec.checks else None
        self.threshold = float("nan")
        self.reference_records: list[Record] | None = None  # read when an Evidently report needs them

    def __call__(self, place: WindowPlace, window: list[Record]) -> dict[str, Any]:
        rc, spec = self.rc, self.spec
        result = check_window(
            self.reference, window, alpha=spec.alpha, min_size=spec.min_size, checks=spec.checks, embedder=self.embedder
        )
        stats = [
            {"check": c.check, "statistic": c.statistic, "p_value": c.p_value, "drifted": c.drifted}
            for c in result.checks
        ]
        window_id, step = rc.stores.monitors.add_window(
            spec.name,
            place,
            size=result.size,
            status=result.status,
            drifted_checks=list(result.drifted_checks),
            checks=stats,
        )
        assert self.row.mlflow_run_id is not None
        _log(rc, spec, self.row.mlflow_run_id, step, result, place.version)
        self.threshold = result.threshold
        out = {
            "monitor": spec.name,
            "model": spec.model,
            "version": place.version,
            "step": step,
            "window_id": window_id,
            "run_id": self.row.mlflow_run_id,
            **result.as_dict(),
            **_place(place.first_seq, place.last_seq, place.start, place.end),
        }  # a time window's bounds, not its records' span
        if result.status == "drift" and rc.settings.monitors.evidently_reports == "drift":
            out["evidently_report"] = self.log_evidently(step, result, window)
        if place.rejudged:
            out["rejudged"] = True
        if result.status == "not enough data":
            out["notes"] = [*out["notes"], why_small(rc, spec, result.size)]
        return out

    def log_evidently(self, step: int, result: WindowResult, window: list[Record]) -> str:
        if self.reference_records is None:
            self.reference_records = pinned_records(self.rc, self.spec, self.digest, self.row.mlflow_run_id)
        return _log_evidently(self.rc, self.row, self.spec, step, result, window, self.reference_records)

    def plot(self) -> None:
        """Draw `scores.png` from the stored window statistics, the windows judged in this check included."""
        assert self.row.mlflow_run_id is not None
        total, lowest = self.rc.stores.monitors.recent_lowest_p(self.spec.name, reports.PLOTTED_WINDOWS)
        figure = reports.scores_plot(total, lowest, self.threshold)
        try:
            self.rc.mlflow.log_figure(self.row.mlflow_run_id, figure, "scores.png")
        finally:
            import matplotlib.pyplot as plt

            plt.close(figure)  # pyplot keeps every figure until closed: a long-running scheduler would grow without end


def judged_windows(
    rc: RegistryClient,
    name: str,
    *,
    after_id: int = 0,
    previous_seq: int | None = None,
    version: int | None = None,
    tx: Transaction | None = None,
) -> tuple[list[int], list[WindowResult], int | None]:
    """(window ids, results, the newest record's seq) of the windows of monitor `name` (of model `version`)
    judged after window `after_id`, oldest first, as alert rules read them (a `--latest` look is no evidence)."""
    ids, results = [], []
    for window in rc.stores.monitors.windows(name, after_id=after_id, counted_only=True, version=version, tx=tx):
        placed = window.first_seq is not None or window.start is not None
        if not placed and window.last_seq == previous_seq:
            continue  # judged before 0006 by `monitor check` again with no new records: the same evidence, counted once
        previous_seq = window.last_seq
        ids.append(window.id)
        results.append(_result_of(window))
    return ids, results, previous_seq


def _result_of(window: JudgedWindow, threshold: float = float("nan")) -> WindowResult:
    """A stored window's verdict as the checks gave it."""
    from tuneloop.monitors.drift.checks import CheckResult

    if window.checks is not None:
        checks = [CheckResult(**_nan_for_none(c)) for c in window.checks]
    else:  # windows judged before statistics were stored: the drifted names are all we know
        checks = [
            CheckResult(check=n, statistic=float("nan"), p_value=0.0, drifted=True) for n in window.drifted_checks
        ]
    return WindowResult(size=window.size, status=str(window.status), threshold=threshold, checks=checks)


def report(rc: RegistryClient, name: str, *, step: int | None = None) -> dict[str, Any]:
    """Log the Evidently report of the monitor's window at `step` (default: its newest) against its reference."""
    row, spec = _monitor(rc, name)
    total, window = rc.stores.monitors.at_step(name, step)
    if window is None:
        if total == 0:
            raise NotFound(
                f"monitor `{name}` has judged no window yet", hint=f"run `tuneloop monitor check {name}` first"
            )
        raise NotFound(
            f"monitor `{name}` has no window {step}: its windows are 0 to {total - 1}",
            hint="pass `--window` with one of them, or leave it out for the newest",
        )
    now = tenures.holder(rc, spec)
    version = window.version if window.version is not None else now.version
    tenure = rc.stores.monitors.tenure(name, version)
    model = ModelSlice(now.name, version, now.alias)
    records = _records_of(rc, model, tenures.floor_of(spec, tenure), window)
    if len(records) != window.size:
        raise Conflict(
            f"window {window_step(total, step)} of monitor `{name}` held {window.size} records; "
            f"{len(records)} of them are stored now",
            hint="records were deleted since it was judged",
        )
    result = _result_of(window, threshold=spec.alpha / max(1, len(window.checks or window.drifted_checks)))
    at = window_step(total, step)
    digest = tenure.reference_sha256 if tenure is not None and tenure.reference_sha256 else row.reference_sha256
    path = _log_evidently(rc, row, spec, at, result, records, pinned_records(rc, spec, digest, row.mlflow_run_id))
    return {
        "monitor": name,
        "window": at,
        "window_id": window.id,
        "status": str(window.status),
        "size": window.size,
        "run_id": row.mlflow_run_id,
        "artifact": path,
    }


def window_step(total: int, step: int | None) -> int:
    return total - 1 if step is None else step


def _log_evidently(
    rc: RegistryClient,
    row: MonitorRow,
    spec: MonitorSpec,
    step: int,
    result: WindowResult,
    window: list[Record],
    reference: list[Record],
) -> str:
    """Log the Evidently report of a judged window against the reference in the monitor's run; its artifact path."""
    page = reports.evidently_html(
        spec.name, spec.model or "", step, result, spec.alpha, window=window, reference=reference
    )
    path = f"reports/window-{step:05d}-evidently.html"
    assert row.mlflow_run_id is not None
    rc.mlflow.log_text(row.mlflow_run_id, page, path)
    return path


def _records_of(rc: RegistryClient, model: ModelSlice, floor: Floor, window: JudgedWindow) -> list[Record]:
    """The records a stored window was judged on (not those that arrived late for it)."""
    if window.start is not None:
        rows = rc.stores.records.of(
            model, start=window.start, end=window.end, upto_seq=window.last_seq, after_seq=floor.after_seq
        )
        rows = [r for r in rows if floor.not_before is None or r.ts >= floor.not_before]
    elif window.first_seq is not None:
        rows = [
            r
            for r in rc.stores.records.page(
                model, from_seq=window.first_seq, limit=window.size, not_before=floor.not_before
            )
            if r.seq <= window.last_seq
        ]
    else:  # judged before windows knew where they start: the newest records up to its last
        rows = rc.stores.records.of(model, upto_seq=window.last_seq, newest=window.size)
    return [as_record(r) for r in rows]


def status(rc: RegistryClient) -> list[dict[str, Any]]:
    out = []
    for m in rc.stores.monitors.all():
        last = rc.stores.monitors.last_window(m.name)
        out.append(
            {
                "monitor": m.name,
                "model": MonitorSpec.model_validate(m.spec).model,
                "version": last.version if last else None,
                "state": str(last.status) if last else "never checked",
                "drifted_checks": last.drifted_checks if last else [],
                "window_records": last.size if last else 0,
                "checked_at": last.checked_at.isoformat() if last else None,
                "run_id": m.mlflow_run_id,
            }
        )
    return out


def _nan_for_none(check: dict[str, Any]) -> dict[str, Any]:
    """JSON stores a NaN statistic as null; a check result holds it as NaN again."""
    return {k: float("nan") if v is None and k in ("statistic", "p_value") else v for k, v in check.items()}


def _create_run(rc: RegistryClient, spec: MonitorSpec) -> str:
    from tuneloop.registry.tracking import experiment_id

    run = rc.mlflow.create_run(
        experiment_id(rc.mlflow, rc.settings, Experiment.MONITORS),
        run_name=f"monitor {spec.name}",
        tags={RunTag.MONITOR: spec.name, RunTag.MONITOR_MODEL: spec.model or ""},
    )
    return str(run.info.run_id)


def _describe(rc: RegistryClient, spec: MonitorSpec, run_id: str, digest: str, source: str) -> None:
    """Describe the monitor in its run's tags."""
    for key, value in {
        "reference": source[:5000],
        "reference_sha256": digest,
        "alpha": str(spec.alpha),
        "window": spec.window.model_dump_json(exclude_none=True),
        "checks": ",".join(spec.checks),
    }.items():
        rc.mlflow.set_tag(run_id, RunTag.monitor(key), value)


def _log(
    rc: RegistryClient, spec: MonitorSpec, run_id: str, step: int, result: WindowResult, version: int | None
) -> None:
    """One window as metrics at its step; `version` (the version whose answers it held) lets the MLflow
    UI's charts tell one champion's windows from the next one's."""
    from mlflow.entities import Metric

    now = int(datetime.now(UTC).timestamp() * 1000)
    metrics = [
        Metric("drift", float(result.status == "drift"), now, step),
        Metric("records", float(result.size), now, step),
    ]
    if version is not None:
        metrics.append(Metric("version", float(version), now, step))
    for c in result.checks:
        metrics += [Metric(f"p/{c.check}", c.p_value, now, step), Metric(f"stat/{c.check}", c.statistic, now, step)]
    rc.mlflow.log_batch(run_id, metrics=metrics)
    rc.mlflow.log_text(
        run_id,
        reports.window_html(
            spec.name,
            f"{spec.model or ''}" + (f" (answers of v{version})" if version is not None else ""),
            step,
            result,
            spec.alpha,
        ),
        f"reports/window-{step:05d}.html",
    )
