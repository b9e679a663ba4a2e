"""Idempotency-Keys for ``POST /finetune``: the first request with a key wins, once.

The key's primary key decides who came first on both backends: an insert that hits the
unique constraint means another request got there before, and its record is read instead.

The winner owns the key, under an owner token of its choosing, while it accepts the
request. Its ownership is a lease: it renews ``updated_at``, and a key still "accepting"
but not renewed for ``stale_after`` seconds belongs to a request that died (e.g. its API
process was killed); the next request with the key takes it over by writing its own
token. Every later write by an owner (renew, complete, abandon) first checks that the
token is still its own, so that a request which lost its key cannot touch the new owner's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.jobs.records import IdempotencyRecord
from service.jobs.tables import IdempotencyRow

ACCEPTING = "accepting"
DONE = "done"

# A key can vanish (abandoned) between a failed insert and the read after it; each retry
# needs yet another request with the same key to interleave, so a few tries are plenty.
_TRIES = 5


class IdempotencyKeys:
    """The Idempotency-Key half of ``JobStore``, over its writing sessions."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def begin(self, key: str, owner: str, stale_after: float | None) -> IdempotencyRecord | None:
        for _ in range(_TRIES):
            now = datetime.now(UTC)
            if self._insert(key, owner, now):
                return None
            with self._sessions.begin() as session:
                row = session.get(IdempotencyRow, key, with_for_update=True)
                if row is None:
                    continue  # Abandoned in the meantime: try to take it again.
                if _is_stale(row, now, stale_after):
                    row.owner = owner  # Taken over: the old owner's writes now miss.
                    row.updated_at = now
                    return None
                return row.to_record()
        raise RuntimeError(f"Idempotency-Key {key!r} kept appearing and vanishing")

    def renew(self, key: str, owner: str) -> bool:
        with self._sessions.begin() as session:
            renewed = session.connection().execute(
                update(IdempotencyRow)
                .where(*_owned_by(key, owner))
                .values(updated_at=datetime.now(UTC))
            )
            return renewed.rowcount == 1

    def complete(
        self, key: str, owner: str, request_hash: str, job_id: str, response: dict[str, Any]
    ) -> bool:
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            row = session.get(IdempotencyRow, key, with_for_update=True)
            if row is None:  # Taken over and abandoned by another request: record it anyway.
                row = IdempotencyRow(key=key, created_at=now)
                session.add(row)
            elif row.state != ACCEPTING or row.owner != owner:
                return False
            row.state = DONE
            row.owner = owner
            row.request_hash = request_hash
            row.job_id = job_id
            row.response = response
            row.updated_at = now
            return True

    def abandon(self, key: str, owner: str) -> None:
        with self._sessions.begin() as session:
            session.execute(
                delete(IdempotencyRow)
                .where(*_owned_by(key, owner))
                .execution_options(synchronize_session=False)
            )

    def _insert(self, key: str, owner: str, now: datetime) -> bool:
        try:
            with self._sessions.begin() as session:
                session.add(
                    IdempotencyRow(
                        key=key, state=ACCEPTING, owner=owner, created_at=now, updated_at=now
                    )
                )
        except IntegrityError:
            return False
        return True


def _owned_by(key: str, owner: str) -> tuple[Any, ...]:
    """The WHERE clause of a key still being accepted under ``owner``."""
    return (
        IdempotencyRow.key == key,
        IdempotencyRow.state == ACCEPTING,
        IdempotencyRow.owner == owner,
    )


def _is_stale(row: IdempotencyRow, now: datetime, stale_after: float | None) -> bool:
    if stale_after is None or row.state != ACCEPTING:
        return False
    return row.updated_at < now - timedelta(seconds=stale_after)
