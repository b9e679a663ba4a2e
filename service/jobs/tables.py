"""The job store's tables (SQLAlchemy typed declarative models), for SQLite and Postgres alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    event,
    inspect,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateColumn
from sqlalchemy.types import TypeDecorator

from service.jobs.records import IdempotencyRecord, IdempotencyState, Job, JobState


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    Postgres keeps ``timestamptz`` but answers in the session's time zone; SQLite has no
    time zone at all and gives back naive values. Both come back as UTC here, and SQLite
    stores naive UTC in SQLAlchemy's fixed-width format, so comparing stored timestamps as
    text (``lease_expires_at < :now``) orders them correctly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the job store stores UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[dict[str, Any]]: JSON(),
    }


class JobRow(Base):
    __tablename__ = "jobs"
    # Claiming takes the oldest queued job; listing filters by state, newest first.
    __table_args__ = (Index("ix_jobs_state_created_at", "state", "created_at"),)

    # An insertion counter breaks ties between jobs created in the same microsecond, so
    # "oldest first" is first come, first served. Users only ever see ``id``.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    model_name: Mapped[str] = mapped_column(String(255), index=True)
    state: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]]
    dataset: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    progress: Mapped[dict[str, Any] | None]
    history: Mapped[list[dict[str, Any]]]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]

    # Transitions of one row. The store locks the row and checks who owns it first.

    def renew(self, now: datetime, lease_seconds: float) -> None:
        self.lease_expires_at = now + timedelta(seconds=lease_seconds)
        self.updated_at = now

    def finish(self, state: JobState, now: datetime) -> None:
        self.state = state.value
        self.finished_at = now
        self.updated_at = now
        self.lease_expires_at = None

    def requeue(self, now: datetime) -> None:
        self.state = JobState.QUEUED.value
        self.worker_id = None  # the progress stays: it says how far the last attempt got
        self.updated_at = now
        self.lease_expires_at = None

    def expire(self, now: datetime) -> None:
        """The lease ran out: cancel, queue again, or give up on the job."""
        if self.cancel_requested:
            self.finish(JobState.CANCELLED, now)
        elif self.attempts < self.max_attempts:
            self.requeue(now)
        else:
            self.finish(JobState.FAILED, now)
            self.error = {
                "code": "worker_lost",
                "message": f"the worker stopped renewing its lease after {self.attempts}"
                f" attempts (at most {self.max_attempts})",
            }

    def to_job(self) -> Job:
        return Job(
            id=self.id,
            model_name=self.model_name,
            state=JobState(self.state),
            config=self.config,
            dataset=self.dataset,
            created_at=self.created_at,
            updated_at=self.updated_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            progress=self.progress,
            history=list(self.history),
            result=self.result,
            error=self.error,
            cancel_requested=self.cancel_requested,
            worker_id=self.worker_id,
            lease_expires_at=self.lease_expires_at,
        )


class IdempotencyRow(Base):
    """One Idempotency-Key. While "accepting", ``owner`` names the request that holds it and
    ``updated_at`` is its lease: the owner renews it, and a key not renewed for long enough
    may be taken over (a new owner written) by the next request with it."""

    __tablename__ = "idempotency_keys"

    # The primary key is what makes "first request wins" atomic on both backends.
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    request_hash: Mapped[str | None] = mapped_column(String(128))
    job_id: Mapped[str | None] = mapped_column(String(64))
    response: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Added after the table: ``_add_missing_idempotency_columns`` adds it to older databases.
    owner: Mapped[str | None] = mapped_column(String(64))

    def to_record(self) -> IdempotencyRecord:
        state: IdempotencyState = "done" if self.state == "done" else "accepting"
        return IdempotencyRecord(
            key=self.key,
            state=state,
            request_hash=self.request_hash,
            job_id=self.job_id,
            response=self.response,
        )


@event.listens_for(Base.metadata, "after_create")
def _add_missing_idempotency_columns(metadata: MetaData, connection: Connection, **_: Any) -> None:
    """Bring an ``idempotency_keys`` table made by an older version up to date.

    ``create_all`` (``JobStore.create_schema``) creates missing tables but never alters
    existing ones; this runs right after it, in the same transaction and under the same
    lock. A column added to the table later must be nullable, so that existing rows get one
    and older processes still sharing the database keep working.
    """
    table = metadata.tables[IdempotencyRow.__tablename__]
    inspector = inspect(connection)
    if not inspector.has_table(table.name):  # create_all was asked for other tables only
        return
    present = {column["name"] for column in inspector.get_columns(table.name)}
    name = connection.dialect.identifier_preparer.format_table(table)
    for column in table.columns:
        if column.name not in present:
            spec = CreateColumn(column).compile(dialect=connection.dialect)
            connection.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN {spec}")
