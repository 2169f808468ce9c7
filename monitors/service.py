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

import html
import os
import pickle
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.monitors.backtest import read_records
from tuneloop.monitors.checks import Record, WindowResult
from tuneloop.monitors.drift import Reference, build_reference, check_window
from tuneloop.monitors.embedding import Embedder
from tuneloop.monitors.monitor_spec import MonitorSpec, load_monitor
from tuneloop.monitors.pending import next_time_index, not_before, pending_windows
from tuneloop.monitors.references import as_record, materialise, write_jsonl
from tuneloop.monitors.windowing import closes_at
from tuneloop.registry.client import RegistryClient

from tuneloop.digest import file_sha256
from tuneloop.errors import Conflict, InvalidInput, NotFound
from tuneloop.store import Transaction
from tuneloop.store.monitors import JudgedWindow, MonitorRow, WindowPlace
from tuneloop.store.records import ModelSlice

EXPERIMENT = "monitors"
MIN_REFERENCE = 100


def add(rc: RegistryClient, path: Path, *, replace: bool = False) -> dict[str, Any]:
    spec = load_monitor(path)
    if spec.reference is None or spec.model is None:
        raise InvalidInput(f"monitor `{path}` needs `model` and `reference`", hint="see examples/monitors/support.yaml")
    rc.models.resolve(spec.model)  # an unknown model fails here, not at the first check
    existing = rc.stores.monitors.get(spec.name)
    if existing is not None and not replace:
        raise Conflict(f"monitor `{spec.name}` exists", hint="pass --replace to update it")
    records, source = materialise(rc, spec)
    if len(records) < MIN_REFERENCE:
        raise InvalidInput(f"the reference ({source}) holds {len(records)} records; at least {MIN_REFERENCE} are needed",
                           hint="use a larger file, the eval data or a longer production window")
    staging = Path(rc.settings.cache_dir).expanduser() / "monitor-references"
    staging.mkdir(parents=True, exist_ok=True)
    pinned = write_jsonl(records, staging)
    run_id = existing.mlflow_run_id if existing else None
    created = run_id is None
    try:
        digest = "sha256:" + file_sha256(pinned)
        _statistics(rc, spec, digest, pinned)  # validates the records and fills the cache now
        if created:
            run_id = _create_run(rc, spec)
        _pin(rc, spec, run_id, digest, pinned, source)
        rc.stores.monitors.save(spec.name, spec.model_dump(mode="json"), digest, run_id)
    except Exception:
        if created and run_id is not None:
            rc.mlflow.delete_run(run_id)  # nothing half-written: no run without its monitor
        raise
    finally:
        shutil.rmtree(pinned.parent, ignore_errors=True)
    return {"monitor": spec.name, "model": spec.model, "reference": source, "reference_records": len(records),
            "reference_sha256": digest, "checks": spec.checks, "run_id": run_id}


def rejudge_latest(rc: RegistryClient, name: str) -> dict[str, Any]:
    """Judge the monitor's newest records again — the newest `size` (count) or the last `duration` (time) —
    and log it: a look that neither moves the monitor's cursor nor counts as alert evidence."""
    row, spec = _monitor(rc, name)
    model = _slice(rc, spec)
    if spec.window.kind == "time":
        now = datetime.now(UTC)
        rows = rc.stores.records.of(model, start=now - spec.window.length)
        place = WindowPlace(last_seq=rows[-1].seq if rows else 0, start=now - spec.window.length, end=now, rejudged=True)
    else:
        rows = rc.stores.records.of(model, newest=int(spec.window.size))
        place = WindowPlace(last_seq=rows[-1].seq if rows else 0, first_seq=rows[0].seq if rows else None, rejudged=True)
    judge = _Judge(rc, row, spec)
    return judge(place, [as_record(r) for r in rows])


