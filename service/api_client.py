"""A small client for the ftserve HTTP API, on the Python standard library alone.

``ftserve models`` uses it. It imports nothing from ``service.api`` (only the CLI may) and
nothing heavy, so it runs wherever Python does. Every method returns the API's JSON document
as parsed, unchanged, so ``--json`` can print exactly what the API answered.

Errors, translated from urllib in one place (``ApiClient._request``)::

    FtserveError
    └── ApiError (the API's code and status)   the API answered {"error": {code, message}},
        │                                      or something that is not the API's JSON
        ├── ApiUnreachableError (api_unreachable)   no answer: refused, timed out, cut off
        └── InvalidApiUrlError (invalid_api_url)    not an http(s) URL, nothing was sent
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from http import HTTPStatus
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

    def _request(
        self,
        method: str,
        path: str,
        body: Document | None = None,
        query: dict[str, str] | None = None,
    ) -> Document:
        """Send one request; the answer's JSON document, or the error it stands for."""
        url = self.base_url + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data, self._headers(data is not None), method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return _document(url, response.status, response.read())
        except urllib.error.HTTPError as exc:
            with exc:  # it holds the open response
                raise _error_of(url, exc) from None
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            raise ApiUnreachableError(self._unreachable(url, exc)) from exc

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "ftserve-cli"}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _unreachable(self, url: str, exc: Exception) -> str:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            return f"No answer from the API at {url} within {self.timeout:g} s"
        return f"Cannot reach the API at {url}: {str(reason) or type(reason).__name__}"


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
    status = _http_status(exc.code)
    try:
        error = json.loads(exc.read())["error"]
        return ApiError(str(error["message"]), str(error["code"]), status)
    except (ValueError, TypeError, KeyError, OSError, http.client.HTTPException):
        pass
    location = exc.headers.get("Location") if exc.headers else None
    where = f" (to {location})" if location else ""
    message = f"{url} answered {exc.code} {status.phrase}{where}, not an ftserve API error"
    return ApiError(message, BAD_RESPONSE, status)


def _http_status(code: int) -> HTTPStatus:
    try:
        return HTTPStatus(code)
    except ValueError:  # a code outside the registry: keep at least its class
        return HTTPStatus.INTERNAL_SERVER_ERROR if code >= 500 else HTTPStatus.BAD_REQUEST
