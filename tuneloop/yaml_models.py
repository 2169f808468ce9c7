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


def load_yaml_model(
    path: str | Path, model: type[M], *, kind: str, hint: str, overrides: list[str] | None = None, examples: str = ""
) -> M:
    """Read `path`, apply overrides and validate it as `model`; one ConfigError lists every problem."""
    data = read_yaml_mapping(path, kind=kind, hint=hint, overrides=overrides, examples=examples)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(kind, path, problems_of(exc, kind), hint) from None


def read_yaml_mapping(
    path: str | Path, *, kind: str, hint: str, overrides: list[str] | None = None, examples: str = ""
) -> dict[str, Any]:
    """The mapping a YAML file holds, with `--set` overrides applied; not yet validated."""
    import yaml

    path = Path(path)
    if not path.is_file():
        where = f"`{path}`" if path.is_absolute() else f"`{path}` (from `{Path.cwd()}`)"
        raise ConfigError(
            f"{kind} file {where} does not exist", hint=f"check the path{'; ' + examples if examples else ''}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(
            f"`{path}{line}` is not valid YAML: {getattr(exc, 'problem', exc)}", hint="fix the syntax"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"`{path}` must hold a mapping of {kind} keys", hint=hint)
    return apply_overrides(data, overrides or [])


def invalid(kind: str, source: str | Path, problems: list[str], hint: str) -> ConfigError:
    """The one error for a file (or stored document) that failed validation: every problem, one per line."""
    return ConfigError(f"invalid {kind} `{source}`:\n  " + "\n  ".join(problems), hint=hint)


def problems_of(exc: ValidationError, kind: str) -> list[str]:
    """Each validation error as `key.path`: message."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or f"({kind})"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"`{where}`: {message}")
    return problems


def describe_keys(model: type[BaseModel], prefix: str = "") -> list[dict[str, str]]:
    """Every key of a YAML model (sections flattened to dotted paths) with its type, default and help."""
    from pydantic_core import PydanticUndefined

    rows: list[dict[str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(describe_keys(annotation, f"{key}."))
            continue
        if field.default is not PydanticUndefined:
            default = _value_text(field.default)
        elif field.default_factory is not None:
            default = _value_text(field.default_factory())
        else:
            default = "(required)"
        kind = _type_text(annotation)
        rows.append({"key": key, "type": kind, "default": default, "help": field.description or ""})
    return rows


def _value_text(value: Any) -> str:
    """A default as it would be written in YAML."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return str(value)


def _type_text(annotation: Any) -> str:
    import typing

    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_text(a) for a in args)}]"
    if args:
        return " | ".join(_type_text(a) for a in args if a is not type(None))
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "none")


def _parse_value(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (value parsed as YAML: numbers, booleans, lists) to a mapping.

    A list item is addressed by its index (`tasks.0.limit=2`) or, for lists of named items such as a
    suite's tasks, by its `name` (`tasks.answers.limit=2`).
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"`--set {item}` is not KEY=VALUE", hint=OVERRIDE_HINT)
        node: Any = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                node = _list_item(node, part, item, where)
                continue
            child = node.setdefault(part, {})
            if not isinstance(child, dict | list):
                raise ConfigError(f"`--set {item}`: `{where}` is a value, not a section or a list", hint=OVERRIDE_HINT)
            node = child
        last = parts[-1]
        if isinstance(node, list):
            index = _list_index(node, last, item, key.strip())
            node[index] = _parse_value(raw)
        else:
            node[last] = _parse_value(raw)
    return data


OVERRIDE_HINT = (
    "KEY is a dotted path; list items by index or by name, "
    "e.g. --set training.max_steps=20 or --set tasks.answers.limit=2 (same as tasks.0.limit=2)"
)


def _list_index(items: list[Any], part: str, item: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(items) <= index < len(items):
            raise ConfigError(
                f"`--set {item}`: `{where}` is out of range (the list has {len(items)} item(s))", hint=OVERRIDE_HINT
            )
        return index
    names = [x.get("name") for x in items if isinstance(x, dict)]
    if part in names:
        return names.index(part)
    known = ", ".join(f"`{n}`" for n in names if n) or "none"
    raise ConfigError(
        f"`--set {item}`: no item named `{part}` in `{where.rsplit('.', 1)[0]}` (names: {known})", hint=OVERRIDE_HINT
    )


def _list_item(items: list[Any], part: str, item: str, where: str) -> Any:
    child = items[_list_index(items, part, item, where)]
    if not isinstance(child, dict | list):
        raise ConfigError(f"`--set {item}`: `{where}` is a value, not a section", hint=OVERRIDE_HINT)
    return child
