"""``GET /finetune/{id}/events``: a job's progress and state changes as server-sent events.

The job store has no notifications, so the stream polls it every ``POLL_SECONDS`` and sends
``event: progress`` when the progress changed and ``event: state`` when the state did, each
with the whole job as JSON, and ends after a final state. FastAPI's ``EventSourceResponse``
encodes the events, adds keep-alive comments, and cancels this generator when the client
goes away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from fastapi.sse import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from service.api.metrics import ApiMetrics
from service.api.schemas import JobView
from service.errors import JobNotFoundError
from service.jobs.records import Job, JobState
from service.jobs.store import JobStore

POLL_SECONDS = 0.5
RETRY_MILLISECONDS = 2000  # how long a disconnected client waits before reconnecting


async def job_events(
    store: JobStore, job: Job, metrics: ApiMetrics
) -> AsyncIterator[ServerSentEvent]:
    """The events of ``job`` (fetched already, so that an unknown job is a plain 404)."""
    metrics.event_streams.inc()
    try:
        yield ServerSentEvent(retry=RETRY_MILLISECONDS, comment=f"events of job {job.id}")
        async for event in _changes(store, job):
            yield event
    finally:
        metrics.event_streams.dec()


async def _changes(store: JobStore, job: Job) -> AsyncIterator[ServerSentEvent]:
    sent = 0
    last_state: JobState | None = None
    last_progress: object = None
    while True:
        changes = []
        if job.progress is not None and job.progress != last_progress:
            changes.append("progress")
        if job.state != last_state:
            changes.append("state")
        last_state, last_progress = job.state, job.progress
        data = JobView.from_job(job).model_dump_json() if changes else ""
        for event in changes:
            sent += 1
            yield ServerSentEvent(event=event, raw_data=data, id=str(sent))
        if job.finished:
            return
        await anyio.sleep(POLL_SECONDS)
        try:
            job = await run_in_threadpool(store.get, job.id)
        except JobNotFoundError:  # removed meanwhile: nothing more will happen to it
            return
