"""The ftserve error tree. Every class carries the HTTP status and code a user sees.

    FtserveError (500 internal)
    ├── BadRequestError (400 bad_request)
    │   ├── InvalidArchiveError (400 invalid_archive)
    │   ├── UnsafeArchiveMemberError (400 unsafe_archive_member)
    │   └── InvalidModelNameError (400 invalid_model_name)
    ├── PayloadTooLargeError (413 too_large)
    │   ├── ArchiveLimitError (413 archive_limit)
    │   └── ImageTooLargeError (413 image_too_large)
    ├── UnprocessableError (422 unprocessable)
    │   ├── InvalidConfigError (422 invalid_config)
    │   ├── DatasetError (422 dataset_unusable)
    │   └── WeightsUnavailableError (422 weights_unavailable)
    ├── TrainingCancelledError (409 cancelled)
    └── ExportError (500 export_failed)

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
