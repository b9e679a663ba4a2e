"""``ftserve serve``: the whole stack on one machine, as three child processes.

The model server (``ftserve model-server`` on the model repository, unless
``FTSERVE_MODEL_SERVER`` names one already running), one worker and the API. Ctrl-C or
SIGTERM stops all three, each with SIGTERM first so jobs are handed back and requests in
flight finish.

A worker that exits (any status, any signal: the OOM killer's SIGKILL included) is started
again after a backoff: 1 s, doubling up to 30 s, back to 1 s once a worker has stayed up
for 60 s. The job it held comes back to the queue when its lease expires, and the new
worker resumes it. The API and the model server are not restarted: if either exits, the
others are stopped too and ``serve`` returns 1, since a stack without them cannot serve.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.config import Settings
from service.contract.repository import CONFIG_NAME

# Seconds each child gets between SIGTERM and SIGKILL: a worker checkpoints within a batch.
STOP_GRACE_SECONDS = 60.0
# Children started again when they exit; any other child's exit stops the stack.
RESTARTED_CHILDREN = frozenset({"worker"})
RESTART_FIRST_DELAY_SECONDS = 1.0
RESTART_MAX_DELAY_SECONDS = 30.0
# A child up this long counts as healthy: its next restart waits the first delay again.
RESTART_RESET_AFTER_SECONDS = 60.0
# How often children and stop requests are checked, backoff waits included.
POLL_SECONDS = 0.2
_EMPTY_MODEL_CONFIG = "model_config_list {\n}\n"

Children = dict[str, subprocess.Popen[bytes]]


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
            f"--max_image_pixels={settings.image_max_pixels}",
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
    """Run the stack until a signal, or until the API or the model server exits.

    Returns:
        0 after a signal, 1 when a child that is not restarted exited.
    """
    ports = ports or Ports()
    env = child_environment(settings, ports)
    commands = child_commands(settings, host, ports)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    children: Children = {}
    try:
        for name, command in commands.items():
            children[name] = _start(command, env)
        print(
            f"ftserve: API on http://{host}:{ports.api}, model server gRPC on "
            f"{settings.model_server_address() if settings.model_server else ports.grpc}",
            file=sys.stderr,
        )
        failed = _supervise(children, commands, env, lambda: stopping)
    finally:
        _stop_all(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failed is not None:
        print(f"ftserve: {failed} exited; stopped the others", file=sys.stderr)
        return 1
    return 0


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own process group: a terminal's Ctrl-C reaches the children only through us, in the
    # order we choose.
    return subprocess.Popen(command, env=env, start_new_session=True)


def _supervise(
    children: Children,
    commands: dict[str, list[str]],
    env: dict[str, str],
    stopping: Callable[[], bool],
) -> str | None:
    """Watch the children until a stop request or the exit of one that is not restarted.

    Those in ``RESTARTED_CHILDREN`` start again after their backoff when they exit;
    ``children`` then holds the new process.

    Returns:
        The name of the child whose exit stops the stack, or None on a stop request.
    """
    backoffs = {name: _Backoff() for name in children if name in RESTARTED_CHILDREN}
    while not stopping():
        for name, child in list(children.items()):
            backoff = backoffs.get(name)
            if backoff is not None and backoff.due is not None:
                if time.monotonic() >= backoff.due:
                    children[name] = _start(commands[name], env)
                    backoff.started()
            elif child.poll() is not None:
                if backoff is None:
                    return name
                delay = backoff.schedule()
                print(
                    f"ftserve: {name} exited with {_exit_reason(child.returncode)}; "
                    f"restarting in {delay:g} s (restart {backoff.restarts})",
                    file=sys.stderr,
                )
        # Short naps, backoff waits included: a stop request is seen within one.
        time.sleep(POLL_SECONDS)
    return None


@dataclass
class _Backoff:
    """When a restarted child starts again: the delay doubles with each exit."""

    restarts: int = 0
    delay: float = RESTART_FIRST_DELAY_SECONDS
    started_at: float = field(default_factory=time.monotonic)
    due: float | None = None  # the monotonic time of a pending restart

    def schedule(self) -> float:
        """Plan the next start after an exit; return the delay."""
        now = time.monotonic()
        if now - self.started_at >= RESTART_RESET_AFTER_SECONDS:
            self.delay = RESTART_FIRST_DELAY_SECONDS
        delay, self.delay = self.delay, min(self.delay * 2, RESTART_MAX_DELAY_SECONDS)
        self.restarts += 1
        self.due = now + delay
        return delay

    def started(self) -> None:
        self.started_at, self.due = time.monotonic(), None


def _exit_reason(returncode: int) -> str:
    """``SIGKILL`` for a child that a signal ended, else ``status <n>``."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


def _stop_all(children: Children) -> None:
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
