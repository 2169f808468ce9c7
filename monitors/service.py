"""Declared monitors: `add` stores one, `check` judges its latest window of production records and
logs it to MLflow, `status` shows every monitor's last state.

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
from tuneloop.monitors.records import ModelResolver
from tuneloop.monitors.references import as_record, materialise, write_jsonl
from tuneloop.registry.client import RegistryClient

from tuneloop.digest import file_sha256
from tuneloop.errors import Conflict, InvalidInput, NotFound
from tuneloop.store.monitors import MonitorRow
from tuneloop.store.records import ModelSlice

EXPERIMENT = "monitors"
MIN_REFERENCE = 100


def add(rc: RegistryClient, path: Path, *, replace: bool = False) -> dict[str, Any]:
    spec = load_monitor(path)
    if spec.reference is None or spec.model is None:
        raise InvalidInput(f"monitor `{path}` needs `model` and `reference`", hint="see examples/monitors/support.yaml")
    ModelResolver(rc.mlflow).resolve(spec.model)  # an unknown model fails here, not at the first check
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


def check(rc: RegistryClient, name: str) -> dict[str, Any]:
    """Judge the latest window of the monitor's model and log it."""
    row, spec = _monitor(rc, name)
    window, last_seq = _latest_window(rc, spec)
    result = _judge(rc, row, spec, window, last_seq)
    if result["status"] == "not enough data":
        result["notes"] = [*result["notes"], why_small(rc, spec, result["size"])]
    return result


def why_small(rc: RegistryClient, spec: MonitorSpec, size: int) -> str:
    """Why a window is too small to judge, naming where else this model's records are (other aliases or versions)."""
    name, version, alias = ModelResolver(rc.mlflow).resolve(spec.model or "")
    watched = f"alias `{alias}`" if alias else f"version {version}"
    groups = [(a, v, n) for a, v, n in rc.stores.records.groups(name)
              if not ((a == alias) if alias else (v == version and a is None))]
    text = f"{size} record(s) of {name} under {watched} in the window; {spec.min_size} are needed (min_size)"
    if groups:
        elsewhere = ", ".join(f"{n:,} under alias `{a}` (v{v})" if a else f"{n:,} sent as version {v}"
                              for a, v, n in sorted(groups, key=lambda g: -g[2]))
        text += f". This model has other records: {elsewhere} — the monitor watches `{spec.model}` only"
    return text


def check_pending(rc: RegistryClient, name: str, *, limit: int = 1000) -> list[dict[str, Any]]:
    """Judge every window that completed since the last judged one, oldest first (what the scheduler runs).

    Count windows end every `stride` records of the model; time windows are judged once per interval in
    which records arrived. Records inside a pinned production-window reference are not judged against
    it. A window already judged is never judged again, so repeated calls with no new traffic add nothing
    (and cannot stretch an alert's K-window streak).
    """
    row, spec = _monitor(rc, name)
    judged = rc.stores.monitors.last_judged_seq(name)
    model = ModelSlice(*ModelResolver(rc.mlflow).resolve(spec.model or ""))
    window_ref = spec.reference.window if spec.reference is not None else None
    # never judge a pinned production-window reference against itself
    new_seqs = rc.stores.records.seqs_after(model, judged, not_before=window_ref.end if window_ref else None)
    if not new_seqs:
        return []
    if spec.window.kind == "time":
        window, last_seq = _latest_window(rc, spec)
        return [_judge(rc, row, spec, window, last_seq)]
    stride = int(spec.window.stride)
    results = []
    for end in range(stride, len(new_seqs) + 1, stride):
        if len(results) >= limit:
            break
        rows = rc.stores.records.of(model, upto_seq=new_seqs[end - 1], newest=int(spec.window.size))
        results.append(_judge(rc, row, spec, [as_record(x) for x in rows], rows[-1].seq))
    return results


def _monitor(rc: RegistryClient, name: str) -> tuple[MonitorRow, MonitorSpec]:
    row = rc.stores.monitors.get(name)
    if row is None:
        raise NotFound(f"no monitor `{name}`", hint="add one with `tuneloop monitor add FILE`; `tuneloop monitor status` lists them")
    return row, MonitorSpec.model_validate(row.spec)


