"""`.ci/run` runs the lint, format and type checks before the tests, and a failing check fails it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

MYPY = Path(sys.executable).with_name("mypy")


def _commands(script: Path) -> list[str]:
    return [line.strip() for line in script.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_ci_run_checks_lint_format_and_types_before_the_tests() -> None:
    lines = _commands(REPO / ".ci" / "run")
    assert lines[0] == "set -euo pipefail"  # any failing step fails the run
    order = [
        lines.index("./install.sh"),
        lines.index(".venv/bin/ruff check ."),
        lines.index(".venv/bin/ruff format --check ."),
        lines.index(".ci/typecheck"),
        lines.index(".venv/bin/python -m pytest"),
    ]
    assert order == sorted(order)


def _copy_packages(root: Path) -> Path:
    for folder in ("tuneloop", "registry", "monitors", "pipelines", ".ci"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _typecheck(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MYPY": str(MYPY)}
    return subprocess.run(
        [str(root / ".ci" / "typecheck")], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_typecheck_fails_on_a_type_error_and_names_the_file_by_its_repository_path(tmp_path: Path) -> None:
    root = _copy_packages(tmp_path / "repo")
    clean = _typecheck(root)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    planted = root / "registry" / "gates.py"
    planted.write_text(planted.read_text() + '\n\ndef _planted() -> int:\n    return "not an int"\n')
    broken = _typecheck(root)
    assert broken.returncode != 0
    assert "registry/gates.py:" in broken.stdout and "[return-value]" in broken.stdout
    assert "tuneloop/registry/" not in broken.stdout  # reported where the file lives


def test_a_lint_finding_or_unformatted_file_fails_ruff(tmp_path: Path) -> None:
    ruff = Path(sys.executable).with_name("ruff")
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = {  'a':1 }\n")
    lint = subprocess.run([str(ruff), "check", str(bad)], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert lint.returncode != 0 and "F401" in lint.stdout
    fmt = subprocess.run(
        [str(ruff), "format", "--check", str(bad)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert fmt.returncode != 0 and "bad.py" in fmt.stdout
