"""The production path: platform/ assets that cannot run here (no Docker engine) are checked for what they
say, and the platform itself runs end to end on PostgreSQL (MLflow's store and tuneloop's tables) with an
S3 artifact root — register, train, ingest over HTTP, check drift — by settings alone."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, chat_file, free_port, run_cli, tiny_lora_recipe
from tuneloop.demo import traffic

PLATFORM = REPO / "platform"
TUNELOOP_SERVICES = ("migrate", "mlflow", "api", "scheduler", "serve", "cli")


def _compose() -> dict:
    return yaml.safe_load((PLATFORM / "compose.yaml").read_text())


def test_compose_runs_every_member_with_secrets_from_the_environment() -> None:
    services = _compose()["services"]
    assert set(services) >= {"postgres", "minio", "buckets", *TUNELOOP_SERVICES}
    for name in TUNELOOP_SERVICES:
        env = services[name]["environment"]
        assert env["TUNELOOP_STORES__MIGRATE_ON_START"] == "false" and env["TUNELOOP_STORES__ARTIFACT_ROOT"].startswith(
            "s3://"
        )
        for key in ("TUNELOOP_STORES__MLFLOW_URI", "TUNELOOP_STORES__DATABASE_URL", "AWS_SECRET_ACCESS_KEY"):
            assert re.search(r"\$\{[A-Z_]+(:\?[^}]*)?\}", env[key]), f"{name}.{key} must come from the environment"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name, service in services.items():  # passwords never travel in argv (visible in `ps`)
        argv = json.dumps([service.get("entrypoint", []), service.get("command", [])])
        assert "postgresql://" not in argv and "PASSWORD" not in argv, name
    for name in ("mlflow", "api", "scheduler"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in services[name]
    assert services["scheduler"]["deploy"]["replicas"] == 2
    # Every tuneloop command the stack runs exists (the image's entrypoint is `tuneloop`).
    assert services["serve"]["profiles"] == ["serve"] and "healthcheck" in services["serve"]
    for name in ("migrate", "api", "scheduler", "serve"):
        args = [a for a in services[name]["command"] if not a.startswith("/etc/")]
        words = [a for a in args if not a.startswith("-") and not a.isdigit() and a not in ("0.0.0.0",)]
        proc = run_cli(*words, "--help")
        assert proc.returncode == 0, f"{name}: `tuneloop {' '.join(words)}` — {proc.stderr}"
    settings = tomllib.loads((PLATFORM / "tuneloop.production.toml").read_text())
    assert "stores" not in settings and "hf_token" not in settings  # secrets never live in the settings file
    from tuneloop.settings import load_settings

    assert load_settings(PLATFORM / "tuneloop.production.toml").server.host == "0.0.0.0"
    assert ".env" in (REPO / ".gitignore").read_text()


def test_the_dockerfile_installs_every_package_with_s3_support_in_both_variants() -> None:
    dockerfile = (PLATFORM / "Dockerfile").read_text()
    folders = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    assert set(folders) == {"tuneloop", "registry", "monitors", "pipelines"}
    for folder in folders:  # every folder the package-dir mapping installs from
        assert f"COPY {folder} ./{folder}" in dockerfile
    assert "COPY platform" not in dockerfile  # platform/ shadows the stdlib module (GUIDE §1)
    assert (
        "ARG CUDA=0" in dockerfile
        and 'pip install ".[s3]"' in dockerfile
        and "download.pytorch.org/whl/cpu" in dockerfile
    )
    assert "USER 10001" in dockerfile  # the chart's podSecurityContext runs as this user


@pytest.fixture
def s3_server():
    """An S3 API server (moto) on a free port, with an empty bucket `tuneloop`."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {
        "AWS_ACCESS_KEY_ID": "tuneloop-test",
        "AWS_SECRET_ACCESS_KEY": "s3-" + uuid.uuid4().hex,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="tuneloop")
    yield {"MLFLOW_S3_ENDPOINT_URL": endpoint, **credentials}, client
    server.stop()


def _ok(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _wait_for(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not come up")


@pytest.mark.acceptance
@pytest.mark.postgres
def test_register_train_ingest_and_check_drift_on_postgres_and_s3(
    empty_postgres_databases,
    s3_server,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    import httpx

    mlflow_uri, database_url = empty_postgres_databases
    s3_env, s3 = s3_server
    token = "ingest-" + uuid.uuid4().hex
    home = tmp_path / "home"
    env = {
        "TUNELOOP_HOME": str(home),
        "TUNELOOP_STORES__MLFLOW_URI": mlflow_uri,
        "TUNELOOP_STORES__DATABASE_URL": database_url,
        "TUNELOOP_STORES__ARTIFACT_ROOT": "s3://tuneloop/artifacts",
        "TUNELOOP_STORES__MIGRATE_ON_START": "false",
        "TUNELOOP_INGEST__TOKENS": json.dumps([token]),
        "TUNELOOP_CACHE_DIR": str(tmp_path / "cache"),
        **s3_env,
    }

    assert _ok(run_cli("db", "upgrade", "--json", env=env))["up_to_date"]  # the release step
    _ok(run_cli("models", "import-base", "tiny", "--source", str(tiny_model), "--json", env=env))
    data = chat_file(
        tmp_path / "chat.jsonl", [("hello", "hello world"), ("refund order", "yes refund the order please")] * 4
    )
    training = {"max_steps": 4, "batch_size": 4, "learning_rate": 0.01}
    recipe = tiny_lora_recipe(tmp_path / "recipe.yaml", data, training=training)
    trained = _ok(run_cli("train", str(recipe), "--json", env=env, timeout=600))
    assert trained["version"] == 1

    rng = random.Random(3)
    traffic.write(tmp_path / "reference.jsonl", [traffic.record(rng) for _ in range(2000)])
    spec = tmp_path / "monitor.yaml"
    spec.write_text(
        "name: prod\nmodel: tiny-lora:1\nwindow: {size: 400}\nmin_size: 200\nchecks: [descriptors]\n"
        "reference: {file: reference.jsonl}\n"
    )
    assert run_cli("monitor", "add", str(spec), env=env).returncode == 0

    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("tuneloop")),
            "monitor",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/v1/health")
        for rows in (traffic.windows(1, 400, seed=1), traffic.windows(1, 400, seed=2, kind="refusals", share=0.25)):
            records = [{"model": "tiny-lora:1", "prompt": r["prompt"], "output": r["output"]} for r in rows]
            for at in range(0, len(records), 200):
                reply = httpx.post(
                    f"http://127.0.0.1:{port}/v1/records",
                    json={"records": records[at : at + 200]},
                    headers={"authorization": f"Bearer {token}"},
                    timeout=30,
                )
                assert reply.status_code in (200, 201), reply.text
            check = _ok(run_cli("monitor", "check", "prod", "--json", env=env))
        assert check["latest"]["status"] == "drift" and "output.refusal" in check["latest"]["drifted_checks"]
    finally:
        server.terminate()
        server.wait(timeout=30)

    # Everything landed in the shared stores: artifacts in S3, rows in PostgreSQL, nothing on the local disk.
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="tuneloop")
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith("MLmodel") for k in keys) and any("adapter" in k for k in keys), keys[:20]
    assert any(k.endswith(".html") and "window" in k for k in keys)  # the drift report
    assert (
        not (home / "artifacts").exists() and not (home / "mlflow.db").exists() and not (home / "tuneloop.db").exists()
    )
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM records")).scalar_one() == 800
    engine.dispose()
    assert token not in json.dumps(_ok(run_cli("config", "show", "--json", env=env)))  # tokens are masked
