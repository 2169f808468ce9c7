"""`tuneloop up`: a real MLflow server and the ingest API on tuneloop's stores, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.registry_helpers import make_versions


def _descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid`, with its command line (read from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                try:
                    found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                frontier.append(child)
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _declare_monitor(rc, name: str, model: str) -> None:
    rc.stores.monitors.save(name, {"name": name, "model": model}, "0" * 64, None, version=1, reference_source="file")


def test_up_serves_each_model_a_loop_or_monitor_names(sqlite_rc, capsys) -> None:
    from tuneloop.cli.context import AppContext
    from tuneloop.cli.up_cmd import _models_to_serve

    make_versions(sqlite_rc, "named", [{}])
    make_versions(sqlite_rc, "looped", [{}])
    make_versions(sqlite_rc, "watched", [{}])
    sqlite_rc.stores.loops.save_loop("retrain-looped", "looped", {"model": "looped"}, replace=False)
    _declare_monitor(sqlite_rc, "watch", "watched:1")
    _declare_monitor(sqlite_rc, "watch-too", "watched@champion")  # the same model: one server
    _declare_monitor(sqlite_rc, "stale", "deleted@champion")  # its model is gone: skipped, said so
    app = AppContext(None)
    app._settings, app._registry = sqlite_rc.settings, sqlite_rc

    assert _models_to_serve(app, ("named", "looped"), declared=True) == ["named", "looped", "watched"]
    assert "not serving deleted: a loop or monitor names it, but it is not registered" in capsys.readouterr().err
    assert _models_to_serve(app, ("named",), declared=False) == ["named"]


@pytest.mark.acceptance
def test_up_serves_the_registry_and_stops_on_ctrl_c(sqlite_rc, tmp_path: Path) -> None:
    make_versions(sqlite_rc, "served", [{}])
    _declare_monitor(sqlite_rc, "served-watch", "served@champion")  # `up` serves what a monitor watches
    port, ingest_port, scheduler_port, serve_port = free_port(), free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    env["TUNELOOP_HOME"] = str(sqlite_rc.settings.home)
    env["TUNELOOP_SERVE__PORT"] = str(serve_port)
    exe = Path(sys.executable).with_name("tuneloop")
    proc = subprocess.Popen(
        [
            str(exe),
            "up",
            "--port",
            str(port),
            "--ingest-port",
            str(ingest_port),
            "--scheduler-port",
            str(scheduler_port),
        ],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/search"
        with urllib.request.urlopen(url, timeout=10) as resp:
            names = [m["name"] for m in json.loads(resp.read())["registered_models"]]
        assert names == ["served"]
        for _ in range(120):  # the ingest API comes up beside MLflow
            if _port_open(ingest_port):
                break
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{ingest_port}/v1/health", timeout=10) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}
        with urllib.request.urlopen(f"http://127.0.0.1:{scheduler_port}/health", timeout=10) as resp:
            scheduler = json.loads(resp.read())
        assert scheduler["role"] in ("active", "standby") and scheduler["owner"].endswith(tuple("0123456789"))
        for _ in range(120):  # and the model server
            if _port_open(serve_port):
                break
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{serve_port}/health", timeout=10) as resp:
            assert json.loads(resp.read())["model"] == "served"
        members = _descendants(proc.pid)
        # MLflow's job runner and its huey consumers are off (8 processes, ~2 GB, slow to stop)
        assert not [c for c in members.values() if "huey" in c or "_job_runner" in c], members
        time.sleep(5)  # `up` probes every member's health every 2 s
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # `up` prints every thread's stack: where the stop is stuck
            time.sleep(2)
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"`tuneloop up` did not stop within 30 s of Ctrl-C; its stderr:\n{err[-6000:]}")
    assert proc.returncode == 0, err
    assert "tuneloop is up: MLflow UI at" in err and "stopped" in err
    assert "scheduler: " in err  # the status line
    assert "GET /health" not in out + err  # the probes are not logged (they drowned everything else)
    assert "served at http://127.0.0.1:" in err
    assert not any(_port_open(p) for p in (port, ingest_port, scheduler_port, serve_port))
    assert not set(members) & set(_descendants(1)), "a member outlived `up`"
