"""Retrain workers: the process that claims a queued run and drives its stages, and the helpers that
start and follow one.

This is the one module that knows both the run queue (`retrain`: rows, states, leases) and the stages
(`challenger`): the queue never imports the stages, the stages record through the queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tuneloop.errors import Conflict, TuneloopError
from tuneloop.pipelines.loop import challenger, retrain
from tuneloop.registry.client import RegistryClient
from tuneloop.store import leases
from tuneloop.store.loops import RunState

MODULE = "tuneloop.pipelines.loop.worker"  # run as `python -m`, its own __name__ is "__main__"


def spawn_worker(config_file: str | None, run_id: int) -> subprocess.Popen:
    """Start this module as a child process driving run `run_id` (training runs there, not in the scheduler)."""
    command = [sys.executable, "-m", MODULE, *(["--config", config_file] if config_file else []), str(run_id)]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL)


def follow(
    rc: RegistryClient,
    config_file: str | None,
    run_id: int,
    on_state: Callable[[str], None],
    timeout_s: float = 24 * 3600,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run retrain `run_id` in a worker subprocess here and report each new state (and, with `on_progress`,
    what the stage is doing) until it ends. A worker that dies is started once more (the run's own claim
    limit decides whether it resumes)."""
    worker = spawn_worker(config_file, run_id)
    state, progress, deadline = None, None, time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            row = retrain.get(rc, run_id)
            if row["state"] != state:
                state = row["state"]
                on_state(state)
            if on_progress is not None and row["details"].get("progress") not in (None, progress):
                progress = row["details"]["progress"]
                on_progress(progress)
            if state in retrain.TERMINAL:
                break
            if worker.poll() is not None and retrain.get(rc, run_id)["state"] not in retrain.TERMINAL:
                worker = spawn_worker(config_file, run_id)
            time.sleep(1)
    finally:
        if worker.poll() is None:
            worker.wait()
    return retrain.get(rc, run_id)


class Heartbeat(threading.Thread):
    """Renews the run's lease; exits the process at once if the lease is lost or the parent died."""

    def __init__(self, rc: RegistryClient, run_id: int, owner: str, lease_s: float) -> None:
        super().__init__(daemon=True)
        self.rc, self.run_id, self.name, self.owner, self.lease_s = (
            rc,
            run_id,
            retrain.lease_name(run_id),
            owner,
            lease_s,
        )
        self.parent = os.getppid()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(min(1.0, self.lease_s / 3)):
            if os.getppid() != self.parent:
                os._exit(75)  # the scheduler that started us died: our lease lapses and the next owner resumes
            try:
                if retrain.is_cancelled(self.rc, self.run_id):
                    self.rc.stores.leases.release(self.name, self.owner)
                    os._exit(0)  # a person ended the run: nothing more of it is recorded
                if not self.rc.stores.leases.acquire(self.name, self.owner, self.lease_s):
                    os._exit(75)
            except Exception:  # noqa: BLE001, S112
                continue  # a database hiccup: try again before the lease runs out


def run_worker(rc: RegistryClient, run_id: int, *, lease_s: float | None = None) -> dict[str, Any]:
    """Claim run `run_id` and drive it to a terminal state; the final row."""
    lease_s = lease_s or rc.settings.scheduler.lease_seconds
    row = retrain.get(rc, run_id)
    if row["state"] in retrain.TERMINAL:
        return row
    owner = leases.owner_id()
    if not rc.stores.leases.acquire(retrain.lease_name(run_id), owner, lease_s):
        raise Conflict(
            f"retraining run {run_id} is owned by a live worker", hint="wait for it; `tuneloop retrain list`"
        )
    # A worker that died while waiting for shadow pairs did no work that could have crashed it: resuming the
    # wait is not another try (a wait of hours would otherwise use the run's tries up on restarts).
    attempts = row["attempts"] + (0 if row["state"] == RunState.SHADOWING else 1)
    if attempts > retrain.MAX_ATTEMPTS:
        retrain.update(
            rc,
            run_id,
            state="failed",
            attempts=attempts,
            error=f"its worker died {row['attempts']} times (last in state `{row['state']}`); not retried again",
        )
        rc.stores.leases.release(retrain.lease_name(run_id), owner)
        return retrain.get(rc, run_id)
    retrain.update(rc, run_id, attempts=attempts)
    heartbeat = Heartbeat(rc, run_id, owner, lease_s)
    heartbeat.start()
    try:
        challenger.drive(rc, run_id)
    except TuneloopError as exc:
        retrain.update(rc, run_id, state="failed", error=f"{exc.message}" + (f" (fix: {exc.hint})" if exc.hint else ""))
    except Exception as exc:  # a bug or a library failure: recorded, not retried blindly  # noqa: BLE001
        retrain.update(rc, run_id, state="failed", error=rc.settings.scrub(f"{type(exc).__name__}: {exc}"))
    finally:
        heartbeat.stopped.set()
        rc.stores.leases.release(retrain.lease_name(run_id), owner)
    return retrain.get(rc, run_id)


def main(argv: list[str] | None = None) -> int:
    """`python -m tuneloop.pipelines.loop.worker [--config FILE] RUN_ID`, as `spawn_worker` starts it: drive
    one run; its outcome (failed included) is in the run's row, so the exit code only says whether it ran."""
    import argparse

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=main.__doc__)
    parser.add_argument("--config", default=None, help="tuneloop.toml to read (default: ./tuneloop.toml)")
    parser.add_argument("run_id", type=int)
    args = parser.parse_args(argv)
    from tuneloop.settings import load_settings

    try:
        row = run_worker(RegistryClient(load_settings(args.config)), args.run_id)
    except TuneloopError as exc:  # the run is owned by another worker, the stores are unreachable
        print(f"error: {exc.message}" + (f"\n  fix: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code
    print(f"retrain {args.run_id}: {row['state']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
