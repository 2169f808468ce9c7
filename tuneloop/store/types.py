"""Column types every table uses: one UTC datetime type, and JSON.

`UTCDateTime` always hands back an aware UTC datetime: SQLite keeps no zone and returns naive values,
PostgreSQL returns them in the session's zone. Values written must be aware (a naive datetime is a bug
in the caller, refused here rather than stored ambiguously).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa


class UTCDateTime(sa.TypeDecorator[datetime]):
    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to a UTC column: pass an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity (PostgreSQL's json type refuses them): they are stored as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class JSONDocument(sa.TypeDecorator[Any]):
    """`sa.JSON` (the `json` type on PostgreSQL, text on SQLite) that stores NaN and infinity as null."""

    impl = sa.JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return _finite(value)
