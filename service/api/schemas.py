"""What the API reads and answers, as pydantic models (they also make the OpenAPI document)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.contract.names import MODEL_NAME_PATTERN
from service.contract.train_config import BACKBONE_TABLE, DEFAULT_BASE_MODEL, TrainConfig
from service.errors import (
    FtserveError,
    ModelServerUnavailableError,
    QueueFullError,
    UnauthorizedError,
)
from service.jobs.records import FINAL_STATES, Job, JobState

MAX_TOP_K = 1000
# Versions are int64 on the wire (ModelSpec.version); the API takes those a JSON number
# keeps exactly everywhere (JavaScript, and schema tools that compare as floats).
MAX_VERSION = 2**53 - 1


class ErrorBody(BaseModel):
    code: str = Field(description="Stable, machine-readable error code, e.g. `job_not_found`.")
    message: str = Field(description="What went wrong, for a human.")


class ErrorResponse(BaseModel):
    """Every error the API answers: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorBody


JSON = "application/json"
ERROR_RESPONSE_REF = "#/components/schemas/ErrorResponse"  # app.py adds the schema

# Headers that come with some errors, for the OpenAPI document.
_ERROR_HEADERS: dict[type[FtserveError], dict[str, Any]] = {
    UnauthorizedError: {
        "WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}
    },
    ModelServerUnavailableError: {
        "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
    },
    QueueFullError: {
        "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
    },
}


