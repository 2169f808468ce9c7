"""What every store shares: the engine of tuneloop's database, and transactions callers can span.

A `Transaction` is opaque to the layers above: they get one from `Stores.transaction()` and hand it to
store methods that must commit together (an alert and its notifications, an alias move and its audit
entry), never run SQL on it.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection, Engine

Transaction = Connection


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
