"""What every store shares: the engine of tuneloop's database, and transactions callers can span.

A `Transaction` is opaque to the layers above: they get one from `Stores.transaction()` and hand it to
store methods that must commit together (an alert and its notifications, an alias move and its audit
entry), never run SQL on it.
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine

Transaction = Connection
E = TypeVar("E")


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine


def entity(cls: type[E], row: Any, **given: Any) -> E:
    """A dataclass entity from a row: each field from the column of its name (enum fields converted),
    unless `given` names it (renamed columns, values that need a default)."""
    columns = row._mapping
    values = {name: _as(kind, columns[name]) for name, kind in _fields(cls).items() if name in columns}
    return cls(**(values | given))


_FIELDS: dict[type, dict[str, Any]] = {}


def _fields(cls: type) -> dict[str, Any]:
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = {field.name: hints[field.name] for field in dataclasses.fields(cls)}
    return _FIELDS[cls]


def _as(kind: Any, value: Any) -> Any:
    if value is not None and isinstance(kind, type) and issubclass(kind, Enum):
        return kind(value)
    return value
