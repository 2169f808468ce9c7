"""Monitoring throughput, in one run.

1. Records/s ingested over HTTP by the real ingest API (uvicorn, one worker) into SQLite in WAL mode
   with `synchronous=FULL` — every acknowledged request is a durable commit. Several concurrent
   clients post batches; target >= 5,000 records/s.
   Baseline in the same run: the same records inserted straight into the same database with one
   SQLAlchemy `executemany` per batch (no HTTP, no validation) — the ceiling of the storage itself.
2. Seconds for one drift check of 10,000 current vs 10,000 reference records: tuneloop's checks with the
   reference statistics cached (as `monitor check` runs them), and built from scratch, vs Evidently
   computing the same from the same data: its descriptors of both texts (length, word count,
   non-letter share) and `DataDriftPreset` over them and the raw columns. Target >= 3x faster.

    .venv/bin/python benchmarks/monitor_throughput.py [--records 100000] [--clients 8] [--batch 500] [--drift-records 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(n: int, start: int) -> list[dict]:
    return [
        {
            "id": f"r{start + i}",
            "model": "bench:1",
            "prompt": f"Where is my order {start + i}? It was due on Monday.",
            "output": "Your order shipped yesterday and should arrive within two business days.",
            "latency_ms": 41.5,
        }
        for i in range(n)
    ]


def _register_model(home: Path) -> None:
    from mlflow import MlflowClient

    from tuneloop.registry.tracking import connect
    from tuneloop.settings import Settings

    settings = Settings(home=home)
    connect(settings)
    client = MlflowClient(settings.mlflow_uri, settings.mlflow_uri)
    client.create_registered_model("bench")
    client.create_model_version("bench", source=str(home), run_id=None)


def http_section(home: Path, total: int, clients: int, batch: int) -> float:
    import httpx

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    env.update(TUNELOOP_HOME=str(home), TUNELOOP_INGEST__TOKENS=json.dumps([TOKEN]))
    server = subprocess.Popen(
        [sys.executable, "-m", "tuneloop", "monitor", "serve", "--port", str(port)], env=env, cwd=REPO
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        per_client = total // clients

        def client(n: int) -> None:
            with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
                for at in range(0, per_client, batch):
                    body = {"records": _records(min(batch, per_client - at), n * per_client + at)}
                    response = http.post(url + "/v1/records", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
                    assert response.status_code == 201, response.text

        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as http:  # warm the model cache
            http.post(url + "/v1/records", json={"records": _records(1, 10**9)})
        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return per_client * clients / (time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(30)


def direct_section(home: Path, total: int, batch: int) -> float:
    from datetime import UTC, datetime

    from tuneloop.store import tables
    from tuneloop.store.engine import get_engine

    engine = get_engine(f"sqlite:///{home / 'tuneloop.db'}")
    now = datetime.now(UTC)
    start = time.perf_counter()
    for at in range(0, total, batch):
        rows = [
            {
                **{k: v for k, v in r.items() if k != "latency_ms"},
                "id": "d" + r["id"],
                "version": 1,
                "alias": None,
                "prediction": r["output"],
                "ts": now,
                "latency_ms": r["latency_ms"],
                "meta": {},
                "received_at": now,
            }
            for r in _records(batch, at)
        ]
        with engine.begin() as conn:
            conn.execute(tables.records.insert(), rows)
    return total / (time.perf_counter() - start)


def drift_section(n: int) -> None:
    import random

    import pandas as pd

    sys.path.insert(0, str(REPO))
    from benchmarks.drift_quality import _evidently_dataset, _evidently_verdict
    from tuneloop.demo import traffic as drift_data
    from tuneloop.monitors.drift.judge import Record, build_reference, check_window

    rng = random.Random(1)
    reference_rows = [drift_data.record(rng) for _ in range(n)]
    current_rows = drift_data.windows(1, n, seed=2, kind="refusals", share=0.1)
    # Warm both sides on a small window first: imports (evidently ~7 s, scikit-learn, scipy) are not the check.
    small = [drift_data.record(rng) for _ in range(300)]
    check_window(build_reference([Record(**r) for r in small]), [Record(**r) for r in small])
    _evidently_verdict(_evidently_dataset(pd.DataFrame(small)), _evidently_dataset(pd.DataFrame(small)))
    start = time.perf_counter()
    reference = build_reference([Record(**r) for r in reference_rows])
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = check_window(reference, [Record(**r) for r in current_rows])
    check_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = _evidently_verdict(
        _evidently_dataset(pd.DataFrame(current_rows)), _evidently_dataset(pd.DataFrame(reference_rows))
    )
    evidently_s = time.perf_counter() - start
    print(f"\ndrift check, {n:,} current vs {n:,} reference records (10% refusals planted)")
    print(f"  {'tuneloop, reference cached':40s} {check_s:8.2f} s   {ours.status} ({', '.join(ours.drifted_checks)})")
    print(f"  {'tuneloop, reference built too':40s} {build_s + check_s:8.2f} s")
    print(f"  {'Evidently descriptors + DataDriftPreset':40s} {evidently_s:8.2f} s   dataset drift: {theirs[0]}")
    print(
        f"  Evidently / tuneloop (cached) = {evidently_s / check_s:.1f}x (target >= 3x): "
        f"{'OK' if evidently_s / check_s >= 3 else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--drift-records", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        _register_model(home)
        http_rate = http_section(home, args.records, args.clients, args.batch)
        direct_rate = direct_section(home, args.records, args.batch)
    print(
        f"ingest of {args.records:,} records, {args.clients} clients, batches of {args.batch}, SQLite WAL synchronous=FULL"
    )
    print(
        f"  {'tuneloop ingest API over HTTP':40s} {http_rate:10,.0f} records/s  (target >= 5,000): "
        f"{'OK' if http_rate >= 5000 else 'MISSED'}"
    )
    print(
        f"  {'direct executemany, no HTTP/validation':40s} {direct_rate:10,.0f} records/s  "
        f"API / direct = {http_rate / direct_rate:.2f}x"
    )
    drift_section(args.drift_records)


if __name__ == "__main__":
    main()
