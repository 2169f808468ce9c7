"""Write tokens of the ingest API: names and sha256 hashes, never the tokens themselves."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from tuneloop.store.base import Store
from tuneloop.store.tables import ingest_tokens


@dataclass(frozen=True)
class IngestToken:
    name: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class TokenStore(Store):
    def add(self, name: str, token_sha256: str) -> bool:
        """Store a new token's hash; False when the name is taken (nothing stored)."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(ingest_tokens.c.name).where(ingest_tokens.c.name == name)).first():
                return False
            conn.execute(
                ingest_tokens.insert().values(name=name, token_sha256=token_sha256, created_at=datetime.now(UTC))
            )
        return True

    def revoke(self, name: str) -> bool:
        """Revoke the active token `name`; False when there is none."""
        with self.engine.begin() as conn:
            done = conn.execute(
                ingest_tokens.update()
                .where(ingest_tokens.c.name == name, ingest_tokens.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return done.rowcount > 0

    def all(self) -> list[IngestToken]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(ingest_tokens.c.name, ingest_tokens.c.created_at, ingest_tokens.c.revoked_at).order_by(
                    ingest_tokens.c.name
                )
            ).all()
        return [IngestToken(r.name, r.created_at, r.revoked_at) for r in rows]

    def active_hashes(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    sa.select(ingest_tokens.c.token_sha256).where(ingest_tokens.c.revoked_at.is_(None))
                ).scalars()
            )
