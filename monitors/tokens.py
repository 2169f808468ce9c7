"""Write tokens of the ingest API. Only sha256 hashes are stored; a token is shown once, when created."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

import sqlalchemy as sa

from tuneloop.errors import Conflict, NotFound
from tuneloop.store import tables

TOKEN_PREFIX = "tlk_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(engine: sa.Engine, name: str) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        if conn.execute(sa.select(tables.ingest_tokens.c.name).where(tables.ingest_tokens.c.name == name)).scalar():
            raise Conflict(f"a token named `{name}` exists", hint="revoke it first, or choose another name")
        conn.execute(tables.ingest_tokens.insert().values(name=name, token_sha256=token_hash(token), created_at=datetime.now(UTC)))
    return token


def revoke(engine: sa.Engine, name: str) -> None:
    with engine.begin() as conn:
        done = conn.execute(tables.ingest_tokens.update().where(
            (tables.ingest_tokens.c.name == name) & tables.ingest_tokens.c.revoked_at.is_(None)).values(revoked_at=datetime.now(UTC)))
        if done.rowcount == 0:
            raise NotFound(f"no active token named `{name}`", hint="see `tuneloop monitor token list`")


def listing(engine: sa.Engine) -> list[dict[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(tables.ingest_tokens).order_by(tables.ingest_tokens.c.name)).mappings().all()
    return [{"name": r["name"], "created_at": r["created_at"].isoformat(),
             "revoked_at": r["revoked_at"].isoformat() if r["revoked_at"] else None} for r in rows]


def active_hashes(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(tables.ingest_tokens.c.token_sha256).where(
            tables.ingest_tokens.c.revoked_at.is_(None))).scalars())
