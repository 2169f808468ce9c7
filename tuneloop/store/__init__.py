"""tuneloop's storage layer: the engine, the tables, the migrations, named locks, leases, and one store
per aggregate, taking and returning typed entities. SQL lives here and nowhere else.

It sits between the core and the registry (core <- store <- registry <- monitors <- pipelines) and
imports nothing of ours above the core. Upper layers reach it through one object, `Stores`
(`RegistryClient.stores`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from sqlalchemy.engine import Engine

from tuneloop.store.alerts import AlertStore
from tuneloop.store.audit import AuditStore
from tuneloop.store.base import Transaction
from tuneloop.store.leases import LeaseStore
from tuneloop.store.loops import LoopStore
from tuneloop.store.monitors import MonitorStore
from tuneloop.store.outbox import OutboxStore
from tuneloop.store.records import RecordStore
from tuneloop.store.tokens import TokenStore

__all__ = ["Stores", "Transaction"]


class Stores:
    """Every store over one database. Cheap to build; the engine is shared per URL and process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Transaction]:
        """One transaction for several stores' writes; with `lock`, it holds that named lock until it ends."""
        from tuneloop.store.locks import locked

        if lock is not None:
            with locked(self.engine, lock) as conn:
                yield conn
            return
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def savepoint(self, tx: Transaction) -> Iterator[None]:
        """A nested transaction inside `tx`: what fails inside it rolls back alone, `tx` goes on."""
        with tx.begin_nested():
            yield

    @cached_property
    def audit(self) -> AuditStore:
        return AuditStore(self.engine)

    @cached_property
    def tokens(self) -> TokenStore:
        return TokenStore(self.engine)

    @cached_property
    def records(self) -> RecordStore:
        return RecordStore(self.engine)

    @cached_property
    def monitors(self) -> MonitorStore:
        return MonitorStore(self.engine)

    @cached_property
    def alerts(self) -> AlertStore:
        return AlertStore(self.engine)

    @cached_property
    def outbox(self) -> OutboxStore:
        return OutboxStore(self.engine)

    @cached_property
    def loops(self) -> LoopStore:
        return LoopStore(self.engine)

    @cached_property
    def leases(self) -> LeaseStore:
        return LeaseStore(self.engine)