def judge_pending(rc: RegistryClient, name: str, *, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
    """Judge every window of monitor `name` that completed since the last judged one, oldest first; and
    count the records that arrived for windows already judged. (the windows judged, the late records)

    Count windows complete when their last record arrives, time windows `grace` after they end (see
    `monitors.windowing`); records inside a pinned production-window reference are not judged against it.
    Called again with nothing new, it judges nothing (and cannot stretch an alert's K-window streak).
    """
    row, spec = _monitor(rc, name)
    model = _slice(rc, spec)
    upto_seq = rc.stores.records.last_seq()
    late = rc.stores.monitors.count_late(name, model, upto_seq=upto_seq) if spec.window.kind == "time" else 0
    last = rc.stores.monitors.last_window(name, counted_only=True)
    windows = pending_windows(rc.stores, spec, model, last, upto_seq=upto_seq, now=datetime.now(UTC), limit=limit)
    if not windows:
        return [], late
    judge = _Judge(rc, row, spec)
    return [judge(w.place, w.records) for w in windows], late


def next_window(rc: RegistryClient, name: str) -> str:
    """Where the monitor's next window stands, in words."""
    _, spec = _monitor(rc, name)
    model = _slice(rc, spec)
    last = rc.stores.monitors.last_window(name, counted_only=True)
    if spec.window.kind == "time":
        index = next_time_index(rc.stores, spec, model, last)
        if index is None:
            return f"no records of {spec.model} yet" + _elsewhere(rc, spec)
        return f"the next window closes at {closes_at(index, spec.window).isoformat()} (window end + grace)"
    arrived = len(_next_window_records(rc, spec, model, last))
    return f"{arrived} of the next window's {spec.window.size} records have arrived" + (_elsewhere(rc, spec) if last is None else "")


def _next_window_records(rc: RegistryClient, spec: MonitorSpec, model: ModelSlice, last: JudgedWindow | None) -> list[Any]:
    """The records of the next, not yet complete, count window."""
    size, stride = spec.window.size, int(spec.window.stride)  # type: ignore[call-overload]
    if last is None:
        return rc.stores.records.page(model, limit=size, not_before=not_before(spec))
    first = last.first_seq if last.first_seq is not None else last.last_seq + 1
    return rc.stores.records.page(model, from_seq=first, skip=stride if last.first_seq is not None else 0, limit=size,
                                  not_before=not_before(spec))


def window_dict(rc: RegistryClient, name: str, window: JudgedWindow) -> dict[str, Any]:
    """A stored window as `monitor check --json` shows one."""
    out: dict[str, Any] = {"monitor": name, "window_id": window.id, "status": str(window.status), "size": window.size,
                           "drifted_checks": window.drifted_checks, "checked_at": window.checked_at.isoformat(),
                           "late": window.late, **_place(window.first_seq, window.last_seq, window.start, window.end)}
    return out


def _place(first_seq: int | None, last_seq: int, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    if start is not None:
        return {"start": start.isoformat(), "end": end.isoformat() if end else None}
    return {"first_seq": first_seq, "last_seq": last_seq}


def why_small(rc: RegistryClient, spec: MonitorSpec, size: int) -> str:
    """Why a window is too small to judge, naming where else this model's records are (other aliases or versions)."""
    name, version, alias = rc.models.resolve(spec.model or "")
    watched = f"alias `{alias}`" if alias else f"version {version}"
    return f"{size} record(s) of {name} under {watched} in the window; {spec.min_size} are needed (min_size)" + _elsewhere(rc, spec)


def _elsewhere(rc: RegistryClient, spec: MonitorSpec) -> str:
    """Where else the monitored model's records are, when it has records sent another way ("" when not)."""
    name, version, alias = rc.models.resolve(spec.model or "")
    groups = [(a, v, n) for a, v, n in rc.stores.records.groups(name)
              if not ((a == alias) if alias else (v == version and a is None))]
    if not groups:
        return ""
    elsewhere = ", ".join(f"{n:,} under alias `{a}` (v{v})" if a else f"{n:,} sent as version {v}"
                          for a, v, n in sorted(groups, key=lambda g: -g[2]))
    return f". This model has other records: {elsewhere} — the monitor watches `{spec.model}` only"


def _monitor(rc: RegistryClient, name: str) -> tuple[MonitorRow, MonitorSpec]:
    row = rc.stores.monitors.get(name)
    if row is None:
        raise NotFound(f"no monitor `{name}`", hint="add one with `tuneloop monitor add FILE`; `tuneloop monitor status` lists them")
    return row, MonitorSpec.model_validate(row.spec)


def _slice(rc: RegistryClient, spec: MonitorSpec) -> ModelSlice:
    return ModelSlice(*rc.models.resolve(spec.model or ""))


class _Judge:
    """Judges windows of one monitor in one check: the reference statistics and the embedder are loaded once."""

    def __init__(self, rc: RegistryClient, row: MonitorRow, spec: MonitorSpec) -> None:
        self.rc, self.row, self.spec = rc, row, spec
        self.reference = _statistics(rc, spec, row.reference_sha256, None, run_id=row.mlflow_run_id)
        self.embedder = _embedder(rc) if "embedding" in spec.checks else None

    def __call__(self, place: WindowPlace, window: list[Record]) -> dict[str, Any]:
        rc, spec = self.rc, self.spec
        result = check_window(self.reference, window, alpha=spec.alpha, min_size=spec.min_size, checks=spec.checks,
                              embedder=self.embedder)
        stats = [{"check": c.check, "statistic": c.statistic, "p_value": c.p_value, "drifted": c.drifted} for c in result.checks]
        window_id, step = rc.stores.monitors.add_window(spec.name, place, size=result.size, status=result.status,
                                                        drifted_checks=list(result.drifted_checks), checks=stats)
        assert self.row.mlflow_run_id is not None
        _log(rc, spec, self.row.mlflow_run_id, step, result)
        out = {"monitor": spec.name, "model": spec.model, "step": step, "window_id": window_id,
               "run_id": self.row.mlflow_run_id, **result.as_dict(),
               **_place(place.first_seq, place.last_seq, place.start, place.end)}  # a time window's bounds, not its records' span
        if place.rejudged:
            out["rejudged"] = True
        if result.status == "not enough data":
            out["notes"] = [*out["notes"], why_small(rc, spec, result.size)]
        return out


def judged_windows(rc: RegistryClient, name: str, *, after_id: int = 0, previous_seq: int | None = None,
                   tx: Transaction | None = None) -> tuple[list[int], list[WindowResult], int | None]:
    """(window ids, results, the newest record's seq) of the windows of monitor `name` judged after window
    `after_id`, oldest first, as alert rules read them (a `--latest` look is no evidence)."""
    from tuneloop.monitors.checks import CheckResult

    ids, results = [], []
    for window in rc.stores.monitors.windows(name, after_id=after_id, counted_only=True, tx=tx):
        placed = window.first_seq is not None or window.start is not None
        if not placed and window.last_seq == previous_seq:
            continue  # judged before 0006 by `monitor check` again with no new records: the same evidence, counted once
        previous_seq = window.last_seq
        if window.checks is not None:
            checks = [CheckResult(**_nan_for_none(c)) for c in window.checks]
        else:  # windows judged before statistics were stored: the drifted names are all we know
            checks = [CheckResult(check=n, statistic=float("nan"), p_value=0.0, drifted=True) for n in window.drifted_checks]
        ids.append(window.id)
        results.append(WindowResult(size=window.size, status=str(window.status), threshold=float("nan"), checks=checks))
    return ids, results, previous_seq


def status(rc: RegistryClient) -> list[dict[str, Any]]:
    out = []
    for m in rc.stores.monitors.all():
        last = rc.stores.monitors.last_window(m.name)
        out.append({"monitor": m.name, "model": MonitorSpec.model_validate(m.spec).model,
                    "state": str(last.status) if last else "never checked",
                    "drifted_checks": last.drifted_checks if last else [], "window_records": last.size if last else 0,
                    "checked_at": last.checked_at.isoformat() if last else None, "run_id": m.mlflow_run_id})
    return out


def _nan_for_none(check: dict[str, Any]) -> dict[str, Any]:
    """JSON stores a NaN statistic as null; a check result holds it as NaN again."""
    return {k: float("nan") if v is None and k in ("statistic", "p_value") else v for k, v in check.items()}


# Part of the statistics cache's key: raise it whenever what `build_reference` returns, or where its
# classes live, changes (2: the classes moved from `monitors.*` to `tuneloop.monitors.*`). A cache
# written by other code is then never unpickled; it is rebuilt from the pinned records.
REFERENCE_CACHE_VERSION = 2


def _embedder(rc: RegistryClient) -> Embedder:
    return Embedder(Path(rc.settings.cache_dir).expanduser() / "embeddings-minilm.sqlite")


def _statistics(rc: RegistryClient, spec: MonitorSpec, digest: str, pinned: Path | None, *, run_id: str | None = None) -> Reference:
    """The reference statistics for these records and checks: from the cache, else built from `pinned`
    (or the run's artifact) and cached."""
    wants_embeddings = "embedding" in spec.checks
    key = digest.removeprefix("sha256:") + ("-embedding" if wants_embeddings else "") + f"-v{REFERENCE_CACHE_VERSION}"
    cache = Path(rc.settings.cache_dir).expanduser() / "monitor-references" / f"{key}.pickle"
    if cache.is_file():
        try:
            with open(cache, "rb") as f:
                cached = pickle.load(f)  # our own file, keyed by the content digest and the code version
        except Exception:  # unreadable: a write cut short, a library upgrade
            cached = None
        if isinstance(cached, Reference):
            return cached
        cache.unlink(missing_ok=True)  # rebuilt below
    if pinned is None:
        assert run_id is not None
        pinned = Path(rc.mlflow.download_artifacts(run_id, f"reference/{digest.removeprefix('sha256:')[:16]}/records.jsonl"))
        if "sha256:" + file_sha256(pinned) != digest:
            raise InvalidInput(f"the pinned reference of monitor `{spec.name}` changed in the artifact store",
                               hint="pin it again with `tuneloop monitor add --replace`")
    reference = build_reference(read_records(pinned), embedder=_embedder(rc) if wants_embeddings else None)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(reference, f)
    tmp.replace(cache)
    return reference


def _create_run(rc: RegistryClient, spec: MonitorSpec) -> str:
    from tuneloop.registry.tracking import experiment_id

    run = rc.mlflow.create_run(experiment_id(rc.mlflow, rc.settings, EXPERIMENT), run_name=f"monitor {spec.name}",
                               tags={"tuneloop.monitor": spec.name, "tuneloop.monitor.model": spec.model or ""})
    return str(run.info.run_id)


def _pin(rc: RegistryClient, spec: MonitorSpec, run_id: str, digest: str, pinned: Path, source: str) -> None:
    """Store the reference records in the monitor's run, and describe the monitor in its tags."""
    rc.mlflow.log_artifact(run_id, str(pinned), f"reference/{digest.removeprefix('sha256:')[:16]}")
    for key, value in {"reference": source[:5000], "reference_sha256": digest, "alpha": str(spec.alpha),
                       "window": spec.window.model_dump_json(exclude_none=True), "checks": ",".join(spec.checks)}.items():
        rc.mlflow.set_tag(run_id, f"tuneloop.monitor.{key}", value)


P_FLOOR = 1e-12  # smaller p-values are drawn at the floor: a fixed axis
PLOTTED_WINDOWS = 1000  # scores.png shows the newest windows: its cost stays flat over a monitor's life


def _log(rc: RegistryClient, spec: MonitorSpec, run_id: str, step: int, result: WindowResult) -> None:
    from mlflow.entities import Metric

    now = int(datetime.now(UTC).timestamp() * 1000)
    metrics = [Metric("drift", float(result.status == "drift"), now, step), Metric("records", float(result.size), now, step)]
    for c in result.checks:
        metrics += [Metric(f"p/{c.check}", c.p_value, now, step), Metric(f"stat/{c.check}", c.statistic, now, step)]
    rc.mlflow.log_batch(run_id, metrics=metrics)
    rc.mlflow.log_text(run_id, _html(spec, step, result), f"reports/window-{step:05d}.html")
    figure = _plot(rc, spec.name, result.threshold)
    try:
        rc.mlflow.log_figure(run_id, figure, "scores.png")
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)  # pyplot keeps every figure until closed: a long-running scheduler would grow without end


def _plot(rc: RegistryClient, name: str, threshold: float) -> Any:
    """The smallest p-value of each of the newest windows, from the stored window statistics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total, windows = rc.stores.monitors.recent(name, PLOTTED_WINDOWS)
    steps, lowest = [], []
    for step, window in enumerate(windows, start=total - len(windows)):
        p_values = [c["p_value"] for c in window.checks or [] if c.get("p_value") is not None]
        if p_values:
            steps.append(step)
            lowest.append(min(max(min(p_values), P_FLOOR), 1.0))
    # Fixed axes and margins: the drawing costs the same at the 10th window and the 5,000th.
    fig, ax = plt.subplots(figsize=(8, 3))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.17, top=0.95)
    ax.semilogy(steps, lowest, marker="o" if len(steps) <= 100 else None, label="smallest p-value of the window")
    ax.set_ylim(P_FLOOR / 2, 2.0)
    if threshold == threshold:  # not NaN
        ax.axhline(threshold, color="red", linestyle="--", label=f"alarm threshold {threshold:.2g}")
    ax.set_xlabel("window" if total <= PLOTTED_WINDOWS else f"window (the newest {PLOTTED_WINDOWS} of {total})")
    ax.set_ylabel(f"p-value (floor {P_FLOOR:g})")
    ax.legend(loc="lower left")
    return fig


def _html(spec: MonitorSpec, step: int, result: WindowResult) -> str:
    rows = "".join(
        f"<tr{' class=drift' if c.drifted else ''}><td>{html.escape(c.check)}</td><td>{c.statistic:.4g}</td>"
        f"<td>{c.p_value:.3g}</td><td>{'DRIFT' if c.drifted else ''}</td></tr>" for c in result.checks)
    explained = ""
    for c in result.checks:
        if c.details.get("typical_words") or c.details.get("typical_examples"):
            words = ", ".join(html.escape(w) for w in c.details.get("typical_words", []))
            examples = "".join(f"<li>{html.escape(e)}</li>" for e in c.details.get("typical_examples", []))
            explained += (f"<h2>{html.escape(c.check)}{' (drifted)' if c.drifted else ''}</h2>"
                          f"<p>words most typical of this window: {words or '-'}</p><ul>{examples}</ul>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(spec.name)} window {step}</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px}.drift{background:#fdd}</style></head><body>"
            f"<h1>{html.escape(spec.name)}: window {step}</h1><p>model {html.escape(spec.model or '')}, "
            f"{result.size} records, status <b>{html.escape(result.status)}</b>, per-check threshold {result.threshold:.3g} "
            f"(alpha {spec.alpha} / {len(result.checks)} checks)</p>"
            f"<table><tr><th>check</th><th>statistic</th><th>p-value</th><th></th></tr>{rows}</table>"
            f"{explained}{f'<h2>Left out</h2><ul>{notes}</ul>' if notes else ''}</body></html>")
