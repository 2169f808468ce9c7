"""Settings: sources and precedence, validation, secret masking; the error hierarchy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop import errors
from tuneloop.backoff import Backoff
from tuneloop.settings import load_settings, mask_secrets, redact_url


def test_toml_then_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tuneloop.toml"
    config.write_text('home = "h1"\nactor = "alice"\n[server]\nmlflow_port = 5100\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNELOOP_CONFIG", raising=False)
    s = load_settings()
    assert s.home == (tmp_path / "h1").resolve() and s.actor_name == "alice" and s.server.mlflow_port == 5100
    monkeypatch.setenv("TUNELOOP_SERVER__MLFLOW_PORT", "5200")
    monkeypatch.setenv("TUNELOOP_ACTOR", "bob")
    s = load_settings()
    assert s.server.mlflow_port == 5200 and s.actor_name == "bob"


def test_explicit_config_file_and_store_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "other.toml"
    config.write_text('[stores]\nmlflow_uri = "postgresql://u:pw@db:5432/mlflow"\nartifact_root = "s3://bucket/tl"\n')
    monkeypatch.delenv("TUNELOOP_CONFIG", raising=False)
    s = load_settings(config)
    assert s.mlflow_uri == "postgresql://u:pw@db:5432/mlflow"
    assert s.artifact_root == "s3://bucket/tl"
    assert s.public_dict()["resolved"]["mlflow_uri"] == "postgresql://u:***@db:5432/mlflow"
    assert "pw" in s.secret_values() and s.scrub("failed: postgresql://u:pw@db") == "failed: postgresql://u:***@db"


def test_every_problem_reported_in_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_SERVER__MLFLOW_PORT", "0")
    monkeypatch.setenv("TUNELOOP_INGEST__PORT", "notanumber")
    with pytest.raises(errors.ConfigError) as err:
        load_settings()
    assert "`server.mlflow_port`" in err.value.message and "`ingest.port`" in err.value.message
    assert err.value.exit_code == 2 and err.value.http_status == 400


def test_redact_url_leaves_passwordless_urls_alone() -> None:
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redact_url("postgresql://root@127.0.0.1/db") == "postgresql://root@127.0.0.1/db"


def test_error_codes_map_to_exit_codes_and_http_statuses() -> None:
    table = {
        errors.UsageError: (2, 400),
        errors.ConfigError: (2, 400),
        errors.InvalidInput: (1, 422),
        errors.NotFound: (1, 404),
        errors.Conflict: (1, 409),
        errors.GateFailed: (1, 409),
        errors.StoreError: (1, 503),
    }
    for cls, (exit_code, status) in table.items():
        exc = cls("m", hint="h")
        assert isinstance(exc, errors.TuneloopError)
        assert (exc.exit_code, exc.http_status) == (exit_code, status)
        assert exc.to_dict() == {"error": cls.code, "message": "m", "hint": "h"}


def test_documented_default_config_is_valid_and_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    from tests.conftest import REPO
    from tuneloop.settings import Settings

    monkeypatch.delenv("TUNELOOP_CONFIG", raising=False)
    path = REPO / "platform" / "tuneloop.toml"
    documented = load_settings(path)
    assert documented.model_dump() == Settings().model_dump()  # the file documents the real defaults
    text = path.read_text()
    data = tomllib.loads(text)
    for name, field in Settings.model_fields.items():
        assert name in text, f"platform/tuneloop.toml does not document `{name}`"
        sub = getattr(field.annotation, "model_fields", None)
        for key in sub or {}:
            assert key in text, f"platform/tuneloop.toml does not document `{name}.{key}`"
    assert data["server"]["mlflow_port"] == Settings.model_fields["server"].default_factory().mlflow_port


def test_one_masker_hides_url_passwords_anywhere_and_named_secrets() -> None:
    text = (
        "connect postgresql+psycopg://svc:s3cr%40t@db:5432/tl failed; mlflow at http://mlflow:5000/api@v2 "
        "(token tl-abc123, also in https://:tl-abc123@host/x)"
    )
    masked = mask_secrets(text, ["tl-abc123", ""])
    assert masked == (
        "connect postgresql+psycopg://svc:***@db:5432/tl failed; mlflow at http://mlflow:5000/api@v2 "
        "(token ***, also in https://:***@host/x)"
    )
    assert redact_url("postgresql://u:pw@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"


def test_backoff_doubles_up_to_its_cap_and_jitter_stays_around_it() -> None:
    assert [Backoff(2.0).delay(n) for n in range(5)] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert [Backoff(0.2, cap_s=1.0).delay(n) for n in (0, 1, 2, 3, 200)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    waits = [Backoff(1.0, jitter=True).delay(3) for _ in range(200)]
    assert all(4.0 <= w < 12.0 for w in waits) and max(waits) - min(waits) > 1.0
