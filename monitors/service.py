"""Declared monitors: `add` stores one, `check` judges its latest window of production records and
logs it to MLflow, `status` shows every monitor's last state.

Each monitor has one MLflow run (experiment `<prefix>monitors`) with a step per checked window:
`drift` (0/1), `records`, `p/<check>` and `stat/<check>` per check, an HTML report per window and a
PNG of the smallest p-value over time against the alarm threshold. Reference statistics are built
once per reference file (keyed by its sha256) and cached under `cache_dir`.
"""

from __future__ import annotations

import html
import json
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitors.backtest import read_records
from monitors.drift import Record, Reference, WindowResult, build_reference, check_window
from monitors.monitor_spec import MonitorSpec, load_monitor
from monitors.records import ModelResolver
from registry import tables
from registry.client import RegistryClient
from tuneloop.digest import file_sha256
from tuneloop.errors import Conflict, InvalidInput, NotFound

EXPERIMENT = "monitors"


def add(rc: RegistryClient, path: Path, *, replace: bool = False) -> MonitorSpec:
    spec = load_monitor(path)
    if spec.reference is None or spec.model is None:
        raise InvalidInput(f"monitor `{path}` needs `model` and `reference.file`", hint="see examples/monitors/support.yaml")
    ModelResolver(rc.mlflow).resolve(spec.model)  # an unknown model fails here, not at the first check
    if not spec.reference.file.is_file():
        raise InvalidInput(f"reference file `{spec.reference.file}` does not exist", hint="fix `reference.file`")
    digest = "sha256:" + file_sha256(spec.reference.file)
    _reference(rc, spec.reference.file, digest)  # validates the file and fills the cache now
    row = {"name": spec.name, "spec": spec.model_dump_json(), "reference_sha256": digest, "created_at": datetime.now(UTC)}
    with rc.engine.begin() as conn:
        exists = conn.execute(sa.select(tables.monitors.c.name).where(tables.monitors.c.name == spec.name)).scalar()
        if exists and not replace:
            raise Conflict(f"monitor `{spec.name}` exists", hint="pass --replace to update it")
        if exists:
            conn.execute(tables.monitors.update().where(tables.monitors.c.name == spec.name).values(
                spec=row["spec"], reference_sha256=digest))
        else:
            conn.execute(tables.monitors.insert().values(**row))
    return spec


def check(rc: RegistryClient, name: str) -> dict[str, Any]:
    """Judge the latest window of the monitor's model (the newest `window.size` records) and log it."""
    spec, digest, run_id = _load(rc, name)
    assert spec.reference is not None and spec.model is not None
    window, last_seq = _latest_window(rc, spec)
    result = check_window(_reference(rc, spec.reference.file, digest), window, alpha=spec.alpha, min_size=spec.min_size)
    with rc.engine.begin() as conn:
        conn.execute(tables.monitor_windows.insert().values(
            monitor=name, last_seq=last_seq, size=result.size, status=result.status,
            drifted_checks=json.dumps(result.drifted_checks), checked_at=datetime.now(UTC)))
        step = conn.execute(sa.select(sa.func.count()).select_from(tables.monitor_windows).where(
            tables.monitor_windows.c.monitor == name)).scalar_one() - 1
    run_id = _log(rc, spec, run_id, step, result)
    return {"monitor": name, "model": spec.model, "step": step, "run_id": run_id, **result.as_dict()}


def status(rc: RegistryClient) -> list[dict[str, Any]]:
    out = []
    with rc.engine.connect() as conn:
        for m in conn.execute(sa.select(tables.monitors).order_by(tables.monitors.c.name)).mappings():
            last = conn.execute(sa.select(tables.monitor_windows).where(tables.monitor_windows.c.monitor == m["name"])
                                .order_by(tables.monitor_windows.c.id.desc()).limit(1)).mappings().first()
            spec = MonitorSpec.model_validate_json(m["spec"])
            out.append({"monitor": m["name"], "model": spec.model, "state": last["status"] if last else "never checked",
                        "drifted_checks": json.loads(last["drifted_checks"]) if last else [],
                        "window_records": last["size"] if last else 0,
                        "checked_at": last["checked_at"].isoformat() if last else None, "run_id": m["mlflow_run_id"]})
    return out


