"""Layout rules: platform/ holds no Python; the layers import one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

# A package may import only packages to its left: tuneloop core <- registry <- monitors <- pipelines.
ORDER = ["tuneloop", "registry", "monitors", "pipelines"]
CORE_MODULES = ["settings.py", "errors.py", "names.py", "schemas.py", "digest.py", "rowfiles.py", "yaml_models.py", "__init__.py"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_platform_holds_no_python_and_stdlib_platform_still_works() -> None:
    assert not list((REPO / "platform").rglob("*.py"))
    proc = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system())"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.stdout.strip() == "Linux"


def test_core_imports_nothing_of_ours_but_core() -> None:
    for name in CORE_MODULES:
        assert not (_imports(REPO / "tuneloop" / name) & {"registry", "monitors", "pipelines"}), name


def test_layers_import_one_way() -> None:
    for i, package in enumerate(ORDER[1:], start=1):
        forbidden = set(ORDER[i + 1 :])
        for path in (REPO / package).rglob("*.py"):
            assert not (_imports(path) & forbidden), f"{path} imports {_imports(path) & forbidden}"
