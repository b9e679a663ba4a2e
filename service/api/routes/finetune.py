"""Fine-tuning jobs: submit, look up, list, cancel, follow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service.api.deps import JobStoreDep, MetricsDep, SettingsDep
from service.api.events import job_events
from service.api.finetune import accept_finetune
from service.api.schemas import (
    FinetuneAccepted,
    JobList,
    JobView,
    error_responses,
)
from service.errors import (
    ArchiveLimitError,
    BadRequestError,
    IdempotencyInFlightError,
    IdempotencyKeyReusedError,
    InvalidArchiveError,
    InvalidConfigError,
    InvalidDataUriError,
    JobFinishedError,
    JobNotFoundError,
    PayloadTooLargeError,
    QueueFullError,
    UnauthorizedError,
    UnprocessableError,
    UnsafeArchiveMemberError,
    UnsupportedMediaTypeError,
    UploadTooLargeError,
    WeightsUnavailableError,
)
from service.ingest.retention import discard_upload
from service.jobs.records import Job, JobState

router = APIRouter(prefix="/finetune", tags=["finetune"])

MAX_PAGE = 200
_SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["dataset", "config"],
                    "properties": {
                        "dataset": {
                            "type": "string",
                            "format": "binary",
                            "description": "A zip, tar, tar.gz, tar.bz2 or tar.xz of one "
                            "folder per class, each holding that class's images.",
                        },
                        "config": {"$ref": "#/components/schemas/TrainConfig"},
                    },
                },
                "encoding": {"config": {"contentType": "application/json"}},
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/FinetuneFromFolder"}},
        },
    }
}
_LOCATION = {"Location": {"description": "The job's URL.", "schema": {"type": "string"}}}

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retrying with the same key and body answers the first response again.",
    ),
]


def existing_job(job_id: str, store: JobStoreDep) -> Job:
    return store.get(job_id)


ExistingJobDep = Annotated[Job, Depends(existing_job)]


@router.post(
    "",
    status_code=202,
    response_model=FinetuneAccepted,
    summary="Queue a fine-tuning job",
    responses={
        202: {"description": "Queued.", "headers": _LOCATION},
        **error_responses(
            BadRequestError,
            InvalidArchiveError,
            UnsafeArchiveMemberError,
            InvalidDataUriError,
            UnauthorizedError,
            IdempotencyInFlightError,
            UploadTooLargeError,
            ArchiveLimitError,
            PayloadTooLargeError,
            UnsupportedMediaTypeError,
            InvalidConfigError,
            WeightsUnavailableError,
            IdempotencyKeyReusedError,
            UnprocessableError,
            QueueFullError,
        ),
    },
    openapi_extra=_SUBMIT_BODY,
)
async def submit_job(
    request: Request,
    settings: SettingsDep,
    store: JobStoreDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Upload a dataset (multipart) or name a folder on the server (JSON) to train on."""
    accepted = await accept_finetune(request, settings, store, idempotency_key)
    headers = {"Location": accepted.location}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(accepted.body, status_code=202, headers=headers)


@router.get(
    "",
    response_model=JobList,
    summary="List jobs, newest first",
    responses=error_responses(UnauthorizedError, UnprocessableError),
)
def list_jobs(
    store: JobStoreDep,
    status: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    model: Annotated[str | None, Query(max_length=255, description="Only this model.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> JobList:
    jobs, total = store.list(state=status, model_name=model, limit=limit, offset=offset)
    return JobList(
        items=[JobView.from_job(job) for job in jobs], total=total, limit=limit, offset=offset
    )


@router.get(
    "/{job_id}",
    response_model=JobView,
    summary="A job's state, progress and result",
    responses=error_responses(UnauthorizedError, JobNotFoundError),
)
def get_job(job: ExistingJobDep) -> JobView:
    return JobView.from_job(job)


@router.delete(
    "/{job_id}",
    response_model=JobView,
    summary="Cancel a job",
    responses={
        202: {"model": JobView, "description": "Running: its worker was asked to stop."},
        **error_responses(UnauthorizedError, JobNotFoundError, JobFinishedError),
    },
)
def cancel_job(job_id: str, store: JobStoreDep, settings: SettingsDep) -> JSONResponse:
    """A queued job is cancelled at once (200); a running one stops soon after (202).

    A job cancelled here never runs: its uploaded archive goes at once (a running job's
    worker removes it when it stops).
    """
    job = store.cancel(job_id)
    if job.finished:
        discard_upload(job.dataset, settings.uploads_dir())
    body = JobView.from_job(job).model_dump(mode="json")
    return JSONResponse(body, status_code=200 if job.finished else 202)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Follow a job as server-sent events",
    responses=error_responses(UnauthorizedError, JobNotFoundError),
)
async def follow_job(
    job: ExistingJobDep, store: JobStoreDep, metrics: MetricsDep
) -> AsyncIterator[ServerSentEvent]:
    """Three kinds of event, each with one JSON object as `data`:

    - `state` (a `JobStateEvent`): `job_id`, `status`, `attempts`, `cancel_requested`,
      `started_at`, `finished_at`; in a final state (`succeeded`, `failed`, `cancelled`)
      also `result` and `error`.
    - `progress` (a `ProgressEvent`): `phase` (`features`, `head`, `fine_tune`, `evaluate`, then
      `publishing`), `epoch`, `epochs`, `step`, `steps`, `eta_seconds`, and `metrics`, the
      latest batch's metrics.
    - `epoch`: one row of the job's `history`, e.g.
      `{"phase": "head", "epoch": 1, "loss": 0.41, "val_loss": 0.38}`. An epoch redone after
      a crash comes again with the same `phase` and `epoch` and replaces the earlier row.

    On connect: `state`, then one `epoch` per history row recorded so far, then the latest
    `progress`; afterwards each change. The stream ends right after a final `state` (a job
    already finished gets only that event). Event ids count up from 1.
    """
    async for event in job_events(store, job, metrics):
        yield event
