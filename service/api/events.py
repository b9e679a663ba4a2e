"""``GET /finetune/{id}/events``: a job followed as compact server-sent events.

Three kinds of event, each with one JSON object as its data:

- ``state``: ``JobStateEvent``: ``job_id``, ``status``, ``attempts``, ``cancel_requested``,
  ``started_at``, ``finished_at``; in a final state (succeeded, failed, cancelled) also
  ``result`` and ``error`` (each an object or null).
- ``progress``: ``ProgressEvent``: ``phase`` (``features``, ``head``, ``fine_tune``,
  ``evaluate``, then ``publishing`` just before the version appears), ``epoch``,
  ``epochs``, ``step``, ``steps``, ``eta_seconds`` and ``metrics``, the latest batch's
  metrics (may be empty).
- ``epoch``: one row of the job's history, e.g. ``{"phase": "head", "epoch": 1, "loss": ..,
  "val_loss": ..}``, known by its ``phase`` and 1-based ``epoch``. An epoch redone after a
  crash is sent again with the same pair: it replaces the earlier row.

On connect the stream sends ``state``, then one ``epoch`` per history row recorded so far
(so a late client still draws the whole curve), then the latest ``progress``; afterwards
each change as it is seen. It ends right after a final ``state``, so a job that has already
finished gets that one event (its history is in ``GET /finetune/{id}``). Event ids count up
from 1 within a stream.

The job store has no notifications, so the stream polls it every ``POLL_SECONDS``.
FastAPI's ``EventSourceResponse`` encodes the events, adds keep-alive comments, and cancels
this generator when the client goes away.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi.sse import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from service.api.metrics import ApiMetrics
from service.api.schemas import JobStateEvent, ProgressEvent
from service.errors import JobNotFoundError
from service.jobs.records import Job
from service.jobs.store import JobStore

POLL_SECONDS = 0.5
RETRY_MILLISECONDS = 2000  # how long a disconnected client waits before reconnecting

Event = tuple[str, str]  # (event kind, JSON data)


async def job_events(
    store: JobStore, job: Job, metrics: ApiMetrics
) -> AsyncIterator[ServerSentEvent]:
    """The events of ``job`` (fetched already, so that an unknown job is a plain 404)."""
    metrics.event_streams.inc()
    try:
        yield ServerSentEvent(retry=RETRY_MILLISECONDS, comment=f"events of job {job.id}")
        sent = 0
        async for kind, data in _follow(store, job):
            sent += 1
            yield ServerSentEvent(event=kind, raw_data=data, id=str(sent))
    finally:
        metrics.event_streams.dec()


async def _follow(store: JobStore, job: Job) -> AsyncIterator[Event]:
    changes = JobChanges()
    while True:
        for event in changes.since_last(job):
            yield event
        if job.finished:
            return
        await anyio.sleep(POLL_SECONDS)
        try:
            job = await run_in_threadpool(store.get, job.id)
        except JobNotFoundError:  # removed meanwhile: nothing more will happen to it
            return


class JobChanges:
    """Turns successive snapshots of one job into the events its client has not had yet."""

    def __init__(self) -> None:
        self._state: str | None = None
        self._progress: str | None = None
        self._epochs: dict[tuple[Any, Any], str] = {}

    def since_last(self, job: Job) -> list[Event]:
        """The events that take a client from the previous snapshot to ``job``, in order."""
        state = JobStateEvent.from_job(job).to_json()
        if job.finished and self._state is None:
            return [("state", state)]
        events: list[Event] = []
        if not job.finished and state != self._state:
            events.append(("state", state))
        events += self._new_epochs(job.history)
        if not job.finished:
            events += self._new_progress(job.progress)
        else:
            # Last, after the epochs it may have finished with: the stream ends here.
            events.append(("state", state))
        self._state = state
        return events

    def _new_epochs(self, history: list[dict[str, Any]]) -> list[Event]:
        events: list[Event] = []
        for row in history:
            key = (row.get("phase"), row.get("epoch"))
            data = json.dumps(row)
            if self._epochs.get(key) != data:
                self._epochs[key] = data
                events.append(("epoch", data))
        return events

    def _new_progress(self, progress: dict[str, Any] | None) -> list[Event]:
        if progress is None:
            return []
        data = ProgressEvent.model_validate(progress).model_dump_json()
        if data == self._progress:
            return []
        self._progress = data
        return [("progress", data)]
