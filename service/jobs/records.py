"""What the job store hands out: plain, immutable values, detached from any database session."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal


class JobState(StrEnum):
    """Where a job is in its life: queued → running → one of the three final states."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
)


class LeaseLostError(Exception):
    """The job is no longer running under this worker: its lease expired or it was cancelled.

    Not an ``FtserveError``: no user ever sees it. The worker that gets it must stop
    working on the job and must not write anything more about it, because another worker
    may own it now.
    """

    def __init__(
        self,
        job_id: str,
        worker_id: str | None = None,
        state: JobState | None = None,
        owner: str | None = None,
    ) -> None:
        holder = f"worker {worker_id}" if worker_id else "this worker"
        message = f"job {job_id} is no longer running under {holder}"
        if state is not None:
            message += f": it is {state.value}, worker {owner or 'none'}"
        super().__init__(message)
        self.job_id = job_id
        self.worker_id = worker_id
        self.state = state
        self.owner = owner


@dataclass(frozen=True)
class Job:
    """One fine-tuning job as stored; see ``JobStore`` for how each field changes."""

    id: str
    model_name: str
    state: JobState
    config: dict[str, Any]
    dataset: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_attempts: int
    progress: dict[str, Any] | None
    history: list[dict[str, Any]]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    cancel_requested: bool
    worker_id: str | None
    lease_expires_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-ready values: the state as its string, timestamps in ISO 8601."""
        data = asdict(self)
        data["state"] = self.state.value
        for name, value in data.items():
            if isinstance(value, datetime):
                data[name] = value.isoformat()
        return data


IdempotencyState = Literal["accepting", "done"]


@dataclass(frozen=True)
class IdempotencyRecord:
    """An ``Idempotency-Key`` seen before.

    ``accepting``: the first request with the key is still being accepted (no hash, job or
    response yet). ``done``: it was accepted; a retry with the same ``request_hash`` gets
    ``response`` again, a different body is a reused key.
    """

    key: str
    state: IdempotencyState
    request_hash: str | None
    job_id: str | None
    response: dict[str, Any] | None
