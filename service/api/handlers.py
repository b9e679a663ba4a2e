"""How errors reach users: every one as ``{"error": {"code": ..., "message": ...}}``.

``FtserveError`` carries its own status and code. FastAPI's request validation errors become
422 ``unprocessable``, routing errors (unknown path, wrong method) keep their status, and
anything unexpected becomes a bare 500 whose details stay in the server's log.
"""

from __future__ import annotations

import re
from functools import lru_cache
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.contract.validation import describe_errors
from service.errors import (
    FtserveError,
    ModelServerUnavailableError,
    QueueFullError,
    UnauthorizedError,
    UnprocessableError,
)

# Seconds a client should wait before retrying, sent as Retry-After.
RETRY_AFTER_SECONDS: dict[type[FtserveError], int] = {
    ModelServerUnavailableError: 5,
    QueueFullError: 30,
}


def error_response(exc: FtserveError) -> JSONResponse:
    """The response for ``exc``, with the headers its status calls for."""
    headers: dict[str, str] = {}
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    for error_type, seconds in RETRY_AFTER_SECONDS.items():
        if isinstance(exc, error_type):
            headers["Retry-After"] = str(seconds)
    return JSONResponse(exc.to_dict(), status_code=int(exc.status), headers=headers)


async def _ftserve_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FtserveError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(UnprocessableError(describe_errors(exc.errors(), "request")))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    code = phrase.lower().replace(" ", "_").replace("-", "_")
    body = {"error": {"code": code, "message": str(exc.detail or phrase)}}
    headers = dict(exc.headers or {})
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method the path has. The router names only those of the first route matching
    the path, while e.g. GET and DELETE of ``/finetune/{job_id}`` are two routes."""
    paths = request.app.openapi().get("paths", {})
    path = request.url.path
    for template, operations in paths.items():
        if _template_pattern(template).fullmatch(path):
            return sorted(method.upper() for method in operations)
    return []


@lru_cache(maxsize=64)
def _template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


async def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this answer, so the server logs its traceback.
    body = {"error": {"code": "internal", "message": "Internal server error"}}
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(FtserveError, _ftserve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
