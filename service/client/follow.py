"""Following a job through ``GET /finetune/{id}/events``, across dropped connections.

The stream sends ``state`` (status, attempts, ...; with ``result`` and ``error`` once final),
``progress`` (phase, epoch, step, ETA, the latest batch metrics) and one ``epoch`` event per
history row, the rows already recorded first; it ends after a final ``state``. An older API
sends the whole job with every event instead; ``JobWatch`` reads both.

A stream that ends or stalls before a final state is reopened (with ``Last-Event-ID``) after
the pause the server asked for. A server may replay the history on every connection, so
``JobWatch`` knows each epoch by its (phase, epoch) and passes a row on only when it is new
or changed (a redone epoch).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from service.api_client import ApiClient, ApiError, ApiUnreachableError
from service.client.sse import Event, EventParser

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
STATE_FIELDS = ("job_id", "status", "attempts", "cancel_requested", "started_at", "finished_at")
# The server sends a keep-alive comment every 15 s: a minute of silence is a dead connection.
READ_TIMEOUT_SECONDS = 60.0
# How long to keep reconnecting to an API that went away (a restart, a rolling update).
RECONNECT_SECONDS = 120.0
DEFAULT_RETRY_SECONDS = 2.0
# Bounds on the server's "retry:": never a busy loop, never minutes of waiting.
MIN_RETRY_SECONDS = 0.01
MAX_RETRY_SECONDS = 30.0
_CHUNK_BYTES = 64 * 1024

Kind = Literal["state", "progress", "epoch"]


@dataclass(frozen=True)
class Update:
    """Something new about the job: its state, its progress, or a finished epoch.

    ``replaced`` marks an epoch row that redoes one passed on before (same phase and epoch).
    """

    kind: Kind
    data: dict[str, Any]
    replaced: bool = False


@dataclass
class JobWatch:
    """What is known of a job so far; turns events into the updates not yet passed on."""

    state: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    epochs: dict[tuple[object, object], dict[str, Any]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.get("status") in FINAL_STATES

    def apply(self, event: str, data: dict[str, Any]) -> list[Update]:
        """The updates one event brings (none for a repeat or an event type not known here)."""
        if "history" in data or "model_name" in data:
            return self._whole_job(event, data)
        if event == "state":
            return self._state(data)
        if event == "progress":
            return self._progress(data)
        if event == "epoch":
            return self._epoch(data)
        return []

    def _whole_job(self, event: str, job: dict[str, Any]) -> list[Update]:
        """An older API's event: the whole job, whatever the event's name."""
        updates = [u for row in job.get("history") or [] for u in self._epoch(row)]
        if job.get("progress"):
            updates += self._progress(job["progress"])
        state = {key: job.get(key) for key in STATE_FIELDS}
        if job.get("status") in FINAL_STATES:
            state.update(result=job.get("result"), error=job.get("error"))
        return updates + self._state(state)

    def _state(self, data: dict[str, Any]) -> list[Update]:
        if self.state is not None and _same_state(self.state, data):
            return []
        self.state = data
        return [Update("state", data)]

    def _progress(self, data: dict[str, Any]) -> list[Update]:
        if data == self.progress:
            return []
        self.progress = data
        return [Update("progress", data)]

    def _epoch(self, row: dict[str, Any]) -> list[Update]:
        key = (row.get("phase"), row.get("epoch"))
        known = self.epochs.get(key)
        if known == row:
            return []
        self.epochs[key] = row
        return [Update("epoch", row, replaced=known is not None)]


def _same_state(known: dict[str, Any], new: dict[str, Any]) -> bool:
    return all(known.get(key) == new.get(key) for key in (*STATE_FIELDS, "result", "error"))


def follow_job(
    client: ApiClient,
    job_id: str,
    watch: JobWatch,
    *,
    reconnect_seconds: float = RECONNECT_SECONDS,
    read_timeout: float = READ_TIMEOUT_SECONDS,
    pause: Callable[[float], None] = time.sleep,
) -> Iterator[Update]:
    """The updates of ``job_id`` as they happen, until it is finished.

    Args:
        client: the API.
        job_id: the job to follow.
        watch: what is known already; updated as events arrive.
        reconnect_seconds: how long to keep trying to reopen a dropped stream.
        read_timeout: seconds of silence after which a connection counts as dropped.
        pause: waits between connections (``time.sleep``).

    Raises:
        ApiError: the first connection failed, the API refused (an unknown job), or it
            stayed away for ``reconnect_seconds``.
    """
    last_id: str | None = None
    retry = DEFAULT_RETRY_SECONDS
    last_contact: float | None = None  # None: never connected yet
    while not watch.finished:
        try:
            response = client.open_events(job_id, last_id, read_timeout)
        except ApiError as exc:
            if last_contact is None or not _passing(exc):
                raise
            if time.monotonic() - last_contact > reconnect_seconds:
                raise
            pause(retry)
            continue
        parser = EventParser()
        with response:
            for event in _events(response, parser):
                last_contact = time.monotonic()
                data = _object(event.data)
                if data is not None:
                    yield from watch.apply(event.event, data)
                if watch.finished:
                    return
        last_contact = time.monotonic()
        last_id = parser.last_event_id or last_id
        if parser.retry_ms is not None:
            retry = min(max(parser.retry_ms / 1000, MIN_RETRY_SECONDS), MAX_RETRY_SECONDS)
        pause(retry)


def _passing(exc: ApiError) -> bool:
    """Whether an error may go away by itself: no answer, or a proxy's 5xx while the API
    restarts. An unknown job or a refused token will not."""
    return isinstance(exc, ApiUnreachableError) or exc.status >= 500


def _events(response: http.client.HTTPResponse, parser: EventParser) -> Iterator[Event]:
    """The events of one connection as they arrive, until it ends, breaks or goes quiet."""
    while True:
        try:
            chunk = response.read1(_CHUNK_BYTES)
        except (OSError, http.client.HTTPException):  # TimeoutError is an OSError
            chunk = b""
        if not chunk:
            yield from parser.finish()
            return
        yield from parser.feed(chunk)


def _object(data: str) -> dict[str, Any] | None:
    """An event's data as a JSON object; None for anything else (not news about the job)."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
