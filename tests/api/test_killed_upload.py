"""An API killed mid-upload leaves neither disk nor a locked Idempotency-Key for long.

A real ``ftserve api`` receives half a keyed upload through a raw socket and is killed with
SIGKILL: no handler runs, no ``finally``. Restarted, it sweeps the partial at once, and the
retry with the same key gets its 202 as soon as the dead request's lease lapses.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from service.api.finetune import IDEMPOTENCY_LEASE_SECONDS
from service.config import Settings
from tests.api.conftest import dataset_zip, error_of, leftovers
from tests.api.test_finetune import CONFIG
from tests.api.test_restart import start_api
from tests.support.servers import free_port

KEY = "order-killed-1"


def multipart(archive: bytes) -> tuple[bytes, str]:
    """The body and Content-Type of a submission of ``archive``."""
    request = httpx.Request(
        "POST",
        "http://api/finetune",
        files={"dataset": ("data.zip", archive, "application/zip")},
        data={"config": json.dumps(CONFIG)},
    )
    return request.read(), request.headers["content-type"]


def partials(settings: Settings) -> list[str]:
    return [name for name in leftovers(settings) if name.endswith(".partial")]


def stop(api: subprocess.Popen[bytes]) -> None:
    if api.poll() is None:
        api.send_signal(signal.SIGTERM)
        api.wait(60)


def test_a_retry_gets_202_soon_after_the_api_died_mid_upload(settings: Settings, tmp_path: Path):
    settings = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'jobs.db'}"})
    body, content_type = multipart(dataset_zip())
    port, log = free_port(), tmp_path / "api.log"
    api = start_api(settings, port, log)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = (
                f"POST /finetune HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                f"Idempotency-Key: {KEY}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[: len(body) // 2])
            deadline = time.monotonic() + 30
            while not partials(settings):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            api.send_signal(signal.SIGKILL)
            api.wait(30)
    finally:
        stop(api)
    assert api.returncode == -signal.SIGKILL
    assert len(partials(settings)) == 1  # what the dead request left

    api = start_api(settings, port, log)
    try:
        assert leftovers(settings) == []  # swept at start-up
        headers = {"content-type": content_type, "Idempotency-Key": KEY}
        url = f"http://127.0.0.1:{port}/finetune"
        deadline = time.monotonic() + 3 * IDEMPOTENCY_LEASE_SECONDS
        while (
            retry := httpx.post(url, content=body, headers=headers, timeout=30)
        ).status_code == 409:
            assert error_of(retry) == (409, "idempotency_in_flight")
            assert time.monotonic() < deadline, "the dead request's key was never taken over"
            time.sleep(0.25)
        assert retry.status_code == 202, retry.text
        job_id = retry.json()["job_id"]

        replayed = httpx.post(url, content=body, headers=headers, timeout=30)
        listed = httpx.get(url, timeout=10).json()
    finally:
        stop(api)
    assert (replayed.status_code, replayed.json()) == (202, retry.json())
    assert replayed.headers["idempotent-replayed"] == "true"
    assert listed["total"] == 1
    assert leftovers(settings) == [f"{job_id}.upload"]
