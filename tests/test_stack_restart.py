"""``ftserve serve`` when a child dies: a worker is restarted, the API is not.

Real processes: the stack as a user starts it (``tests.test_stack``), its children found
through ``/proc`` and killed with SIGKILL, as the OOM killer would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from service.stack import RESTART_RESET_AFTER_SECONDS, _Backoff
from tests.support.servers import free_port
from tests.support.stack import Stack, serve_command, stack_env

T = TypeVar("T")
# Seconds to wait for a restart (the first backoff is 1 s) or for the stack to stop.
DEADLINE_SECONDS = 30.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    api = free_port()
    running = Stack(tmp_path, serve_command(api, free_port()), stack_env(tmp_path), api)
    started: set[int] = set()
    try:
        running.wait_ready()
        started.update(children(running.process.pid))
        yield running
    finally:
        started.update(children(running.process.pid))
        running.stop()
        for pid in started:  # a failed test must not leave servers behind
            if not is_gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``, with their command lines."""
    try:
        pids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return {}
    found = {}
    for child in map(int, pids):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline:  # a zombie has none
            found[child] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def worker_pid(running: Stack, other_than: int | None = None) -> int | None:
    """The stack's worker process, unless it is ``other_than``."""
    workers = [p for p, cmd in children(running.process.pid).items() if "service.cli worker" in cmd]
    assert len(workers) <= 1, workers
    return workers[0] if workers and workers[0] != other_than else None


def is_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def wait_for(condition: Callable[[], T | None], what: str, running: Stack) -> T:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{running.log()}")


def test_restart_delay_doubles_up_to_30_s_and_resets_after_a_60_s_run():
    backoff = _Backoff()
    assert [backoff.schedule() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    backoff.started()
    backoff.started_at -= RESTART_RESET_AFTER_SECONDS
    assert (backoff.schedule(), backoff.restarts) == (1, 8)


def test_killed_worker_is_restarted_while_the_api_keeps_serving(stack: Stack):
    first = worker_pid(stack)
    assert first is not None, children(stack.process.pid)
    os.kill(first, signal.SIGKILL)

    assert stack.http.get("/readyz").status_code == 200
    second = wait_for(lambda: worker_pid(stack, other_than=first), "a new worker", stack)
    assert is_gone(first) and second != first
    assert stack.http.get("/readyz").status_code == 200
    assert stack.process.poll() is None, stack.log()
    assert "ftserve: worker exited with SIGKILL; restarting in 1 s (restart 1)" in stack.log()

    running = children(stack.process.pid)
    assert len(running) == 3, running
    assert stack.stop() == 0, stack.log()
    assert all(is_gone(pid) for pid in running), stack.log()


def test_killed_api_stops_the_whole_stack(stack: Stack):
    running = children(stack.process.pid)
    (api,) = [pid for pid, cmd in running.items() if "service.cli api" in cmd]
    os.kill(api, signal.SIGKILL)

    assert wait_for(lambda: stack.process.poll() is not None, "the stack to exit", stack)
    assert stack.process.returncode == 1, stack.log()
    assert "ftserve: api exited; stopped the others" in stack.log()
    assert "restarting" not in stack.log()
    assert all(is_gone(pid) for pid in running), stack.log()
