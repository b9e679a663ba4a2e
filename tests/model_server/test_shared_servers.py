"""``SharedServer``: one process for many tests, a fresh one after a test that killed it.

Driven with a stand-in for ``ServerProcess`` around a real ``sleep`` process, so that a
crash can be caused on purpose and nothing waits for TensorFlow.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.servers import SharedServers, WindingDown


class SleepingServer:
    """Just what ``SharedServer`` uses of a ``ServerProcess``: a process, a log, ``stop``."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        log_path.write_text(f"log of {log_path.name}\n")
        self.process = subprocess.Popen(["sleep", "600"])

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self, timeout: float = 60.0) -> int:
        self.terminate()
        return self.process.wait(timeout)


def never_ready(server: SleepingServer) -> None:
    pytest.fail("no model became AVAILABLE")


@pytest.fixture
def shared(tmp_path: Path):
    servers = SharedServers(tmp_path)
    yield servers
    servers.stop_all()


def test_every_borrower_gets_the_same_process(shared: SharedServers):
    server = shared.get("s", SleepingServer, lambda _: None)

    with server.borrow() as first, server.borrow() as second:
        assert first is second
    assert shared.get("s", SleepingServer, never_ready) is server  # made once, by name
    assert server.starts == 1


def test_a_test_that_kills_the_server_fails_and_the_next_gets_a_new_one(shared: SharedServers):
    server = shared.get("s", SleepingServer, lambda _: None)

    with pytest.raises(pytest.fail.Exception) as failed, server.borrow() as dead:
        dead.process.send_signal(signal.SIGKILL)
        dead.process.wait()
    with server.borrow() as fresh:
        assert fresh.process.poll() is None

    assert str(failed.value) == (
        "the shared s server exited with -9 during this test:\nlog of s-1.log\n"
    )
    assert fresh is not dead
    assert server.starts == 2


def test_a_server_that_never_gets_ready_is_stopped_and_not_started_again(
    shared: SharedServers, tmp_path: Path
):
    made: list[SleepingServer] = []

    def make(log_path: Path) -> SleepingServer:
        made.append(SleepingServer(log_path))
        return made[-1]

    server = shared.get("s", make, never_ready)
    for _ in range(2):
        with pytest.raises(pytest.fail.Exception) as failed, server.borrow():
            pass

    assert str(failed.value) == "the shared s server did not start: no model became AVAILABLE"
    assert len(made) == 1
    assert made[0].process.returncode == -signal.SIGTERM


def test_stop_all_stops_every_server(tmp_path: Path):
    servers = SharedServers(tmp_path)
    borrowed = []
    for name in ("a", "b"):
        with servers.get(name, SleepingServer, lambda _: None).borrow() as server:
            borrowed.append(server)

    servers.stop_all()

    assert [server.process.returncode for server in borrowed] == [-signal.SIGTERM] * 2


def test_winding_down_signals_at_once_and_waits_at_the_end(tmp_path: Path):
    servers = [SleepingServer(tmp_path / f"{name}.log") for name in ("a", "b")]
    winding_down = WindingDown()

    for server in servers:
        winding_down.add(server)
        assert server.process.wait(timeout=10) == -signal.SIGTERM
    winding_down.wait_all()

    assert [server.process.returncode for server in servers] == [-signal.SIGTERM] * 2
