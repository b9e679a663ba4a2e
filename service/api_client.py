"""A small client for the ftserve HTTP API, on the Python standard library alone.

``ftserve models``, ``ftserve jobs`` and ``ftserve predict`` use it. It imports nothing from
``service.api`` (only the CLI may) and nothing heavy, so it runs wherever Python does. Every
method returns the API's JSON document as parsed, unchanged, so ``--json`` can print exactly
what the API answered; ``open_events`` hands over the event stream itself.

Errors, translated from urllib in one place (``ApiClient._request``)::

    FtserveError
    └── ApiError (the API's code and status)   the API answered {"error": {code, message}},
        │                                      or something that is not the API's JSON
        ├── ApiUnreachableError (api_unreachable)   no answer: refused, timed out, cut off
        └── InvalidApiUrlError (invalid_api_url)    not an http(s) URL, nothing was sent
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

from service.errors import FtserveError

DEFAULT_API_URL = "http://127.0.0.1:8000"
API_URL_ENV = "FTSERVE_API_URL"
API_TOKEN_ENV = "FTSERVE_API_TOKEN"  # the same variable the API reads its token from
# A label move waits up to the API's label_move_timeout_seconds (300 s by default) for the
# model server to load the version; wait a little longer so its 504 arrives, not ours.
DEFAULT_TIMEOUT_SECONDS = 330.0
BAD_RESPONSE = "bad_response"
EVENT_STREAM = "text/event-stream"
_CHUNK_BYTES = 1024 * 1024  # how much of an upload is read into memory at a time

Document = dict[str, Any]


class ApiError(FtserveError):
    """The API's error (its ``code``, ``message`` and HTTP ``status``), or a stand-in with
    code ``bad_response`` for an answer that is not the API's JSON."""

    def __init__(self, message: str, code: str, status: HTTPStatus) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ApiUnreachableError(ApiError):
    """No answer from the API: nothing listens there, it timed out or hung up."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "api_unreachable", HTTPStatus.BAD_GATEWAY)


class InvalidApiUrlError(ApiError):
    """The API URL is not an http(s) URL; nothing was sent."""

    def __init__(self, url: str) -> None:
        message = f"The API URL must look like http://host:port, not {url!r}"
        super().__init__(message, "invalid_api_url", HTTPStatus.BAD_REQUEST)


def client_from_env(api_url: str | None = None, timeout: float | None = None) -> ApiClient:
    """A client for ``api_url`` (default: ``$FTSERVE_API_URL``, else the local API), with
    the token in ``$FTSERVE_API_TOKEN`` if set.

    Tokens come only from the environment: on a command line every user of the machine
    could read them in the process list.
    """
    url = api_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL
    token = os.environ.get(API_TOKEN_ENV) or None
    return ApiClient(url, token, DEFAULT_TIMEOUT_SECONDS if timeout is None else timeout)


class ApiClient:
    """The ftserve API at ``base_url``, one blocking request per call.

    Args:
        base_url: ``http(s)://host:port``, optionally with a path prefix (behind a proxy).
        token: sent as ``Authorization: Bearer <token>`` when given.
        timeout: seconds to wait for each connection and each read.

    Raises:
        InvalidApiUrlError: ``base_url`` is not an http or https URL.
    """

    def __init__(
        self, base_url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        parts = urlsplit(base_url)
        # urllib would also open file:// and ftp:// URLs; the API is only ever HTTP.
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidApiUrlError(base_url)
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirects)

    def list_models(self) -> Document:
        """``GET /models``: every model, its versions and labels."""
        return self._request("GET", "/models")

    def get_model(self, name: str) -> Document:
        """``GET /models/{name}``: labels, and each version's state, metrics and promotion."""
        return self._request("GET", _path("models", name))

    def set_label(self, name: str, label: str, version: int) -> Document:
        """``PUT /models/{name}/labels/{label}``; returns once the model server loaded it."""
        return self._request("PUT", _path("models", name, "labels", label), {"version": version})

    def delete_label(self, name: str, label: str, force: bool = False) -> Document:
        """``DELETE /models/{name}/labels/{label}`` (``stable`` needs ``force``)."""
        path = _path("models", name, "labels", label)
        return self._request("DELETE", path, query=_force(force))

    def roll_back(self, name: str) -> Document:
        """``POST /models/{name}/rollback``: ``stable`` back to its previous version."""
        return self._request("POST", _path("models", name, "rollback"))

    def delete_version(self, name: str, version: int) -> Document:
        """``DELETE /models/{name}/versions/{version}`` (refused while labelled)."""
        return self._request("DELETE", _path("models", name, "versions", str(version)))

    def delete_model(self, name: str, force: bool = False) -> Document:
        """``DELETE /models/{name}``: every version (with labels only with ``force``)."""
        return self._request("DELETE", _path("models", name), query=_force(force))

    def submit_job(self, archive: Path, config: Document) -> Document:
        """``POST /finetune``: upload ``archive`` (zip or tar) with ``config``, streamed from
        disk as multipart; the 202 document (``job_id``, ``status``, ``model_name``, ...)."""
        return self._upload("/finetune", MultipartForm(archive, config))

    def get_job(self, job_id: str) -> Document:
        """``GET /finetune/{id}``: the whole job, its history and result included."""
        return self._request("GET", _path("finetune", job_id))

    def list_jobs(self, status: str | None = None, limit: int = 50, offset: int = 0) -> Document:
        """``GET /finetune``: one page of jobs, newest first (``items``, ``total``, ...)."""
        query = {"limit": str(limit), "offset": str(offset)}
        if status:
            query["status"] = status
        return self._request("GET", "/finetune", query=query)

    def cancel_job(self, job_id: str) -> Document:
        """``DELETE /finetune/{id}``: the job, cancelled (queued) or asked to stop (running)."""
        return self._request("DELETE", _path("finetune", job_id))

    def predict(self, body: Document) -> Document:
        """``POST /predict`` with ``{"model", "instances": [{"b64": ...}], ...}``."""
        return self._request("POST", "/predict", body)

    def open_events(
        self, job_id: str, last_event_id: str | None, read_timeout: float
    ) -> http.client.HTTPResponse:
        """``GET /finetune/{id}/events``, open: read its bytes, then close it.

        Raises:
            ApiError: the API refused (an unknown job, say) or did not answer with events.
        """
        url = self.base_url + _path("finetune", job_id, "events")
        headers = self._headers(EVENT_STREAM)
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        response = self._open(urllib.request.Request(url, headers=headers), url, read_timeout)
        media_type = response.headers.get_content_type()
        if media_type != EVENT_STREAM:
            response.close()
            raise ApiError(
                f"{url} answered {media_type}, not server-sent events: is it the ftserve API?",
                BAD_RESPONSE,
                HTTPStatus.BAD_GATEWAY,
            )
        return response

    def _request(
        self,
        method: str,
        path: str,
        body: Document | None = None,
        query: dict[str, str] | None = None,
    ) -> Document:
        """Send one request; the answer's JSON document, or the error it stands for."""
        url = self.base_url + path + (f"?{urlencode(query)}" if query else "")
        headers = self._headers()
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(url, data, headers, method=method)
        with self._open(request, url, self.timeout) as response:
            try:
                return _document(url, response.status, response.read())
            except (OSError, http.client.HTTPException) as exc:  # cut off mid-answer
                raise ApiUnreachableError(self._unreachable(url, exc)) from exc

    def _upload(self, path: str, form: MultipartForm) -> Document:
        """POST ``form`` over http.client rather than urllib.

        An API that refuses an upload (too large, say) answers before reading it all and may
        reset the connection; urllib then reports only the reset, while here the answer is
        still read. Proxies named in the environment are not used for uploads.
        """
        url = self.base_url + path
        parts = urlsplit(url)
        https = parts.scheme == "https"
        kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
        connection = kind(parts.hostname or "", parts.port, timeout=self.timeout)
        headers = {
            **self._headers(),
            "Content-Type": form.content_type,
            "Content-Length": str(form.length),
        }
        try:
            # A reset mid-body: the API stopped reading, and its answer says why.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                connection.request("POST", parts.path, body=form, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnreachableError(self._unreachable(url, exc)) from exc
        finally:
            connection.close()
        if response.status >= 300:  # redirects are not followed, as in _open
            raise _error_answer(url, response.status, response.getheader("Location"), raw)
        return _document(url, response.status, raw)

    def _open(
        self, request: urllib.request.Request, url: str, timeout: float
    ) -> http.client.HTTPResponse:
        """The open response to ``request``; an API error answer raised as ``ApiError``."""
        try:
            response: http.client.HTTPResponse = self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            with exc:  # it holds the open response
                raise _error_of(url, exc) from None
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            raise ApiUnreachableError(self._unreachable(url, exc)) from exc
        return response

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": "ftserve-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _unreachable(self, url: str, exc: Exception) -> str:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            return f"No answer from the API at {url} within {self.timeout:g} s"
        return f"Cannot reach the API at {url}: {str(reason) or type(reason).__name__}"


