"""The CLI: fast help without heavy imports, exit codes, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, run_cli

HEAVY = ("torch", "transformers", "mlflow", "evidently", "peft", "trl", "pandas", "sqlalchemy", "pydantic")

_PROBE = """
import sys
from tuneloop.cli.main import main
code = main(sys.argv[1:])
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_help_imports_nothing_heavy() -> None:
    for args in (["--help"], ["models", "--help"], ["models", "promote", "--help"], ["demo", "--help"], ["--version"]):
        proc = _probe(*args)
        assert proc.returncode == 0, proc.stderr
        assert "HEAVY=\n" in proc.stderr, f"{args}: {proc.stderr}"


def test_console_script_help_lists_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("demo", "models", "up", "config"):
        assert command in proc.stdout


def test_usage_errors_exit_2() -> None:
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("models", "promote").returncode == 2
    proc = run_cli("models", "promote", "m", "1", "--alias", "champion", "--force")
    assert proc.returncode == 2 and "`--force` needs `--reason`" in proc.stderr


def test_invalid_settings_are_all_reported_at_once(tmp_path: Path) -> None:
    config = tmp_path / "tuneloop.toml"
    config.write_text('colour = "blue"\n[server]\nmlflow_port = 99999\nhots = "x"\n')
    proc = run_cli("--config", str(config), "config", "show")
    assert proc.returncode == 2
    for key in ("`colour`", "`server.mlflow_port`", "`server.hots`"):
        assert key in proc.stderr
    missing = run_cli("--config", str(tmp_path / "nope.toml"), "config", "show")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_config_show_json_resolves_defaults(tmp_path: Path) -> None:
    proc = run_cli("config", "show", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    home = (tmp_path / ".tuneloop").resolve()
    assert data["home"] == str(home)
    assert data["resolved"]["mlflow_uri"] == f"sqlite:///{home}/mlflow.db"
    assert data["resolved"]["database_url"] == f"sqlite:///{home}/tuneloop.db"
    assert data["resolved"]["artifact_root"] == (home / "artifacts").as_uri()


def test_models_commands_json(tmp_path: Path, tiny_model: Path) -> None:
    env = {"TUNELOOP_HOME": str(tmp_path / "home")}
    imported = json.loads(
        run_cli("models", "import-base", "tiny", "--source", str(tiny_model), "--json", env=env).stdout
    )
    assert imported["version"] == 1 and imported["existing"] is False and imported["kind"] == "base"
    again = json.loads(run_cli("models", "import-base", "tiny", "--source", str(tiny_model), "--json", env=env).stdout)
    assert again["version"] == 1 and again["existing"] is True
    run_cli("models", "set-metrics", "tiny:1", "accuracy=0.7", env=env)
    assert run_cli("models", "gates", "tiny", "--set", "accuracy >= 0.8", env=env).returncode == 0
    refused = run_cli("models", "promote", "tiny", "1", "--alias", "champion", "--json", env=env)
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["details"][0]["status"] == "failed"
    forced = run_cli(
        "models", "promote", "tiny", "1", "--alias", "champion", "--force", "--reason", "demo", "--json", env=env
    )
    assert json.loads(forced.stdout)["entry"]["forced"] is True
    listed = json.loads(run_cli("models", "list", "--json", env=env).stdout)
    assert listed == [
        {
            "name": "tiny",
            "kind": "base",
            "versions": 1,
            "latest_version": 1,
            "aliases": {"champion": 1},
            "gate_policy": ["accuracy >= 0.8"],
        }
    ]
    hist = json.loads(run_cli("models", "history", "tiny", "--json", env=env).stdout)
    assert hist["chain_intact"] and [m["reason"] for m in hist["moves"]] == ["demo"]
    text = run_cli("models", "history", "tiny", env=env).stdout
    assert "FORCED" in text and "v- → v1" in text
