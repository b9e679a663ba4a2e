"""The ftserve error tree. Every class carries the HTTP status and code a user sees.

    FtserveError (500 internal)
    ├── BadRequestError (400 bad_request)
    │   ├── InvalidArchiveError (400 invalid_archive)
    │   ├── UnsafeArchiveMemberError (400 unsafe_archive_member)
    │   ├── InvalidModelNameError (400 invalid_model_name)
    │   ├── InvalidLabelError (400 invalid_label)
    │   ├── InvalidBase64Error (400 invalid_base64)
    │   ├── NotAnImageError (400 not_an_image)
    │   └── InvalidDataUriError (400 invalid_data_uri)
    ├── UnauthorizedError (401 unauthorized)
    ├── NotFoundError (404 not_found)
    │   ├── JobNotFoundError (404 job_not_found)
    │   └── ModelNotFoundError (404 model_not_found)
    │       ├── VersionNotFoundError (404 version_not_found)
    │       ├── VersionNotServedError (404 version_not_served)
    │       └── LabelNotFoundError (404 label_not_found)
    ├── ConflictError (409 conflict)
    │   ├── IdempotencyInFlightError (409 idempotency_in_flight)
    │   ├── JobFinishedError (409 job_finished)
    │   ├── VersionFailedError (409 version_failed)
    │   ├── VersionLabelledError (409 version_labelled)
    │   ├── LabelInUseError (409 label_in_use)
    │   └── NoPreviousVersionError (409 no_previous_version)
    ├── PayloadTooLargeError (413 too_large)
    │   ├── ArchiveLimitError (413 archive_limit)
    │   ├── ImageTooLargeError (413 image_too_large)
    │   ├── UploadTooLargeError (413 upload_too_large)
    │   ├── TooManyInstancesError (413 too_many_instances)
    │   └── MemoryLimitError (413 memory_limit_exceeded)
    ├── UnsupportedMediaTypeError (415 unsupported_media_type)
    ├── UnprocessableError (422 unprocessable)
    │   ├── InvalidConfigError (422 invalid_config)
    │   ├── DatasetError (422 dataset_unusable)
    │   ├── WeightsUnavailableError (422 weights_unavailable)
    │   └── IdempotencyKeyReusedError (422 idempotency_key_reused)
    ├── QueueFullError (429 queue_full)
    ├── TrainingCancelledError (409 cancelled)
    ├── ExportError (500 export_failed)
    ├── ModelServerUnavailableError (503 model_server_unavailable)
    ├── StorageUnavailableError (507 storage_unavailable)
    └── ModelServerTimeoutError (504 model_server_timeout)

Code that raises picks the most specific class; the HTTP layer renders any of them as
``{"error": {"code": ..., "message": ...}}`` with ``status``.
"""

from __future__ import annotations

from http import HTTPStatus


class FtserveError(Exception):
    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequestError(FtserveError):
    status = HTTPStatus.BAD_REQUEST
    code = "bad_request"


class InvalidArchiveError(BadRequestError):
    code = "invalid_archive"


class UnsafeArchiveMemberError(BadRequestError):
    code = "unsafe_archive_member"


class PayloadTooLargeError(FtserveError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "too_large"


class ArchiveLimitError(PayloadTooLargeError):
    code = "archive_limit"


class ImageTooLargeError(PayloadTooLargeError):
    code = "image_too_large"


class UnprocessableError(FtserveError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "unprocessable"


class InvalidConfigError(UnprocessableError):
    code = "invalid_config"


class DatasetError(UnprocessableError):
    code = "dataset_unusable"


class WeightsUnavailableError(UnprocessableError):
    code = "weights_unavailable"


class TrainingCancelledError(FtserveError):
    status = HTTPStatus.CONFLICT
    code = "cancelled"


class InvalidModelNameError(BadRequestError):
    code = "invalid_model_name"


class ExportError(FtserveError):
    """An exported model does not answer like the trained one (or cannot be written)."""

    code = "export_failed"


class InvalidBase64Error(BadRequestError):
    code = "invalid_base64"


class NotAnImageError(BadRequestError):
    code = "not_an_image"


class InvalidDataUriError(BadRequestError):
    """A ``data_uri`` that is not a folder inside the data root."""

    code = "invalid_data_uri"


class UnauthorizedError(FtserveError):
    status = HTTPStatus.UNAUTHORIZED
    code = "unauthorized"


class NotFoundError(FtserveError):
    status = HTTPStatus.NOT_FOUND
    code = "not_found"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class ModelNotFoundError(NotFoundError):
    """An unknown model, or a version of it that does not exist or is not served."""

    code = "model_not_found"


class VersionNotFoundError(ModelNotFoundError):
    """The model exists but has no such version on disk (it never had, or it was deleted)."""

    code = "version_not_found"


class VersionNotServedError(ModelNotFoundError):
    """The version is on disk but no label serves it; a label move serves it again."""

    code = "version_not_served"


class LabelNotFoundError(ModelNotFoundError):
    """The model has no such label."""

    code = "label_not_found"


class InvalidLabelError(BadRequestError):
    code = "invalid_label"


class ConflictError(FtserveError):
    status = HTTPStatus.CONFLICT
    code = "conflict"


class VersionFailedError(ConflictError):
    """The model server could not load the version, so no label may point at it."""

    code = "version_failed"


class VersionLabelledError(ConflictError):
    """A label still points at the version: move or delete the label first."""

    code = "version_labelled"


class LabelInUseError(ConflictError):
    """The label carries traffic (``stable``); deleting it needs ``force``."""

    code = "label_in_use"


class NoPreviousVersionError(ConflictError):
    """``stable`` has no earlier version (still on disk) to roll back to."""

    code = "no_previous_version"


class IdempotencyInFlightError(ConflictError):
    """The first request with this Idempotency-Key is still being accepted."""

    code = "idempotency_in_flight"


class JobFinishedError(ConflictError):
    """The job already reached a final state (it cannot be cancelled any more)."""

    code = "job_finished"


class UploadTooLargeError(PayloadTooLargeError):
    code = "upload_too_large"


class TooManyInstancesError(PayloadTooLargeError):
    code = "too_many_instances"


class MemoryLimitError(PayloadTooLargeError):
    """A job needed more memory than ``job_memory_limit_bytes`` allows its worker."""

    code = "memory_limit_exceeded"


class IdempotencyKeyReusedError(UnprocessableError):
    """The Idempotency-Key was used before with a different request body."""

    code = "idempotency_key_reused"


class QueueFullError(FtserveError):
    status = HTTPStatus.TOO_MANY_REQUESTS
    code = "queue_full"


class ModelServerUnavailableError(FtserveError):
    """The model server is down, or the model is still loading; retry after a while."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "model_server_unavailable"


class ModelServerTimeoutError(FtserveError):
    status = HTTPStatus.GATEWAY_TIMEOUT
    code = "model_server_timeout"


class StorageUnavailableError(FtserveError):
    """A folder the job needs (work dir, model repository) cannot be written: full or read-only."""

    status = HTTPStatus.INSUFFICIENT_STORAGE
    code = "storage_unavailable"


class UnsupportedMediaTypeError(FtserveError):
    """A request body in a content type the route does not read."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"
