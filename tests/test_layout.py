"""Layout rules, read from the code's own imports (those inside functions too).

- one import namespace: registry/, monitors/, pipelines/ import as tuneloop.registry, .monitors, .pipelines;
- layers import one way: core <- store <- registry <- monitors <- pipelines <- serving <- CLI and demo;
- no import cycle between modules;
- platform/ holds no Python.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

# Folder in the repository -> the package it installs as (pyproject's package-dir).
FOLDERS = {
    "tuneloop": "tuneloop",
    "registry": "tuneloop.registry",
    "monitors": "tuneloop.monitors",
    "pipelines": "tuneloop.pipelines",
}
# Layers, lowest first; a module may import only modules of its own layer or of layers to its left.
LAYERS = ["core", "store", "registry", "monitors", "pipelines", "serving", "top"]
TOP_OF_CORE = ("tuneloop.cli", "tuneloop.demo", "tuneloop.__main__")
BARE = {"registry", "monitors", "pipelines"}
PYTHON_TREES = ["tuneloop", "registry", "monitors", "pipelines", "tests", "benchmarks", "examples"]
# Scripts that wrote test fixtures by running an old commit's code, whose packages had the bare names.
OLD_CODE_SCRIPTS = REPO / "tests" / "fixtures"


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO)
    package = FOLDERS[rel.parts[0]]
    parts = [package, *rel.parts[1:-1]]
    if rel.name != "__init__.py":
        parts.append(rel.stem)
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS for p in (REPO / folder).rglob("*.py")}


def imported_names(path: Path, name: str) -> set[str]:
    """Every absolute module name `path` imports; `from P import x` names P.x when that is a module."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {
        name: {m for m in imported_names(path, name) if m in modules and m != name} for name, path in modules.items()
    }


def layer(module: str) -> str:
    if module.startswith(TOP_OF_CORE):
        return "top"
    if module.startswith("tuneloop.store"):
        return "store"
    if module.startswith("tuneloop.serving"):
        return "serving"
    for part in ("registry", "monitors", "pipelines"):
        if module.startswith(f"tuneloop.{part}"):
            return part
    return "core"


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {package: folder for folder, package in FOLDERS.items()}
    folders = {module_name(p) for folder in FOLDERS for p in (REPO / folder).rglob("__init__.py")}
    assert set(config["packages"]) == folders


def test_platform_holds_no_python_and_stdlib_platform_still_works() -> None:
    assert not list((REPO / "platform").rglob("*.py"))
    assert not (REPO / "platform" / "__init__.py").exists()
    proc = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system())"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout.strip() == "Linux"


def _modules_named(node: ast.AST, *, absolute_only: bool) -> list[str]:
    """The modules an import statement names (`from P import x`: P); none for any other node."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and not (absolute_only and node.level):
        return [node.module or ""]
    return []


def test_no_bare_registry_monitors_or_pipelines_import_anywhere() -> None:
    bad = []
    for tree in PYTHON_TREES:
        for path in (REPO / tree).rglob("*.py"):
            if path.is_relative_to(OLD_CODE_SCRIPTS):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = _modules_named(node, absolute_only=True)
                bad += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in BARE]
    assert not bad, "\n".join(bad)


def test_layers_import_one_way() -> None:
    wrong = [
        f"{m} ({layer(m)}) imports {t} ({layer(t)})"
        for m, targets in graph().items()
        for t in targets
        if LAYERS.index(layer(t)) > LAYERS.index(layer(m))
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_sql_lives_only_in_the_storage_layer() -> None:
    """SQLAlchemy and Alembic are imported only under tuneloop/store/, and nothing above it reaches for the engine."""
    wrong = []
    for name, path in our_modules().items():
        if name.startswith("tuneloop.store"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = _modules_named(node, absolute_only=False)
            wrong += [
                f"{name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in ("sqlalchemy", "alembic")
            ]
            if isinstance(node, ast.Attribute) and node.attr == "engine":
                wrong.append(f"{name}:{node.lineno} uses `.engine` (go through a store)")
            if (
                isinstance(node, ast.ImportFrom)
                and node.module in ("tuneloop.store.tables", "tuneloop.store.locks")
                or (
                    isinstance(node, ast.ImportFrom)
                    and node.module == "tuneloop.store"
                    and {a.name for a in node.names} & {"tables", "locks"}
                )
            ):
                wrong.append(f"{name}:{node.lineno} imports the tables or locks (go through a store)")
    assert not wrong, "\n".join(wrong)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge met in a depth-first walk (empty when the graph is acyclic)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycle_between_modules() -> None:
    cycles = find_cycles(graph())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_namespace_imports_from_outside_the_repository(tmp_path: Path) -> None:
    code = (
        "import tuneloop.registry.adapters, tuneloop.monitors.ingestion.records, tuneloop.pipelines.loop.spec, sys;"
        "print(tuneloop.registry.adapters.__file__); print('registry' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    where, bare_loaded = proc.stdout.split()
    assert Path(where) == REPO / "registry" / "adapters.py"
    assert bare_loaded == "False"


@pytest.mark.acceptance
def test_the_wheel_holds_one_package_and_works_installed_elsewhere(tmp_path: Path, tiny_model: Path) -> None:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__", ".tuneloop", ".pytest_cache"
        ),
    )
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("tuneloop-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tuneloop"}
    assert len(tops) == 2
    names = zipfile.ZipFile(wheel).namelist()
    assert "tuneloop/store/migrations/env.py" in names and "tuneloop/monitors/metrics/text.py" in names

    # A venv that reuses the installed dependencies (nothing downloaded) but not our editable install.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "deps.pth").write_text("\n".join(deps) + "\n")
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "TUNELOOP_HOME"}}
    env |= {"TUNELOOP_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run(
        [str(python), "-c", "import tuneloop.registry; print(tuneloop.registry.__file__)"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout

    cli = venv / "bin" / "tuneloop"
    cli.write_text(f"#!{python}\nfrom tuneloop.cli.main import entrypoint\nentrypoint()\n")
    cli.chmod(0o755)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(cli), *args], cwd=outside, env=env, capture_output=True, text=True, timeout=300, check=False
        )

    help_ = run("--help")
    assert help_.returncode == 0 and "Usage" in help_.stdout, help_.stderr
    # A registry round trip through the installed code: import, promote, read back.
    imported = run("models", "import-base", "tiny", "--source", str(tiny_model), "--json")
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert json.loads(imported.stdout)["version"] == 1
    promoted = run("models", "promote", "tiny:1", "--alias", "champion", "--force", "--reason", "wheel check")
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    listed = json.loads(run("models", "list", "--json").stdout)
    assert [(m["name"], m["kind"], m["aliases"]) for m in listed] == [("tiny", "base", {"champion": 1})]
