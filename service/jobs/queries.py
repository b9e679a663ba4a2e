"""The SQL behind the job store's decisions, and the locks each one takes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Connection, Select, func, select
from sqlalchemy.orm import Session

from service.errors import JobNotFoundError
from service.jobs.records import JobState, LeaseLostError
from service.jobs.tables import JobRow

# First keys of Postgres advisory locks; the second is the schema's hash, so that two
# installations sharing a database do not wait on each other.
SCHEMA_LOCK = 0x6674_0001
ENQUEUE_LOCK = 0x6674_0002


def advisory_lock(target: Session | Connection, key: int) -> None:
    """Take a Postgres lock held until the transaction ends (commit or rollback)."""
    target.execute(select(func.pg_advisory_xact_lock(key, func.hashtext(func.current_schema()))))


def find(session: Session, job_id: str, *, lock: bool = False) -> JobRow:
    """The job's row, locked (Postgres ``FOR UPDATE``) when ``lock``; or JobNotFoundError."""
    query = select(JobRow).where(JobRow.id == job_id)
    row = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise JobNotFoundError(f"no job with id {job_id!r}")
    return row


def owned(session: Session, job_id: str, worker_id: str) -> JobRow:
    """The job's row, locked, if it runs under ``worker_id``; else LeaseLostError."""
    # Locked, so that requeue_expired or cancel cannot change it before this commits.
    row = find(session, job_id, lock=True)
    if row.state != JobState.RUNNING.value or row.worker_id != worker_id:
        raise LeaseLostError(job_id, worker_id, JobState(row.state), row.worker_id)
    return row


def count_queued(session: Session) -> int:
    return session.scalar(select(func.count()).where(JobRow.state == JobState.QUEUED.value)) or 0


def oldest_queued() -> Select[JobRow]:
    return (
        select(JobRow)
        .where(JobRow.state == JobState.QUEUED.value)
        .order_by(JobRow.created_at, JobRow.seq)
        .limit(1)
        # Postgres: lock the row, and pass over rows other claimers hold. SQLite ignores
        # this; its BEGIN IMMEDIATE already excludes every other writer.
        .with_for_update(skip_locked=True)
    )


def expired_leases(now: datetime) -> Select[JobRow]:
    return (
        select(JobRow)
        .where(JobRow.state == JobState.RUNNING.value, JobRow.lease_expires_at < now)
        .order_by(JobRow.seq)
        # Concurrent sweepers (and a heartbeat renewing one of these) each keep their rows.
        .with_for_update(skip_locked=True)
    )


def page(
    session: Session, filters: list[ColumnElement[bool]], limit: int, offset: int
) -> tuple[list[JobRow], int]:
    """Rows matching ``filters``, newest first, and how many match in all."""
    total = session.scalar(select(func.count()).select_from(JobRow).where(*filters)) or 0
    newest_first = (JobRow.created_at.desc(), JobRow.seq.desc())
    rows = session.scalars(
        select(JobRow).where(*filters).order_by(*newest_first).limit(limit).offset(offset)
    )
    return list(rows), total
