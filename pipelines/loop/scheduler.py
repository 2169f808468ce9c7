"""The loop's scheduler: one active instance per database, any number of standbys.

An instance runs APScheduler only while it holds the `scheduler` lease in tuneloop's database; the
others wait and take over once the lease lapses (a crashed holder is replaced within one lease
period). Each active instance builds its own in-memory job store — APScheduler's job stores must
never be shared between running schedulers — from what the database declares, so a takeover loses
nothing: monitor checks resume where the judged windows stop, alerts are reconciled from the
windows, retrains are rows with their own leases, and cron fires are recorded in `loops.last_cron_at`
(missed fires coalesce into one run). Retraining runs in worker subprocesses.

Jobs while active: `check <monitor>` on each loop's interval (judge new windows, reconcile alerts),
`cron <loop>` on the loop's crontab, `dispatch` (retrains for new alerts, missed cron fires, workers
for runnable runs) and `deliver` (the notification outbox) every tick.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tuneloop.registry.client import RegistryClient
from tuneloop.store import leases
from tuneloop.store.leases import Lease

log = logging.getLogger("tuneloop.scheduler")
LEASE = "scheduler"


class LoopScheduler:
    def __init__(
        self,
        rc: RegistryClient,
        config_file: str | None,  # the `--config` file workers are started with (None: the default)
        *,
        lease_s: float | None = None,
        tick_s: float | None = None,
        max_workers: int | None = None,
    ) -> None:
        cfg = rc.settings.scheduler
        self.rc, self.config_file = rc, config_file
        self.lease_s = lease_s or cfg.lease_seconds
        self.tick_s = tick_s or cfg.tick_seconds
        self.max_workers = max_workers or cfg.max_workers
        self.owner = leases.owner_id()
        self.role = "standby"
        self.workers: dict[int, subprocess.Popen] = {}
        self.last_error: str | None = None
        self._scheduler: Any = None
        self._loops_digest = ""

    # --- leadership -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Hold or wait for the lease until `stop` is set; then shut down cleanly and hand the lease back."""
        try:
            while not stop.is_set():
                try:
                    holding = self.rc.stores.leases.acquire(LEASE, self.owner, self.lease_s)
                except Exception as exc:  # the database is unreachable: step down, the lease will lapse  # noqa: BLE001
                    self.last_error = f"lease: {type(exc).__name__}: {exc}"
                    holding = False
                if holding and self.role != "active":
                    self._activate()
                elif not holding and self.role == "active":
                    self._deactivate("lost the lease")
                stop.wait(self.lease_s / 3)
        finally:
            if self.role == "active":
                self._deactivate("shutting down")
                self.rc.stores.leases.release(LEASE, self.owner)

    def _activate(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        log.warning("scheduler %s is active", self.owner)
        self._scheduler = BackgroundScheduler(
            timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        self._scheduler.add_job(
            self.dispatch, "interval", seconds=self.tick_s, id="dispatch", next_run_time=datetime.now(UTC)
        )
        self._scheduler.add_job(
            self.deliver, "interval", seconds=self.tick_s, id="deliver", next_run_time=datetime.now(UTC)
        )
        self._scheduler.add_job(self.reload, "interval", seconds=max(self.tick_s, 10), id="reload")
        self.reload()
        self._scheduler.start()
        self.role = "active"

    def _deactivate(self, why: str) -> None:
        log.warning("scheduler %s steps down: %s", self.owner, why)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        self.role = "standby"
        self._loops_digest = ""

    # --- jobs -------------------------------------------------------------------------------
    def reload(self) -> None:
        """(Re)build the monitor and cron jobs when the declared loops change."""
        from apscheduler.triggers.cron import CronTrigger

        from tuneloop.monitors.monitor_spec import parse_duration
        from tuneloop.pipelines.loop.retrain import loops

        specs = loops(self.rc)
        digest = json.dumps([s.model_dump(mode="json") for s in specs], sort_keys=True)
        if digest == self._loops_digest or self._scheduler is None:
            return
        for job in self._scheduler.get_jobs():
            if job.id.startswith(("check ", "cron ")):
                job.remove()
        seen: set[str] = set()
        for spec in specs:
            for m in spec.monitors:
                if m.name not in seen:
                    seen.add(m.name)
                    self._scheduler.add_job(
                        self.check_monitor,
                        "interval",
                        args=[m.name],
                        id=f"check {m.name}",
                        seconds=parse_duration(m.every).total_seconds(),
                        next_run_time=datetime.now(UTC),
                    )
            if spec.cron:
                self._scheduler.add_job(
                    self.cron_due,
                    CronTrigger.from_crontab(spec.cron, timezone="UTC"),
                    args=[spec.name],
                    id=f"cron {spec.name}",
                )
        self._loops_digest = digest

    def check_monitor(self, name: str) -> None:
        from tuneloop.monitors.judging import check

        self._guard(f"check {name}", lambda: check(self.rc, name))

    def cron_due(self, loop_name: str) -> int | None:
        """Enqueue one retrain for the latest cron fire not yet handled (missed fires coalesce)."""
        from apscheduler.triggers.cron import CronTrigger

        from tuneloop.pipelines.loop.retrain import enqueue

        row = self.rc.stores.loops.loop(loop_name)
        if row is None or not row.spec.get("cron"):
            return None
        trigger = CronTrigger.from_crontab(row.spec["cron"], timezone="UTC")
        since = row.last_cron_at or row.created_at
        now = datetime.now(UTC)
        due = None
        fire = trigger.get_next_fire_time(None, since + timedelta(seconds=1))
        while fire is not None and fire <= now:
            due = fire
            fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        if due is None:
            return None
        run_id, _ = enqueue(self.rc, loop_name, "cron", f"cron:{loop_name}:{due.isoformat()}")
        self.rc.stores.loops.set_last_cron(loop_name, due)
        return run_id

    def dispatch(self) -> None:
        from tuneloop.pipelines.loop.retrain import enqueue_for_alerts, loops, runnable
        from tuneloop.pipelines.loop.worker import spawn_worker

        def work() -> None:
            enqueue_for_alerts(self.rc)
            for spec in loops(self.rc):
                if spec.cron:
                    self.cron_due(spec.name)
            for run_id, process in list(self.workers.items()):
                if process.poll() is not None:
                    del self.workers[run_id]
            for run_id in runnable(self.rc):
                if len(self.workers) >= self.max_workers:
                    break
                if run_id not in self.workers:
                    log.warning("starting a worker for retrain %s", run_id)
                    self.workers[run_id] = spawn_worker(self.config_file, run_id)

        self._guard("dispatch", work)

    def deliver(self) -> None:
        from tuneloop.monitors.alerting.notify import deliver_pending

        n = self.rc.settings.notify
        self._guard(
            "deliver",
            lambda: deliver_pending(
                self.rc.stores,
                timeout_s=n.timeout_seconds,
                max_attempts=n.max_attempts,
                base_delay_s=n.retry_base_seconds,
            ),
        )

    def _guard(self, what: str, job: Any) -> None:
        """A failing job is logged and retried on its next run; it never stops the scheduler."""
        try:
            job()
        except Exception as exc:  # noqa: BLE001
            self.last_error = self.rc.settings.scrub(f"{what}: {type(exc).__name__}: {exc}")
            log.warning("%s", self.last_error)

    # --- health -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        jobs = []
        if self._scheduler is not None:
            jobs = [
                {"id": j.id, "next_run": j.next_run_time.isoformat() if j.next_run_time else None}
                for j in self._scheduler.get_jobs()
            ]
        return {
            "status": "ok",
            "role": self.role,
            "owner": self.owner,
            "lease": _lease_dict(self.rc.stores.leases.holder(LEASE)),
            "jobs": jobs,
            "workers": sorted(self.workers),
            "last_error": self.last_error,
        }


def serve_health(scheduler: LoopScheduler, host: str, port: int) -> ThreadingHTTPServer:
    """GET /health -> the scheduler's role, lease, jobs and workers as JSON (a thread; returns the server)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/health":
                self.send_error(404, "only /health is served here")
                return
            body = json.dumps(scheduler.health(), default=str).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # quiet: health probes come every few seconds
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _lease_dict(lease: Lease | None) -> dict[str, Any] | None:
    return lease.as_dict() if lease else None
