"""YAML files validated by strict pydantic models (recipes, eval suites).

Unknown keys are refused and every problem is reported at once with its key path and the file,
before anything heavy runs. `--set a.b=value` overrides are applied (and validated) like keys in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from tuneloop.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def load_yaml_model(path: str | Path, model: type[M], *, kind: str, hint: str, overrides: list[str] | None = None) -> M:
    """Read `path`, apply overrides and validate it as `model`; one ConfigError lists every problem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} `{path}` does not exist", hint=hint)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f":{where.line + 1}" if where else ""
        raise ConfigError(f"`{path}{line}` is not valid YAML: {getattr(exc, 'problem', exc)}", hint="fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"`{path}` must hold a mapping of {kind} keys", hint=hint)
    data = apply_overrides(data, overrides or [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {kind} `{path}`:\n  " + "\n  ".join(_problems(exc, kind)), hint=hint) from None


def _problems(exc: ValidationError, kind: str) -> list[str]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or f"({kind})"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"`{where}`: {message}")
    return problems


def _parse_value(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (value parsed as YAML: numbers, booleans, lists) to a mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"`--set {item}` is not KEY=VALUE", hint="e.g. --set training.max_steps=20")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"`--set {item}`: `{part}` is not a section", hint="check the key path")
            node = child
        node[parts[-1]] = _parse_value(raw)
    return data