def error_responses(*errors: type[FtserveError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the errors a route can raise, grouped by HTTP status."""
    grouped: dict[int, list[type[FtserveError]]] = {}
    for error in errors:
        grouped.setdefault(int(error.status), []).append(error)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, classes in sorted(grouped.items()):
        codes = ", ".join(f"`{cls.code}`" for cls in classes)
        entry: dict[str, Any] = {
            "description": f"{HTTPStatus(status).phrase}: {codes}",
            # Spelled out rather than `"model": ErrorResponse`, which FastAPI files under the
            # route's media type: errors are JSON even where the route streams events.
            "content": {JSON: {"schema": {"$ref": ERROR_RESPONSE_REF}}},
        }
        headers = {k: v for cls in classes for k, v in _ERROR_HEADERS.get(cls, {}).items()}
        if headers:
            entry["headers"] = headers
        responses[status] = entry
    return responses


# -- fine-tuning jobs ------------------------------------------------------------------------


class FinetuneFromFolder(TrainConfig):
    """``POST /finetune`` as JSON: the training config plus a dataset folder on the server."""

    data_uri: str = Field(
        description="A folder of class-named image folders, relative to (or inside) the data root."
    )


class FinetuneAccepted(BaseModel):
    job_id: str
    status: Literal["queued"] = "queued"
    model_name: str
    created_at: datetime


class Progress(BaseModel):
    """Where a running job is; the worker may add fields (it adds the latest ``metrics``)."""

    model_config = ConfigDict(extra="allow")

    phase: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    eta_seconds: float | None = None


class ProgressEvent(Progress):
    """The data of an ``event: progress``: ``Progress`` with the latest batch's metrics."""

    metrics: dict[str, float] = Field(
        default_factory=dict, description="The latest batch's metrics, e.g. loss and accuracy."
    )


class JobView(BaseModel):
    """One fine-tuning job as users see it."""

    job_id: str
    status: JobState
    model_name: str
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    progress: Progress | None = Field(description="Latest progress while running.")
    history: list[dict[str, Any]] = Field(description="Metrics of each finished epoch.")
    result: dict[str, Any] | None = Field(description="Model, version, evaluation, ...")
    error: ErrorBody | None = Field(description="Why the job failed.")

    @classmethod
    def from_job(cls, job: Job) -> JobView:
        return cls(
            job_id=job.id,
            status=job.state,
            model_name=job.model_name,
            config=job.config,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            progress=None if job.progress is None else Progress.model_validate(job.progress),
            history=job.history,
            result=job.result,
            error=None if job.error is None else ErrorBody.model_validate(job.error),
        )


class JobList(BaseModel):
    items: list[JobView]
    total: int = Field(description="How many jobs match the filters, over all pages.")
    limit: int
    offset: int


class JobStateEvent(BaseModel):
    """The data of an ``event: state``: where the job is in its life, without its bulk.

    ``result`` and ``error`` come only with a final state.
    """

    job_id: str
    status: JobState
    attempts: int
    cancel_requested: bool
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None = Field(default=None, description="Only in a final state.")
    error: ErrorBody | None = Field(default=None, description="Only in a final state.")

    @classmethod
    def from_job(cls, job: Job) -> JobStateEvent:
        error = job.error if job.finished else None
        return cls(
            job_id=job.id,
            status=job.state,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            started_at=job.started_at,
            finished_at=job.finished_at,
            result=job.result if job.finished else None,
            error=None if error is None else ErrorBody.model_validate(error),
        )

    def to_json(self) -> str:
        """The event's data: ``result`` and ``error`` are left out until the job is final."""
        final = self.status in FINAL_STATES
        return self.model_dump_json(exclude=None if final else {"result", "error"})


# -- predictions -----------------------------------------------------------------------------


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    b64: str = Field(description="A JPEG, PNG, GIF, BMP or WebP image, base64-encoded.")


# As in TensorFlow Serving's ModelSpec, a version and a version label exclude each other.
VERSION_OR_LABEL: dict[str, Any] = {
    "not": {
        "required": ["version", "label"],
        "properties": {"version": {"type": "integer"}, "label": {"type": "string"}},
    }
}


class PredictOptions(BaseModel):
    """Which model answers, and how many labels each prediction lists."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=VERSION_OR_LABEL)

    # The pattern is documented only; check_model_name answers 400 invalid_model_name.
    model: str = Field(
        max_length=63,
        description="The model's name.",
        json_schema_extra={"pattern": MODEL_NAME_PATTERN},
    )
    version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_VERSION,
        description="A served version. Default: the label `stable`.",
    )
    label: str | None = Field(
        default=None, min_length=1, max_length=255, description="Default: `stable`."
    )
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K, description="At most the model's K.")


class PredictRequest(PredictOptions):
    """TensorFlow Serving's REST convention: ``{"instances": [{"b64": ...}, ...]}``."""

    instances: list[Instance] = Field(min_length=1)


class LabelScore(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str = Field(description="The most likely class.")
    score: float
    top_k: list[LabelScore]


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]


# -- models ----------------------------------------------------------------------------------


class ModelSummary(BaseModel):
    name: str
    versions: list[int] = Field(description="Versions on disk, oldest first.")
    labels: dict[str, int] = Field(description="Label → version, e.g. stable and canary.")


class ModelList(BaseModel):
    models: list[ModelSummary]


class VersionView(BaseModel):
    version: int
    served: bool = Field(description="Whether models.config asks the model server to load it.")
    state: str = Field(
        description="As the model server reports it: START, LOADING, AVAILABLE, UNLOADING,"
        " END; NOT_LOADED when it does not know the version; UNKNOWN when it cannot be asked."
    )
    error: str | None = Field(description="The model server's error for this version, if any.")
    labels: list[str]
    created_at: str | None = Field(description="When the version was exported (ISO 8601).")
    metrics: dict[str, Any] = Field(description="Its evaluation on its own held-out split.")
    promotion: dict[str, Any] | None = Field(
        description="The champion/challenger decision taken when it was published."
    )
    onnx_url: str | None = Field(description="Where to download the ONNX file, if it has one.")
    card_url: str | None = Field(description="Where to download its model card, if it has one.")


class ModelDetail(BaseModel):
    name: str
    labels: dict[str, int]
    versions: list[VersionView]


class LabelMove(BaseModel):
    """``PUT /models/{name}/labels/{label}``: the version the label should point at."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION)


class Deleted(BaseModel):
    name: str
    deleted_versions: list[int]


# -- backbones -------------------------------------------------------------------------------


class BackboneView(BaseModel):
    """One backbone a job may set as ``base_model``."""

    name: str
    default_image_size: int = Field(description="The image size used when a job sets none.")
    min_image_size: int = Field(description="The smallest image_size it accepts.")
    preprocessing: str = Field(
        description="How its weights expect pixels: `tf` ([-1, 1]), `caffe` (BGR minus the"
        " ImageNet mean), `unit` ([0, 1]) or `none` (it normalises 0–255 pixels itself)."
    )
    imagenet_weights: bool = Field(description="Whether `weights: imagenet` is available.")


class BackboneList(BaseModel):
    default: str = Field(description="The base_model of a job that sets none.")
    items: list[BackboneView]

    @classmethod
    def from_contract(cls) -> BackboneList:
        """Every backbone the training tier builds, in the contract's order."""
        items = [BackboneView.model_validate(asdict(info)) for info in BACKBONE_TABLE]
        return cls(default=DEFAULT_BASE_MODEL, items=items)


# -- health ----------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description="`ok`, or why a dependency cannot be reached.")
