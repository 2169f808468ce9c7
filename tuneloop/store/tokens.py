"""Bearer tokens: names, sha256 hashes (never the tokens themselves) and the one scope each grants.

`serve` calls the OpenAI-compatible API of `tuneloop serve`; `ingest` posts records and feedback to the
ingest API (feedback trains challengers, so a caller of the model may not post it with a serve token).
A token is shown once, when created. Tokens set in settings (`serve.tokens`, `ingest.tokens`) hold
their section's scope and are never stored.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa

from tuneloop.errors import Conflict, NotFound
from tuneloop.settings import TOKEN_PREFIX
from tuneloop.store.base import Store, entity
from tuneloop.store.tables import ingest_tokens

READ_EVERY_SECONDS = 5.0  # how soon a server sees a created or revoked token


class Scope(StrEnum):
    SERVE = "serve"
    INGEST = "ingest"


@dataclass(frozen=True)
class ApiToken:
    name: str
    scope: Scope
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore(Store):
    def create(self, name: str, scope: Scope) -> str:
        """A new token of `scope`, returned once; only its hash is stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            if conn.execute(sa.select(ingest_tokens.c.name).where(ingest_tokens.c.name == name)).first():
                raise Conflict(f"a token named `{name}` exists", hint="revoke it first, or choose another name")
            conn.execute(
                ingest_tokens.insert().values(
                    name=name, token_sha256=token_hash(token), scope=scope.value, created_at=datetime.now(UTC)
                )
            )
        return token

    def revoke(self, name: str) -> None:
        """Revoke the active token `name`; servers refuse it within `READ_EVERY_SECONDS`."""
        with self.engine.begin() as conn:
            done = conn.execute(
                ingest_tokens.update()
                .where(ingest_tokens.c.name == name, ingest_tokens.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        if done.rowcount == 0:
            raise NotFound(f"no active token named `{name}`", hint="see `tuneloop tokens list`")

    def all(self) -> list[ApiToken]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ingest_tokens).order_by(ingest_tokens.c.name)).all()
        return [entity(ApiToken, r) for r in rows]

    def accepted(self, configured: Iterable[tuple[str, str]]) -> AcceptedTokens:
        return AcceptedTokens(self, configured)

    def active_scopes(self) -> dict[str, Scope]:
        """The scope of each active token, by hash."""
        query = sa.select(ingest_tokens.c.token_sha256, ingest_tokens.c.scope).where(
            ingest_tokens.c.revoked_at.is_(None)
        )
        with self.engine.connect() as conn:
            return {digest: Scope(scope) for digest, scope in conn.execute(query)}


class AcceptedTokens:
    """What a server accepts: the tokens of its settings, plus the stored active ones (re-read every
    `READ_EVERY_SECONDS`). `scope_of` is None for a token nobody issued (401) and the token's scope
    otherwise (403 when it is not the one the call needs)."""

    def __init__(self, store: TokenStore, configured: Iterable[tuple[str, str]]) -> None:
        self._store = store
        self._configured = {token_hash(token): Scope(scope) for token, scope in configured}
        self._stored: dict[str, Scope] = {}
        self._read_at = -READ_EVERY_SECONDS
        self._lock = threading.Lock()

    def scope_of(self, token: str) -> Scope | None:
        digest = token_hash(token)
        if digest in self._configured:
            return self._configured[digest]
        with self._lock:
            if time.monotonic() - self._read_at > READ_EVERY_SECONDS:
                self._stored = self._store.active_scopes()
                self._read_at = time.monotonic()
            return self._stored.get(digest)
