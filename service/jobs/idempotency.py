"""Idempotency-Keys for ``POST /finetune``: the first request with a key wins, once.

The key's primary key decides who came first on both backends: an insert that hits the
unique constraint means another request got there before, and its record is read instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete
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
    """The ``begin/complete/abandon`` half of ``JobStore``, over its writing sessions."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def begin(self, key: str, stale_after: float | None) -> IdempotencyRecord | None:
        for _ in range(_TRIES):
            now = datetime.now(UTC)
            if self._insert(key, now):
                return None
            with self._sessions.begin() as session:
                row = session.get(IdempotencyRow, key, with_for_update=True)
                if row is None:
                    continue  # Abandoned in the meantime: try to take it again.
                if _is_stale(row, now, stale_after):
                    row.updated_at = now  # Taken over: this caller owns the key now.
                    return None
                return row.to_record()
        raise RuntimeError(f"Idempotency-Key {key!r} kept appearing and vanishing")

    def complete(self, key: str, request_hash: str, job_id: str, response: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            row = session.get(IdempotencyRow, key, with_for_update=True)
            if row is None:  # Taken over and abandoned by another request: record it anyway.
                row = IdempotencyRow(key=key, created_at=now)
                session.add(row)
            row.state = DONE
            row.request_hash = request_hash
            row.job_id = job_id
            row.response = response
            row.updated_at = now

    def abandon(self, key: str) -> None:
        with self._sessions.begin() as session:
            session.execute(
                delete(IdempotencyRow).where(
                    IdempotencyRow.key == key, IdempotencyRow.state == ACCEPTING
                )
            )

    def _insert(self, key: str, now: datetime) -> bool:
        try:
            with self._sessions.begin() as session:
                session.add(
                    IdempotencyRow(key=key, state=ACCEPTING, created_at=now, updated_at=now)
                )
        except IntegrityError:
            return False
        return True


def _is_stale(row: IdempotencyRow, now: datetime, stale_after: float | None) -> bool:
    if stale_after is None or row.state != ACCEPTING:
        return False
    return row.updated_at < now - timedelta(seconds=stale_after)
