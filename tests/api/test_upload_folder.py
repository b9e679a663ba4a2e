"""Partial uploads are locked by their writer; a partial nobody holds is swept within seconds.

The writers that die here are real processes killed with SIGKILL: the kernel drops their
locks, and the next sweep (the API's start-up one, or its periodic one) removes their files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.api.app import create_app
from service.api.upload_folder import FileSink, HeldUploads, sweep_partials
from service.errors import QueueFullError, UploadTooLargeError
from tests.api.conftest import TestClient, make_settings

# Creates the file named in argv[1], locks it as FileSink does, says so, and holds it until
# its stdin closes or it is killed.
LOCKER = """
import fcntl, sys
with open(sys.argv[1], "ab") as held:
    fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked", flush=True)
    sys.stdin.read()
"""


class LockHolder:
    """Another process writing ``path``: it holds the lock until ``kill()``."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "locked\n"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        assert self.process.returncode == -signal.SIGKILL

    def __enter__(self) -> LockHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sweep_removes_partials_whose_writer_died_and_keeps_the_rest(tmp_path: Path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "a.upload.1.partial").write_bytes(b"left by a dead request")
    (folder / "c.upload").write_bytes(b"a queued job's archive")
    with LockHolder(folder / "b.upload.2.partial") as writer:
        assert sweep_partials(folder) == 1
        assert names(folder) == ["b.upload.2.partial", "c.upload"]
        assert sweep_partials(folder) == 0

        writer.kill()
        assert sweep_partials(folder) == 1
    assert names(folder) == ["c.upload"]


def test_sweep_leaves_links_fifos_and_folders_named_like_partials(tmp_path: Path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    (folder / "link.partial").symlink_to(target)
    os.mkfifo(folder / "fifo.partial")
    (folder / "dir.partial").mkdir()

    assert sweep_partials(folder) == 0
    assert names(folder) == ["dir.partial", "fifo.partial", "link.partial"]
    assert target.read_bytes() == b"keep"
    assert sweep_partials(tmp_path / "missing") == 0


def test_a_file_sink_holds_its_partial_locked_until_it_is_committed(tmp_path: Path):
    folder = tmp_path / "uploads"
    sink = FileSink(
        "dataset", folder, "job.upload", 1000, UploadTooLargeError, HeldUploads(folder, 10_000)
    )
    sink.open()
    sink.write(b"first half, ")
    assert sweep_partials(folder) == 0
    sink.write(b"second half")
    sink.close()  # the part ended; the archive is vetted next, still locked
    assert sweep_partials(folder) == 0
    assert names(folder) == [sink.path.name]

    assert sink.commit().read_bytes() == b"first half, second half"
    assert sweep_partials(folder) == 0
    assert names(folder) == ["job.upload"]


def test_a_file_sink_discarded_before_its_commit_leaves_nothing(tmp_path: Path):
    folder = tmp_path / "uploads"
    sink = FileSink(
        "dataset", folder, "job.upload", 1000, UploadTooLargeError, HeldUploads(folder, 10)
    )
    sink.open()
    sink.write(b"0123456789")
    with pytest.raises(QueueFullError) as refused:
        sink.write(b"!")
    assert refused.value.message == (
        "Uploads waiting for training hold 0 bytes; this request's 11 more would pass 10"
        " (max_held_upload_bytes); retry later"
    )
    sink.discard()
    assert names(folder) == []


def test_the_api_sweeps_at_start_up_and_then_every_few_seconds(tmp_path: Path):
    uploads = tmp_path / "data" / "uploads"
    uploads.mkdir(parents=True)
    (uploads / "a.upload.1.partial").write_bytes(b"left by a crash a moment ago")
    (uploads / "c.upload").write_bytes(b"a queued job's archive")
    with (
        LockHolder(uploads / "b.upload.2.partial") as other_api,
        TestClient(create_app(make_settings(tmp_path))),
    ):
        assert names(uploads) == ["b.upload.2.partial", "c.upload"]

        other_api.kill()
        wait_until(lambda: names(uploads) == ["c.upload"], "the periodic sweep")
