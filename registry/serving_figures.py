"""The per-version figures `tuneloop serve` processes log to their serving runs, read back for
`tuneloop traffic show`: the servers running now, and those stopped in the last hour."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tuneloop.names import RunTag, parse_serving_metric, serve_experiment
from tuneloop.registry.client import RegistryClient
from tuneloop.registry.tracking import existing_experiment_id

RECENT_S = 3600
MOST_SERVERS = 20


@dataclass(frozen=True)
class ServerFigures:
    address: str
    run_id: str
    status: str  # RUNNING, FINISHED (stopped), ...
    figures: dict[int, dict[str, float]] = field(default_factory=dict)  # version -> figure -> latest value
    server: dict[str, float] = field(default_factory=dict)  # traces/exported, shadow/dropped, ...


def latest(rc: RegistryClient, name: str) -> list[ServerFigures]:
    """The latest interval of every server of `name` running or stopped within the last hour, newest first."""
    experiment = existing_experiment_id(rc.mlflow, rc.settings, serve_experiment(name))
    if experiment is None:
        return []
    since_ms = (time.time() - RECENT_S) * 1000
    runs = rc.mlflow.search_runs(
        [experiment],
        filter_string=f"tags.`{RunTag.SERVE_MODEL}` = '{name.replace(chr(39), chr(39) * 2)}'",
        order_by=["attributes.start_time DESC"],
        max_results=MOST_SERVERS,
    )
    found = []
    for run in runs:
        if run.info.status != "RUNNING" and (run.info.end_time or 0) < since_ms:
            continue
        per_version: dict[int, dict[str, float]] = {}
        server: dict[str, float] = {}
        for key, value in run.data.metrics.items():
            parsed = parse_serving_metric(key)
            if parsed is None:
                server[key] = value
            else:
                per_version.setdefault(parsed[0], {})[parsed[1]] = value
        address = run.data.tags.get(RunTag.SERVE_ADDRESS, "?")
        found.append(ServerFigures(address, run.info.run_id, run.info.status, per_version, server))
    return found
