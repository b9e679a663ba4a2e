"""A worker's memory bound: its resident set is sampled while a job runs.

Image headers are judged before anything is decoded, so no single input should get near
the limit; this is the bound for everything else (a huge cache, a backbone too large for
the machine). A process cannot take back memory TensorFlow already holds, so the worker
fails the job and exits when it passes the limit; whoever runs it (``ftserve serve``, a
Kubernetes Deployment) starts a fresh one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

# Sampling this often keeps a fast-growing job from overshooting the limit by much, at a
# cost too small to measure (one read of /proc a time).
SAMPLE_SECONDS = 0.1
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int | str = "self") -> int:
    """The resident set size of process ``pid`` (default: this one), in bytes."""
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * _PAGE_BYTES


class MemoryWatch:
    """Calls ``exceeded(rss)`` once, from its own thread, when the resident set passes
    ``limit`` bytes; stops with ``close``. Use it as a context manager around a job."""

    def __init__(self, limit: int, exceeded: Callable[[int], None]) -> None:
        self.limit, self.exceeded = limit, exceeded
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="memory-watch", daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            rss = resident_bytes()
            if rss > self.limit:
                self.exceeded(rss)
                return