def _load(rc: RegistryClient, name: str) -> tuple[MonitorSpec, str, str | None]:
    with rc.engine.connect() as conn:
        row = conn.execute(sa.select(tables.monitors).where(tables.monitors.c.name == name)).mappings().first()
    if row is None:
        raise NotFound(f"no monitor `{name}`", hint="add one with `tuneloop monitor add FILE`; `tuneloop monitor status` lists them")
    return MonitorSpec.model_validate_json(row["spec"]), row["reference_sha256"], row["mlflow_run_id"]


def _latest_window(rc: RegistryClient, spec: MonitorSpec) -> tuple[list[Record], int]:
    name, version, alias = ModelResolver(rc.mlflow).resolve(spec.model or "")
    r, f = tables.records, tables.feedback
    query = (sa.select(r.c.seq, r.c.prompt, r.c.output, r.c.prediction, f.c.label)
             .select_from(r.outerjoin(f, f.c.record_id == r.c.id))
             .where(r.c.model == name, (r.c.alias == alias) if alias else (r.c.version == version))
             .order_by(r.c.seq.desc()).limit(spec.window.size))
    with rc.engine.connect() as conn:
        rows = conn.execute(query).all()
    rows.reverse()
    return [Record(row.prompt, row.output, row.prediction, row.label) for row in rows], (rows[-1].seq if rows else 0)


def _reference(rc: RegistryClient, path: Path, digest: str) -> Reference:
    cache = Path(rc.settings.cache_dir).expanduser() / "monitor-references" / f"{digest.removeprefix('sha256:')}.pickle"
    if cache.is_file():
        with open(cache, "rb") as f:
            return pickle.load(f)  # noqa: S301 - our own cache file, keyed by the content digest
    if "sha256:" + file_sha256(path) != digest:
        raise InvalidInput(f"reference file `{path}` changed since the monitor was added",
                           hint="restore it, or `tuneloop monitor add --replace` to adopt the new one")
    reference = build_reference(read_records(path))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(reference, f)
    tmp.replace(cache)
    return reference


def _log(rc: RegistryClient, spec: MonitorSpec, run_id: str | None, step: int, result: WindowResult) -> str:
    from registry.tracking import experiment_id

    if run_id is None:
        run = rc.mlflow.create_run(experiment_id(rc.mlflow, rc.settings, EXPERIMENT), run_name=f"monitor {spec.name}",
                                   tags={"tuneloop.monitor": spec.name, "tuneloop.monitor.model": spec.model or ""})
        run_id = run.info.run_id
        rc.mlflow.log_param(run_id, "alpha", spec.alpha)
        rc.mlflow.log_param(run_id, "window_size", spec.window.size)
        with rc.engine.begin() as conn:
            conn.execute(tables.monitors.update().where(tables.monitors.c.name == spec.name).values(mlflow_run_id=run_id))
    from mlflow.entities import Metric

    now = int(datetime.now(UTC).timestamp() * 1000)
    metrics = [Metric("drift", float(result.status == "drift"), now, step), Metric("records", float(result.size), now, step)]
    for c in result.checks:
        metrics += [Metric(f"p/{c.check}", c.p_value, now, step), Metric(f"stat/{c.check}", c.statistic, now, step)]
    rc.mlflow.log_batch(run_id, metrics=metrics)
    rc.mlflow.log_text(run_id, _html(spec, step, result), f"reports/window-{step:05d}.html")
    rc.mlflow.log_figure(run_id, _plot(rc, run_id, result.threshold), "scores.png")
    return run_id


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
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(spec.name)} window {step}</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px}.drift{background:#fdd}</style></head><body>"
            f"<h1>{html.escape(spec.name)}: window {step}</h1><p>model {html.escape(spec.model or '')}, "
            f"{result.size} records, status <b>{html.escape(result.status)}</b>, per-check threshold {result.threshold:.3g} "
            f"(alpha {spec.alpha} / {len(result.checks)} checks)</p>"
            f"<table><tr><th>check</th><th>statistic</th><th>p-value</th><th></th></tr>{rows}</table></body></html>")
