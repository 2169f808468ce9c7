"""The platform's processes: the MLflow server, the ingest API, the scheduler and model servers, each
started as a child in its own process group, checked through its health endpoint, and stopped with
SIGTERM (then SIGKILL after a grace period). `tuneloop up` supervises them; `tuneloop demo` and the tests
start the ones they need.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from tuneloop.errors import StoreError

HEALTH_TIMEOUT_S = 120


def _tuneloop(config_file: str | None, *args: str) -> list[str]:
    return [sys.executable, "-m", "tuneloop", *(["--config", config_file] if config_file else []), *args]


def start_mlflow_server(settings: Any, host: str, port: int) -> subprocess.Popen:
    """Start `mlflow server` on the configured stores; the store URI travels by environment, not argv."""
    env = dict(
        os.environ,
        MLFLOW_BACKEND_STORE_URI=settings.mlflow_uri,
        MLFLOW_REGISTRY_STORE_URI=settings.mlflow_uri,
        # MLflow 3.17 starts a job runner and seven huey consumers by default (10 processes, 2.4 GB
        # RSS and 6-7 s to stop, against 2 processes and 0.5 GB without).
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=str(settings.server.mlflow_jobs).lower(),
    )
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--default-artifact-root",
        settings.artifact_root,
        "--no-serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",  # SQLite allows one writer; MLflow's own advice for a file store
        # No access log: `tuneloop up` probes /health every few seconds, which drowned everything else
        # (398 of 400 lines after 13 minutes). Errors are still logged.
        "--uvicorn-opts",
        "--no-access-log",
    ]
    return subprocess.Popen(command, env=env, start_new_session=True)


def start_ingest_server(config_file: str | None, host: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        _tuneloop(config_file, "monitor", "serve", "--host", host, "--port", str(port)), start_new_session=True
    )


def start_model_server(
    config_file: str | None, name: str, host: str, port: int, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`tuneloop serve NAME`: the OpenAI-compatible API over NAME's versions (`env`: settings to
    override, as `TUNELOOP_SECTION__KEY` variables)."""
    return subprocess.Popen(
        _tuneloop(config_file, "serve", name, "--host", host, "--port", str(port)),
        env=dict(os.environ, **(env or {})),
        start_new_session=True,
    )


def start_scheduler(config_file: str | None, host: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        _tuneloop(config_file, "scheduler", "run", "--host", host, "--port", str(port)), start_new_session=True
    )


def health(url: str, timeout_s: float = 2) -> dict[str, Any] | None:
    """The JSON a health endpoint answers, or None when it does not answer 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status != 200:
                return None
            body = resp.read()
    except OSError:
        return None
    try:
        return json.loads(body) if body.strip().startswith(b"{") else {"status": body.decode(errors="replace").strip()}
    except ValueError:
        return {"status": "ok"}


def wait_healthy(
    url: str,
    process: subprocess.Popen,
    timeout_s: float = HEALTH_TIMEOUT_S,
    path: str = "/health",
    what: str = "the MLflow server",
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StoreError(
                f"{what} exited with code {process.returncode} before it was ready",
                hint="read its output above; another process may hold the port",
            )
        if health(url + path) is not None:
            return
        time.sleep(0.5)
    raise StoreError(f"{what} did not answer on {url} within {timeout_s:.0f} s", hint="check the port and the logs")


def stop(*processes: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM every process group at once, then wait for the groups together, so stopping takes the
    slowest member's time rather than the sum; whatever outlives the grace is killed.

    A group is waited for to its last process, not only its leader: a grandchild that outlives the
    leader (MLflow's job runner does) would keep the caller's stdout and stderr open after `up` exits.
    """
    for process in processes:
        with contextlib.suppress(ProcessLookupError):  # exited already; its group may still have members
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    while any(_group_alive(p.pid) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in processes:
        if _group_alive(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the group id was reused by someone else's processes
        return False
    return True


def run_http(app: Any, host: str, port: int) -> None:
    """Serve an ASGI app in this process until Ctrl-C or SIGTERM (one worker: SQLite takes one writer
    at a time). No lifespan: on Ctrl-C uvicorn cancels a pending lifespan task and logs its traceback."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=10
    )
    # Once it has shut down, uvicorn raises the signal it handled again, under the handler it found. For
    # SIGTERM that is the default one, which ends the process on the spot: the caller's clean-up (a server's
    # last records, traces and figures) would never run. Under this handler SIGTERM ends it like Ctrl-C.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn raises the Ctrl-C it handled once it has shut down
            uvicorn.Server(config).run()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