def _judge(rc: RegistryClient, row: MonitorRow, spec: MonitorSpec, window: list[Record], last_seq: int) -> dict[str, Any]:
    reference = _statistics(rc, spec, row.reference_sha256, None, run_id=row.mlflow_run_id)
    result = check_window(reference, window, alpha=spec.alpha, min_size=spec.min_size, checks=spec.checks,
                          embedder=_embedder(rc) if "embedding" in spec.checks else None)
    stats = [{"check": c.check, "statistic": c.statistic, "p_value": c.p_value, "drifted": c.drifted} for c in result.checks]
    window_id, step = rc.stores.monitors.add_window(spec.name, last_seq=last_seq, size=result.size, status=result.status,
                                                    drifted_checks=list(result.drifted_checks), checks=stats)
    _log(rc, spec, row.mlflow_run_id, step, result)
    return {"monitor": spec.name, "model": spec.model, "step": step, "window_id": window_id,
            "run_id": row.mlflow_run_id, **result.as_dict()}


def judged_windows(rc: RegistryClient, name: str) -> tuple[list[int], list[WindowResult]]:
    """(window ids, results) of every judged window of monitor `name`, oldest first, as alert rules replay them."""
    from tuneloop.monitors.checks import CheckResult

    ids, results = [], []
    previous_seq = None
    for window in rc.stores.monitors.windows(name):
        if window.last_seq == previous_seq:
            continue  # `monitor check` run again with no new records: the same evidence, counted once
        previous_seq = window.last_seq
        if window.checks is not None:
            checks = [CheckResult(**_nan_for_none(c)) for c in window.checks]
        else:  # windows judged before statistics were stored: the drifted names are all we know
            checks = [CheckResult(check=n, statistic=float("nan"), p_value=0.0, drifted=True) for n in window.drifted_checks]
        ids.append(window.id)
        results.append(WindowResult(size=window.size, status=str(window.status), threshold=float("nan"), checks=checks))
    return ids, results


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


def _latest_window(rc: RegistryClient, spec: MonitorSpec) -> tuple[list[Record], int]:
    model = ModelSlice(*ModelResolver(rc.mlflow).resolve(spec.model or ""))
    if spec.window.kind == "time":
        rows = rc.stores.records.of(model, start=datetime.now(UTC) - spec.window.length)
    else:
        rows = rc.stores.records.of(model, newest=int(spec.window.size))
    return [as_record(row) for row in rows], (rows[-1].seq if rows else 0)


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


def _log(rc: RegistryClient, spec: MonitorSpec, run_id: str, step: int, result: WindowResult) -> None:
    from mlflow.entities import Metric

    now = int(datetime.now(UTC).timestamp() * 1000)
    metrics = [Metric("drift", float(result.status == "drift"), now, step), Metric("records", float(result.size), now, step)]
    for c in result.checks:
        metrics += [Metric(f"p/{c.check}", c.p_value, now, step), Metric(f"stat/{c.check}", c.statistic, now, step)]
    rc.mlflow.log_batch(run_id, metrics=metrics)
    rc.mlflow.log_text(run_id, _html(spec, step, result), f"reports/window-{step:05d}.html")
    figure = _plot(rc, run_id, result.threshold)
    try:
        rc.mlflow.log_figure(run_id, figure, "scores.png")
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)  # pyplot keeps every figure until closed: a long-running scheduler would grow without end


def _plot(rc: RegistryClient, run_id: str, threshold: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in rc.mlflow.get_run(run_id).data.metrics if k.startswith("p/")]
    by_step: dict[int, float] = {}
    for key in keys:
        for m in rc.mlflow.get_metric_history(run_id, key):
            by_step[m.step] = min(by_step.get(m.step, 1.0), m.value)
    steps = sorted(by_step)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.semilogy(steps, [max(by_step[s], 1e-300) for s in steps], marker="o", label="smallest p-value of the window")
    if threshold == threshold:  # not NaN
        ax.axhline(threshold, color="red", linestyle="--", label=f"alarm threshold {threshold:.2g}")
    ax.set_xlabel("window")
    ax.legend(loc="lower left")
    fig.tight_layout()
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
