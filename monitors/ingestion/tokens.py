"""Write tokens of the ingest API. Only sha256 hashes are stored; a token is shown once, when created."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from tuneloop.errors import Conflict, NotFound
from tuneloop.store import Stores

TOKEN_PREFIX = "tlk_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(stores: Stores, name: str) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    if not stores.tokens.add(name, token_hash(token)):
        raise Conflict(f"a token named `{name}` exists", hint="revoke it first, or choose another name")
    return token


def revoke(stores: Stores, name: str) -> None:
    if not stores.tokens.revoke(name):
        raise NotFound(f"no active token named `{name}`", hint="see `tuneloop monitor token list`")


def listing(stores: Stores) -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "created_at": t.created_at.isoformat(),
            "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
        }
        for t in stores.tokens.all()
    ]


def active_hashes(stores: Stores) -> set[str]:
    return stores.tokens.active_hashes()
