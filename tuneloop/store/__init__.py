"""tuneloop's storage layer: the engine, the tables, the migrations, named locks, leases, and one store
per aggregate, taking and returning typed entities. SQL lives here and nowhere else.

It sits between the core and the registry (core <- store <- registry <- monitors <- pipelines) and
imports nothing of ours above the core. Upper layers reach it through one object, `Stores`
(`RegistryClient.stores`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from sqlalchemy.engine import Engine

from tuneloop.store.alerts import AlertStore
from tuneloop.store.audit import AuditStore
from tuneloop.store.base import Store, Transaction
from tuneloop.store.leases import LeaseStore
from tuneloop.store.loops import LoopStore
from tuneloop.store.monitors import MonitorStore
from tuneloop.store.outbox import OutboxStore
from tuneloop.store.records import RecordStore
from tuneloop.store.tokens import TokenStore
from tuneloop.store.traces import TraceStore
from tuneloop.store.traffic import TrafficStore

__all__ = ["Stores", "Transaction"]


S = TypeVar("S", bound=Store)


class _Of(Generic[S]):
    """A store of `Stores`, built on first use over its engine and kept."""

    def __init__(self, store: type[S]) -> None:
        self.store = store

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, stores: Stores, owner: type | None = None) -> S:
        built = stores.__dict__[self.name] = self.store(stores.engine)
        return built


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

    audit = _Of(AuditStore)
    tokens = _Of(TokenStore)
    records = _Of(RecordStore)
    monitors = _Of(MonitorStore)
    alerts = _Of(AlertStore)
    outbox = _Of(OutboxStore)
    loops = _Of(LoopStore)
    leases = _Of(LeaseStore)
    traffic = _Of(TrafficStore)
    traces = _Of(TraceStore)
