"""Secrets planted in settings never reach MLflow params, tags, artifacts, logs or output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import run_cli

TOKEN = "tok-SECRET-7f3a9c"
HF_TOKEN = "hf_SECRET-51d2e0"
DB_PASSWORD = "pw-SECRET-c0ffee"  # trust auth ignores it, so the PostgreSQL URLs still work


def _all_text_in_mlflow(rc) -> str:
    client = rc.mlflow
    chunks = []
    for m in client.search_registered_models():
        chunks += [json.dumps(m.tags), json.dumps(m.aliases), m.description or ""]
    for v in client.search_model_versions():
        chunks += [json.dumps(v.tags), v.source or "", v.description or ""]
    experiments = client.search_experiments(view_type=3)
    for run in client.search_runs([e.experiment_id for e in experiments], run_view_type=3):
        chunks += [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(run.data.metrics)]
    return "\n".join(chunks)


def _all_bytes_under(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000)


@pytest.mark.acceptance
def test_planted_secrets_appear_nowhere(stores, tmp_path: Path, tiny_model: Path) -> None:
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings

    home = tmp_path / "home"
    kwargs = stores.settings_kwargs(home, password=DB_PASSWORD)
    config = tmp_path / "tuneloop.toml"
    lines = [f'home = "{home}"', f'hf_token = "{HF_TOKEN}"', "[ingest]", f'tokens = ["{TOKEN}"]']
    if "stores" in kwargs:
        lines += [
            "[stores]",
            f'mlflow_uri = "{kwargs["stores"].mlflow_uri}"',
            f'database_url = "{kwargs["stores"].database_url}"',
        ]
    config.write_text("\n".join(lines) + "\n")
    secrets = [TOKEN, HF_TOKEN] + ([DB_PASSWORD] if "stores" in kwargs else [])

    outputs, codes = [], []
    for args in (
        ["models", "import-base", "tiny", "--source", str(tiny_model), "--json"],
        ["models", "promote", "tiny", "1", "--alias", "champion", "--json"],
        ["models", "promote", "tiny", "1", "--alias", "staging", "--force", "--reason", "check", "--json"],
        ["models", "history", "tiny", "--json"],
        ["models", "show", "tiny", "--json"],
        ["config", "show", "--json"],
        ["models", "promote", "tiny", "5", "--alias", "champion"],  # an error path too
    ):
        proc = run_cli("--config", str(config), *args, env={"TUNELOOP_DEBUG": ""})
        outputs.append(proc.stdout + proc.stderr)
        codes.append(proc.returncode)
    assert codes == [0, 0, 0, 0, 0, 0, 1], outputs
    assert "***" in outputs[5]  # config show masks rather than omits

    rc = RegistryClient(Settings(**kwargs))
    mlflow_text = _all_text_in_mlflow(rc)
    assert "tiny" in mlflow_text  # the search really saw the stores
    stored = _all_bytes_under(home)  # artifacts, both SQLite files, caches
    with rc.stores.engine.connect() as conn:
        audit_text = json.dumps([list(map(str, r)) for r in conn.execute(sa.text("SELECT * FROM audit_log"))])
    for secret in secrets:
        for text in outputs:
            assert secret not in text
        assert secret not in mlflow_text
        assert secret.encode() not in stored
        assert secret not in audit_text
