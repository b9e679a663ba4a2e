"""Server-sent events read incrementally from bytes, as the HTML standard says a browser does.

Feed the stream's bytes as they arrive, in pieces of any size; whole events come out. Lines
end in CRLF, LF or CR (a CR at the end of one piece may be half of a CRLF, so it waits for
the next); ``data`` lines join with newlines; comments (``: ping``) and unknown fields are
skipped; an event with no data is not dispatched; ``id`` persists from event to event and
counts as the last event id once the event it came in is complete.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

# Only these end a line; str.splitlines would also split on form feeds and U+2028.
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    """One dispatched event: its type (``message`` by default), data, and the last id seen."""

    event: str
    data: str
    id: str | None


class EventParser:
    """Turns the bytes of an event stream into ``Event`` objects."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text after the last complete line
        self._started = False  # past a leading byte order mark, if any
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None  # the last id field read, in force from the next dispatch
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that ``chunk`` completes (none when it ends mid-event)."""
        text = self._pending + self._decoder.decode(chunk)
        if not self._started and text:
            text = text.removeprefix("\ufeff")
            self._started = True
        return self._lines(text, at_end=False)

    def finish(self) -> list[Event]:
        """The stream ended: a CR held back as a possible half of CRLF ends its line after all.

        An event without the blank line that ends it is dropped, as the standard says.
        """
        return self._lines(self._pending + self._decoder.decode(b"", final=True), at_end=True)

    def _lines(self, text: str, at_end: bool) -> list[Event]:
        events = []
        start = 0
        for end in _LINE_END.finditer(text):
            if end.group() == "\r" and end.end() == len(text) and not at_end:
                break  # the next chunk may start with the LF of this CRLF
            event = self._line(text[start : end.start()])
            start = end.end()
            if event is not None:
                events.append(event)
        self._pending = text[start:]
        return events

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Event | None:
        # An id counts (for Last-Event-ID) once its event is complete, even one without data.
        self.last_event_id = self._id
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return Event(event, "\n".join(data), self.last_event_id)
