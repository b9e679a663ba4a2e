"""``ftserve serve`` as a test runs it: the model server, a worker and the API in one process
group, on free ports, with every folder under one root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.servers import free_port


class Stack:
    """``ftserve serve`` as a process group, with an HTTP client to its API and its log."""

    def __init__(self, root: Path, command: list[str], env: dict[str, str], api_port: int):
        self.log_path = root / "stack.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        pytest.fail(f"the stack never became ready:\n{self.log()}")

    def stop(self) -> int:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def stack_env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FTSERVE_DATA_ROOT": str(root / "data"),
        "FTSERVE_WORK_DIR": str(root / "jobs"),
        "FTSERVE_MODEL_REPO": str(root / "models"),
        "FTSERVE_WEIGHTS_DIR": str(root / "weights"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def serve_command(api_port: int, grpc_port: int) -> list[str]:
    ports = [f"--port={api_port}", f"--grpc-port={grpc_port}", f"--rest-port={free_port()}"]
    return [sys.executable, "-m", "service.cli", "serve", *ports]


@contextmanager
def serving_stack(root: Path, env: dict[str, str] | None = None) -> Iterator[tuple[Stack, int]]:
    """A running, ready stack under ``root`` (``env`` added to ``stack_env``'s): (it, its
    model server's gRPC port). It must stop cleanly (exit 0) when the block ends."""
    api, grpc_port = free_port(), free_port()
    running = Stack(root, serve_command(api, grpc_port), {**stack_env(root), **(env or {})}, api)
    running.wait_ready()
    try:
        yield running, grpc_port
    finally:
        assert running.stop() == 0, running.log()
