"""The job store: a queue of fine-tuning jobs with leases, on SQLite or Postgres.

A job is ``queued`` until a worker claims it. The claim is a lease: the worker renews it
with ``heartbeat``/``update_progress`` and reports the outcome with ``succeed``, ``fail`` or
``mark_cancelled``. A worker that dies stops renewing; the next ``claim`` (or anyone calling
``requeue_expired``) puts its job back in the queue, until ``max_attempts`` is spent.

Concurrency. Every write is one short transaction that locks what it reads before
deciding. On Postgres the claim is ``SELECT ... FOR UPDATE SKIP LOCKED`` (claimers pass
over each other's rows instead of queueing behind them), single-job updates lock their row
with ``FOR UPDATE``, and enqueues with a depth limit serialise on a transaction-scoped
advisory lock so that "count the queue, then insert" is exact. On SQLite every write
transaction is ``BEGIN IMMEDIATE`` (see ``engine.py``): one writer at a time across all
processes, so the same read-then-write sequences are exact there too.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from service.contract.history import record_epoch
from service.errors import JobFinishedError, QueueFullError
from service.jobs import queries
from service.jobs.engine import create_store_engines, is_sqlite
from service.jobs.idempotency import IdempotencyKeys
from service.jobs.records import (
    FINAL_STATES,
    IdempotencyRecord,
    Job,
    JobState,
    LeaseLostError,
)
from service.jobs.tables import Base, JobRow

# The job's progress phase from the moment its version's rename may happen.
PUBLISHING = "publishing"

if TYPE_CHECKING:
    from service.config import Settings

# The worker and the API import these from here as well as from the package.
__all__ = [
    "FINAL_STATES",
    "IdempotencyRecord",
    "Job",
    "JobPage",
    "JobState",
    "JobStore",
    "LeaseLostError",
]

JobPage = tuple[list[Job], int]


def _now() -> datetime:
    return datetime.now(UTC)


class JobStore:
    """Jobs and Idempotency-Keys in one database; safe to share across threads.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/to/file.db`` or
            ``postgresql+psycopg://user@host:5432/db``.
        lease_seconds: how long a claim (or its last renewal) holds a job for its worker.
        max_attempts: how many claims a job gets before a lost worker fails it; copied
            into each job when it is enqueued.
        echo: log every SQL statement (debugging).
    """

    def __init__(
        self, url: str, *, lease_seconds: float = 30.0, max_attempts: int = 3, echo: bool = False
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self._reader, self._writer = create_store_engines(url, echo=echo)
        self._sqlite = is_sqlite(self._reader)
        self._read = sessionmaker(self._reader, expire_on_commit=False)
        self._write = sessionmaker(self._writer, expire_on_commit=False)
        self._idempotency = IdempotencyKeys(self._write)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """The store ``settings`` describe (URL, lease and attempts); the schema is not created."""
        return cls(
            settings.sqlalchemy_url(),
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )

    # -- lifecycle of the store itself --------------------------------------------------

    def create_schema(self) -> None:
        """Create the tables that are missing. Safe to run from several processes at once."""
        with self._writer.begin() as connection:
            # create_all checks, then creates: two processes could both see "missing".
            # SQLite's BEGIN IMMEDIATE already serialises them; Postgres needs a lock (its
            # DDL is transactional, so the second one then finds the tables).
            if not self._sqlite:
                queries.advisory_lock(connection, queries.SCHEMA_LOCK)
            Base.metadata.create_all(connection)

    def close(self) -> None:
        """Close every pooled connection; the store must not be used afterwards."""
        self._reader.dispose()

    def ping(self) -> None:
        """Run ``SELECT 1``; raises the driver's error when the database cannot answer."""
        with self._reader.connect() as connection:
            connection.execute(text("SELECT 1"))

    # -- the API tier ---------------------------------------------------------------------

    def enqueue(
        self,
        model_name: str,
        config: dict[str, Any],
        dataset: str,
        *,
        max_queue_depth: int | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Add a queued job.

        Args:
            model_name: the model the job trains (a new version of it).
            config: the training config as accepted (JSON-ready).
            dataset: path of the uploaded archive or data folder.
            max_queue_depth: refuse the job when this many are already queued; the check
                and the insert are one atomic step on both backends.
            job_id: the id to use (default: a new uuid4 hex), e.g. when the upload was
                already stored under it.

        Raises:
            QueueFullError: ``max_queue_depth`` jobs are already waiting.
        """
        now = _now()
        with self._write.begin() as session:
            if max_queue_depth is not None:
                self._check_queue_depth(session, max_queue_depth)
            row = JobRow(
                id=job_id or uuid.uuid4().hex,
                model_name=model_name,
                state=JobState.QUEUED.value,
                config=config,
                dataset=dataset,
                created_at=now,
                updated_at=now,
                attempts=0,
                max_attempts=self.max_attempts,
                history=[],
                cancel_requested=False,
            )
            session.add(row)
            session.flush()
            return row.to_job()

    def get(self, job_id: str) -> Job:
        """The job with this id. Raises ``JobNotFoundError``."""
        with self._read.begin() as session:
            return queries.find(session, job_id).to_job()

    def list(
        self,
        *,
        state: JobState | None = None,
        model_name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> JobPage:
        """One page of jobs, newest first, and how many match the filters in all."""
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must not be negative, got {limit}, {offset}")
        filters: list[ColumnElement[bool]] = []
        if state is not None:
            filters.append(JobRow.state == JobState(state).value)
        if model_name is not None:
            filters.append(JobRow.model_name == model_name)
        with self._read.begin() as session:
            rows, total = queries.page(session, filters, limit, offset)
            return [row.to_job() for row in rows], total

    def cancel(self, job_id: str) -> Job:
        """Cancel a job, or ask its worker to stop.

        A queued job is cancelled at once. A running one gets ``cancel_requested``; it stays
        running until its worker notices (``heartbeat`` returns True) and calls
        ``mark_cancelled``, or until its lease expires. Cancelling twice changes nothing.

        Raises:
            JobNotFoundError: no such job.
            JobFinishedError: the job already succeeded or failed.
        """
        now = _now()
        with self._write.begin() as session:
            row = queries.find(session, job_id, lock=True)
            state = JobState(row.state)
            if state in (JobState.SUCCEEDED, JobState.FAILED):
                raise JobFinishedError(
                    f"job {job_id} already {state.value}; it cannot be cancelled"
                )
            if state is JobState.RUNNING and (row.progress or {}).get("phase") == PUBLISHING:
                raise JobFinishedError(
                    f"job {job_id} is publishing its version; it can no longer be cancelled"
                )
            if state is not JobState.CANCELLED and not row.cancel_requested:
                row.cancel_requested = True
                row.updated_at = now
            if state is JobState.QUEUED:
                row.finish(JobState.CANCELLED, now)
            return row.to_job()

    def queue_depth(self) -> int:
        """How many jobs are queued."""
        with self._read.begin() as session:
            return queries.count_queued(session)

    def counts_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state; every state is present, zeros included."""
        counts = dict.fromkeys(JobState, 0)
        with self._read.begin() as session:
            for state, count in session.execute(
                select(JobRow.state, func.count()).group_by(JobRow.state)
            ):
                counts[JobState(state)] = count
        return counts

    # -- the worker -------------------------------------------------------------------------

    def claim(self, worker_id: str) -> Job | None:
        """Take the oldest queued job for ``worker_id``, or None when the queue is empty.

        Expired leases are re-queued first, so a job whose worker died is claimed again.
        The job becomes running with a fresh lease, one more attempt and (the first time)
        ``started_at``. Two claimers never get the same job.
        """
        self.requeue_expired()
        now = _now()
        with self._write.begin() as session:
            row = session.scalars(queries.oldest_queued()).first()
            if row is None:
                return None
            row.state = JobState.RUNNING.value
            row.worker_id = worker_id
            row.attempts += 1
            row.started_at = row.started_at or now
            row.renew(now, self.lease_seconds)
            return row.to_job()

    def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """Renew the lease. Returns whether cancellation was requested.

        Raises:
            LeaseLostError: the job is no longer running under ``worker_id``.
        """
        with self._write.begin() as session:
            row = queries.owned(session, job_id, worker_id)
            row.renew(_now(), self.lease_seconds)
            return row.cancel_requested

    def update_progress(
        self,
        job_id: str,
        worker_id: str,
        progress: dict[str, Any],
        epoch_metrics: dict[str, Any] | None = None,
    ) -> None:
        """Replace the progress, record a finished epoch's metrics, and renew the lease.

        An epoch is known by its ``phase`` and ``epoch``: one that an earlier attempt had
        already reported (it was redone after a crash) replaces that entry, so the history
        never lists an epoch twice.

        Raises:
            LeaseLostError: the job is no longer running under ``worker_id``.
        """
        with self._write.begin() as session:
            row = queries.owned(session, job_id, worker_id)
            row.progress = progress
            if epoch_metrics is not None:
                # A new list, so the JSON column sees the change.
                row.history = record_epoch(row.history, epoch_metrics)
            row.renew(_now(), self.lease_seconds)

    def begin_publish(self, job_id: str, worker_id: str) -> bool:
        """The last point where cancellation wins: called just before the version's rename.

        Returns False if a cancel was requested (the worker must publish nothing). Otherwise
        the job's phase becomes ``publishing`` in the same transaction, and from then on
        ``cancel`` answers ``JobFinishedError``: a version is about to exist.

        Raises:
            LeaseLostError: the job is no longer running under ``worker_id``.
        """
        with self._write.begin() as session:
            row = queries.owned(session, job_id, worker_id)
            if row.cancel_requested:
                return False
            row.progress = {**(row.progress or {}), "phase": PUBLISHING}
            row.renew(_now(), self.lease_seconds)
            return True

    def succeed(self, job_id: str, worker_id: str, result: dict[str, Any]) -> Job:
        """Finish the job with its result. Raises ``LeaseLostError`` (see ``heartbeat``)."""
        return self._finish(job_id, worker_id, JobState.SUCCEEDED, result=result)

    def fail(self, job_id: str, worker_id: str, code: str, message: str) -> Job:
        """Finish the job with an error. Raises ``LeaseLostError`` (see ``heartbeat``)."""
        error = {"code": code, "message": message}
        return self._finish(job_id, worker_id, JobState.FAILED, error=error)

    def mark_cancelled(self, job_id: str, worker_id: str) -> Job:
        """The worker stopped because cancellation was requested. Raises ``LeaseLostError``."""
        return self._finish(job_id, worker_id, JobState.CANCELLED)

    def release(self, job_id: str, worker_id: str) -> Job:
        """Give a job back to the queue because this worker is shutting down.

        The attempt is returned too: a rolling restart is not a lost worker, and must not
        use up ``max_attempts``. A job whose cancellation was requested is cancelled instead.
        Raises ``LeaseLostError`` (see ``heartbeat``).
        """
        now = _now()
        with self._write.begin() as session:
            row = queries.owned(session, job_id, worker_id)
            row.attempts = max(row.attempts - 1, 0)
            if row.cancel_requested:
                row.finish(JobState.CANCELLED, now)
            else:
                row.requeue(now)
            return row.to_job()

    def requeue_expired(self) -> int:
        """Deal with running jobs whose lease expired. Returns how many changed.

        Cancellation requested → cancelled; attempts left → queued again (attempts and
        progress kept, worker cleared); otherwise → failed with code ``worker_lost``.
        Concurrent callers each handle different jobs (Postgres: ``SKIP LOCKED``).
        """
        now = _now()
        with self._write.begin() as session:
            rows = session.scalars(queries.expired_leases(now)).all()
            for row in rows:
                row.expire(now)
            return len(rows)

    # -- Idempotency-Keys -------------------------------------------------------------------

    def begin_idempotent(
        self, key: str, owner: str, *, stale_after: float | None = None
    ) -> IdempotencyRecord | None:
        """Start accepting the first request with ``key``, or say what became of it.

        Args:
            key: the client's Idempotency-Key.
            owner: a token unique to this request; its later calls about the key pass it.
            stale_after: take over a key still "accepting" whose owner has not renewed it
                (``renew_idempotent``) for this many seconds: its request died before
                completing or abandoning it. None: never.

        Returns:
            None when ``owner`` owns the key now and must complete or abandon it (and renew
            it meanwhile); otherwise the existing record, "accepting" or "done".
        """
        return self._idempotency.begin(key, owner, stale_after)

    def renew_idempotent(self, key: str, owner: str) -> bool:
        """Renew ``owner``'s lease on an "accepting" key; False if it is no longer its own."""
        return self._idempotency.renew(key, owner)

    def complete_idempotent(
        self, key: str, owner: str, request_hash: str, job_id: str, response: dict[str, Any]
    ) -> bool:
        """Record that ``owner``'s request with ``key`` was accepted, and the response it got.

        Returns False, recording nothing, when another request took the key over meanwhile
        (and still holds it, or completed it).
        """
        return self._idempotency.complete(key, owner, request_hash, job_id, response)

    def abandon_idempotent(self, key: str, owner: str) -> None:
        """Forget an "accepting" key whose request failed, so that a retry can proceed.

        Only while ``owner`` still holds it. A "done" key stays: its response is what every
        retry must get.
        """
        self._idempotency.abandon(key, owner)

    # -- helpers ------------------------------------------------------------------------------

    def _finish(self, job_id: str, worker_id: str, state: JobState, **fields: Any) -> Job:
        with self._write.begin() as session:
            row = queries.owned(session, job_id, worker_id)
            row.finish(state, _now())
            for name, value in fields.items():
                setattr(row, name, value)
            return row.to_job()

    def _check_queue_depth(self, session: Session, max_queue_depth: int) -> None:
        if not self._sqlite:
            # Serialise enqueuers only, so that no two admit a job against the same count.
            # Claims and cancels running alongside can only shrink the queue. (Re-queued
            # jobs were admitted before; they may take the queue past the limit.)
            queries.advisory_lock(session, queries.ENQUEUE_LOCK)
        depth = queries.count_queued(session)
        if depth >= max_queue_depth:
            raise QueueFullError(
                f"the queue is full ({depth} jobs waiting, at most {max_queue_depth}); retry later"
            )
