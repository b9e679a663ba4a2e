"""Reading request bodies as they arrive, with limits enforced on the bytes actually received.

FastAPI's ``UploadFile`` reads a whole multipart body before the route runs; here the route
reads ``request.stream()`` itself and hands each part's bytes to a sink as they come, so a
too-large upload stops at the limit, chunked transfer encoding included.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import (
    BadRequestError,
    FtserveError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters."""
    value, _ = parse_options_header(request.headers.get("content-type"))
    return value.decode("latin-1")


def require_media_type(request: Request, *accepted: str) -> str:
    """The request's media type if it is one of ``accepted``, else a 415."""
    found = media_type(request)
    if found not in accepted:
        raise UnsupportedMediaTypeError(
            f"Send the body as {' or '.join(accepted)}, not {found or 'no Content-Type'}"
        )
    return found


def declared_length(request: Request) -> int | None:
    """The body's size as its Content-Length says, or None (chunked, or no valid header)."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


def check_declared_length(request: Request, limit: int, too_large: type[FtserveError]) -> None:
    """Refuse at once a body whose Content-Length already says it is over ``limit``.

    Bodies without one (chunked) are counted as they arrive instead.
    """
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise too_large(f"The request body is larger than {limit} bytes")


async def read_json(request: Request, limit: int, too_large: type[FtserveError]) -> Any:
    """The body parsed as JSON, read up to ``limit`` bytes (``too_large`` past that)."""
    check_declared_length(request, limit, too_large)
    body = bytearray()
    async for chunk in _stream(request):
        body += chunk
        if len(body) > limit:
            raise too_large(f"The request body is larger than {limit} bytes")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, an int past 4300 digits
        raise BadRequestError(f"The request body is not valid JSON: {exc}") from exc


async def _stream(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise BadRequestError("The client went away before sending the whole body") from None


class PartSink(Protocol):
    """Where the bytes of one multipart part go."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PartInfo:
    name: str
    filename: str | None


OpenPart = Callable[[PartInfo], PartSink]


@dataclass
class FieldSink:
    """A small form field kept in memory, at most ``limit`` bytes."""

    name: str
    limit: int
    data: bytearray = field(default_factory=bytearray)
    seen: bool = False

    def write(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > self.limit:
            raise PayloadTooLargeError(
                f"Form field {self.name!r} is longer than {self.limit} bytes"
            )

    def close(self) -> None:
        pass

    def open(self) -> FieldSink:
        """Start receiving the field; a field sent twice is an error."""
        if self.seen:
            raise BadRequestError(f"Form field {self.name!r} was sent more than once")
        self.seen = True
        return self

    def text(self) -> str | None:
        if not self.seen:
            return None
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequestError(f"Form field {self.name!r} is not UTF-8 text") from exc


async def read_multipart(request: Request, open_part: OpenPart) -> None:
    """Feed each part of a ``multipart/form-data`` body to the sink ``open_part`` returns.

    Sinks raise to stop reading (a limit, an unexpected field); the error propagates here.

    Raises:
        BadRequestError: no boundary, a malformed or truncated body, a part without a name.
    """
    _, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequestError("The multipart Content-Type has no boundary")
    reader = _MultipartReader(boundary, open_part)
    async for chunk in _stream(request):
        reader.feed(chunk)
    if not reader.ended:
        raise BadRequestError("The multipart body ended before its closing boundary")


class _MultipartReader:
    """python-multipart's push parser, turned into calls on one sink per part."""

    def __init__(self, boundary: bytes, open_part: OpenPart) -> None:
        self.open_part = open_part
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._sink: PartSink | None = None
        try:
            self.parser = MultipartParser(boundary, self._callbacks())
        except FormParserError as exc:  # e.g. a boundary past 256 bytes (MultipartParseError
            # is a FormParserError too)
            raise BadRequestError(f"Malformed multipart Content-Type: {exc}") from exc

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError as exc:
            raise BadRequestError(f"Malformed multipart body: {exc}") from exc

    def _callbacks(self) -> Any:
        return {
            "on_part_begin": self._headers.clear,
            "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise BadRequestError("Each multipart part needs 'Content-Disposition: form-data'")
        filename = options.get(b"filename")
        info = PartInfo(
            name=name.decode("utf-8", errors="replace"),
            filename=None if filename is None else filename.decode("utf-8", errors="replace"),
        )
        self._sink = self.open_part(info)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._sink is not None
        self._sink.write(data[start:end])

    def _on_part_end(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def _on_end(self) -> None:
        self.ended = True