class MultipartForm:
    """A ``multipart/form-data`` body of a ``config`` JSON field and a ``dataset`` file,
    produced chunk by chunk, so that an archive of any size is never held in memory.

    Its ``length`` is known before sending (the file's size plus the framing), so the API
    can refuse a too-large upload from its ``Content-Length`` before reading any of it.
    """

    def __init__(self, archive: Path, config: Document) -> None:
        self.archive = archive
        boundary = f"ftserve-{uuid.uuid4().hex}"
        self.content_type = f"multipart/form-data; boundary={boundary}"
        # The API reads the config before the archive only if it comes first: it does.
        filename = archive.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        self._head = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="config"\r\n'
            "Content-Type: application/json\r\n\r\n"
            f"{json.dumps(config)}\r\n"
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="dataset"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self.length = len(self._head) + archive.stat().st_size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        with open(self.archive, "rb") as file:
            while chunk := file.read(_CHUNK_BYTES):
                yield chunk
        yield self._tail


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Answer a redirect with an error: urllib would resend the token to wherever it points."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


def _path(*segments: str) -> str:
    # Quote every segment, "/" included: a name must never reach another route.
    return "".join(f"/{quote(segment, safe='')}" for segment in segments)


def _force(force: bool) -> dict[str, str] | None:
    return {"force": "true"} if force else None


