"""``ftserve serve``: the whole stack on one machine, as three child processes.

The model server (``ftserve model-server`` on the model repository, unless
``FTSERVE_MODEL_SERVER`` names one already running), one worker and the API. Ctrl-C or
SIGTERM stops all three, each with SIGTERM first so jobs are handed back and requests in
flight finish. If one child dies, the others are stopped too: a half-running stack would
accept jobs nobody trains, or predictions nobody serves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings
from service.contract.repository import CONFIG_NAME

# Seconds each child gets between SIGTERM and SIGKILL: a worker checkpoints within a batch.
STOP_GRACE_SECONDS = 60.0
_EMPTY_MODEL_CONFIG = "model_config_list {\n}\n"


@dataclass(frozen=True)
class Ports:
    api: int = 8000
    grpc: int = 8500
    rest: int = 8501


def child_commands(settings: Settings, host: str, ports: Ports) -> dict[str, list[str]]:
    """The command line of each child, by name, in start order."""
    ftserve = [sys.executable, "-m", "service.cli"]
    commands: dict[str, list[str]] = {}
    if not settings.model_server:
        config = ensure_model_config(settings.model_repo)
        commands["model-server"] = [
            *ftserve,
            "model-server",
            f"--port={ports.grpc}",
            f"--rest_api_port={ports.rest}",
            "--host=127.0.0.1",
            f"--model_config_file={config}",
            "--model_config_file_poll_wait_seconds=2",
            "--file_system_poll_wait_seconds=1",
            "--enable_grpc_healthcheck_service=true",
            # As TF Serving, the model server checks labels before loading anything; a
            # restart with labels in models.config needs this (label moves do not).
            "--allow_version_labels_for_unavailable_models=true",
        ]
    commands["worker"] = [*ftserve, "worker"]
    commands["api"] = [*ftserve, "api", f"--host={host}", f"--port={ports.api}"]
    return commands


def ensure_model_config(repo: Path) -> Path:
    """``<repo>/models.config``, created empty when no model was published yet."""
    repo = repo.absolute()
    repo.mkdir(parents=True, exist_ok=True)
    path = repo / CONFIG_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return path  # a publisher wrote it (or is writing it atomically): leave it
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(_EMPTY_MODEL_CONFIG)
    return path


def child_environment(settings: Settings, ports: Ports) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not settings.model_server:
        env["FTSERVE_MODEL_SERVER"] = f"127.0.0.1:{ports.grpc}"
    return env


def serve(settings: Settings, host: str = "127.0.0.1", ports: Ports | None = None) -> int:
    """Run the stack until a signal or a child's exit; return the exit status."""
    ports = ports or Ports()
    env = child_environment(settings, ports)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in child_commands(settings, host, ports).items():
            # Own process group: a terminal's Ctrl-C reaches the children only through us,
            # in the order we choose.
            children[name] = subprocess.Popen(command, env=env, start_new_session=True)
        print(
            f"ftserve: API on http://{host}:{ports.api}, model server gRPC on "
            f"{settings.model_server_address() if settings.model_server else ports.grpc}",
            file=sys.stderr,
        )
        failed = _wait(children, lambda: stopping)
    finally:
        _stop_all(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failed is not None:
        print(f"ftserve: {failed} exited; stopped the others", file=sys.stderr)
        return 1
    return 0


def _wait(children: dict[str, subprocess.Popen[bytes]], stopping) -> str | None:
    while not stopping():
        for name, child in children.items():
            if child.poll() is not None:
                return name
        time.sleep(0.2)
    return None


def _stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    # The API first (no new work comes in), the model server last (predictions finish).
    order = [n for n in ("api", "worker", "model-server") if n in children]
    for name in order:
        if children[name].poll() is None:
            children[name].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for name in order:
        try:
            children[name].wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            children[name].kill()
            children[name].wait()
