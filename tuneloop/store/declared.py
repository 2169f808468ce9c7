"""Things declared by name from a YAML file (alert rules, loops): insert, or replace when asked."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def save_declared(engine: Engine, table: sa.Table, name: str, values: dict[str, Any], *, replace: bool) -> bool:
    """Insert `name`, or update it when `replace`; False when it exists and `replace` is not given."""
    with engine.begin() as conn:
        exists = conn.execute(sa.select(table.c.name).where(table.c.name == name)).first() is not None
        if exists and not replace:
            return False
        if exists:
            conn.execute(table.update().where(table.c.name == name).values(**values))
        else:
            conn.execute(table.insert().values(name=name, created_at=datetime.now(UTC), **values))
    return True