def _document(url: str, status: int, raw: bytes) -> Document:
    """The JSON object of a successful answer (``ApiError`` if it is not one)."""
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise ApiError(
            f"{url} answered {status} without a JSON object: is it the ftserve API?",
            BAD_RESPONSE,
            HTTPStatus.BAD_GATEWAY,
        )
    return document


def _error_of(url: str, exc: urllib.error.HTTPError) -> ApiError:
    """The API's ``{"error": {"code", "message"}}`` as an ``ApiError``, or a stand-in."""
    try:
        raw = exc.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    location = exc.headers.get("Location") if exc.headers else None
    return _error_answer(url, exc.code, location, raw)


def _error_answer(url: str, code: int, location: str | None, raw: bytes) -> ApiError:
    status = _http_status(code)
    try:
        error = json.loads(raw)["error"]
        return ApiError(str(error["message"]), str(error["code"]), status)
    except (ValueError, TypeError, KeyError):
        pass
    where = f" (to {location})" if location else ""
    message = f"{url} answered {code} {status.phrase}{where}, not an ftserve API error"
    return ApiError(message, BAD_RESPONSE, status)


def _http_status(code: int) -> HTTPStatus:
    try:
        return HTTPStatus(code)
    except ValueError:  # a code outside the registry: keep at least its class
        return HTTPStatus.INTERNAL_SERVER_ERROR if code >= 500 else HTTPStatus.BAD_REQUEST
