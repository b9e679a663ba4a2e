"""``ftserve serve``: the whole stack on one machine, as child processes.

The model server (``ftserve model-server`` on the model repository, unless
``FTSERVE_MODEL_SERVER`` names one already running), one worker or more, and the API. Once
the API's ``/readyz`` answers, one banner says where everything is. Ctrl-C or SIGTERM stops
them all, each with SIGTERM first so jobs are handed back and requests in flight finish.

A worker that exits (any status, any signal: the OOM killer's SIGKILL included) is started
again after a backoff: 1 s, doubling up to 30 s, back to 1 s once a worker has stayed up
for 60 s. The job it held comes back to the queue when its lease expires, and the new
worker resumes it. The API and the model server are not restarted: if either exits, the
others are stopped too and ``serve`` returns 1, since a stack without them cannot serve.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from service.config import Settings
from service.contract.repository import CONFIG_NAME

# Seconds each child gets between SIGTERM and SIGKILL: a worker checkpoints within a batch.
STOP_GRACE_SECONDS = 60.0
# Children started again when they exit (``worker``, or ``worker-<n>`` when there are
# several); any other child's exit stops the stack.
RESTARTED_PREFIX = "worker"
RESTART_FIRST_DELAY_SECONDS = 1.0
RESTART_MAX_DELAY_SECONDS = 30.0
# A child up this long counts as healthy: its next restart waits the first delay again.
RESTART_RESET_AFTER_SECONDS = 60.0
# How often children and stop requests are checked, backoff waits included.
POLL_SECONDS = 0.2
# How often the API's /readyz is asked until it answers, and how long each ask may take.
READY_POLL_SECONDS = 0.5
READY_TIMEOUT_SECONDS = 1.0
# Past this, a stack that is still not ready says what /readyz answers, once.
READY_PATIENCE_SECONDS = 60.0
_EMPTY_MODEL_CONFIG = "model_config_list {\n}\n"

Children = dict[str, subprocess.Popen[bytes]]


@dataclass(frozen=True)
class Ports:
    api: int = 8000
    grpc: int = 8500
    rest: int = 8501


def child_commands(
    settings: Settings, host: str, ports: Ports, workers: int = 1
) -> dict[str, list[str]]:
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
    for name in worker_names(workers):
        commands[name] = [*ftserve, "worker"]
    commands["api"] = [*ftserve, "api", f"--host={host}", f"--port={ports.api}"]
    return commands


def worker_names(count: int) -> list[str]:
    """``worker`` alone, else ``worker-1`` … ``worker-<count>``."""
    if count < 1:
        raise ValueError(f"a stack needs at least one worker, not {count}")
    if count == 1:
        return [RESTARTED_PREFIX]
    return [f"{RESTARTED_PREFIX}-{n}" for n in range(1, count + 1)]


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
    """This process's environment (TensorFlow's log settings included, see
    ``service.quiet_tensorflow``), pointing the API and workers at our model server."""
    env = dict(os.environ)
    if not settings.model_server:
        env["FTSERVE_MODEL_SERVER"] = f"127.0.0.1:{ports.grpc}"
    return env


def serve(
    settings: Settings, host: str = "127.0.0.1", ports: Ports | None = None, workers: int = 1
) -> int:
    """Run the stack until a signal, or until the API or the model server exits.

    Args:
        workers: worker processes, each training one job at a time.

    Returns:
        0 after a signal, 1 when a child that is not restarted exited.
    """
    ports = ports or Ports()
    env = child_environment(settings, ports)
    commands = child_commands(settings, host, ports, workers)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    children: Children = {}
    try:
        for name, command in commands.items():
            children[name] = _start(command, env)
        # The banner waits for /readyz: every address it prints answers by then.
        watch = ReadyWatch(
            api_url(host, ports.api),
            _probed_ports(settings, host, ports),
            lambda: _print_now(banner(settings, host, ports, children)),
        )
        failed = _supervise(children, commands, env, lambda: stopping, watch.poll)
    finally:
        _stop_all(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failed is not None:
        print(f"ftserve: {failed} exited; stopped the others", file=sys.stderr)
        return 1
    return 0


# Listening on one of these, the API is reached on loopback from this machine.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def api_url(host: str, port: int) -> str:
    """Where a client on this machine reaches an API listening on ``host``: a wildcard
    address is reached on loopback, an IPv6 address goes in brackets."""
    host = _WILDCARDS.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def masked_url(url: str) -> str:
    """A database URL with its password shown as ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a SQLAlchemy URL)"  # never echo what may hold a password


def banner(settings: Settings, host: str, ports: Ports, children: Children) -> str:
    """Where everything is, one aligned line each."""
    api = api_url(host, ports.api)
    if settings.model_server:
        model_server = f"gRPC {settings.model_server} (from FTSERVE_MODEL_SERVER)"
    else:
        model_server = f"gRPC 127.0.0.1:{ports.grpc}   REST http://127.0.0.1:{ports.rest}"
    pids = [str(child.pid) for name, child in children.items() if _restarted(name)]
    rows = [
        ("API", api + ("   (listening on every address)" if host in _WILDCARDS else "")),
        ("web page", f"{api}/ui/"),
        ("API docs", f"{api}/docs"),
        ("model server", model_server),
        ("model repository", str(settings.model_repo.absolute())),
        ("job store", masked_url(settings.sqlalchemy_url())),
        ("workers", f"{len(pids)} (pid{'s' if len(pids) > 1 else ''} {', '.join(pids)})"),
    ]
    if settings.api_token:
        rows.append(("API token", "required: Authorization: Bearer $FTSERVE_API_TOKEN"))
    width = max(len(label) for label, _ in rows)
    lines = [f"  {label:<{width}}  {value}" for label, value in rows]
    return "\n".join(["ftserve is ready:", *lines, "Ctrl-C stops them all."])


def _probed_ports(settings: Settings, host: str, ports: Ports) -> list[tuple[str, int]]:
    """The API's port, and our model server's gRPC port: until it opens (after importing
    TensorFlow, seconds after the API is up), /readyz could only answer 503."""
    probed = [(_WILDCARDS.get(host, host), ports.api)]
    if not settings.model_server:
        probed.append(("127.0.0.1", ports.grpc))
    return probed


def _print_now(text: str) -> None:
    # stdout, in one write: `ftserve serve 2>/dev/null` keeps the banner, drops the logs.
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class ReadyWatch:
    """Asks the API's ``/readyz`` until it answers 200, then calls ``on_ready`` once.

    ``poll`` is called from the supervision loop: at most every ``READY_POLL_SECONDS`` it
    checks that each of ``ports`` (host, port) accepts a connection, and only then asks
    ``/readyz`` (each request is a line in the API's access log), waiting at most
    ``READY_TIMEOUT_SECONDS``. A stack not ready after ``READY_PATIENCE_SECONDS`` says once
    what it is waiting for.
    """

    def __init__(
        self, url: str, ports: list[tuple[str, int]], on_ready: Callable[[], None]
    ) -> None:
        self.url = f"{url}/readyz"
        self.ports = ports
        self.on_ready = on_ready
        self.started = self.next_ask = time.monotonic()
        self.ready = self.complained = False

    def poll(self) -> None:
        now = time.monotonic()
        if self.ready or now < self.next_ask:
            return
        self.next_ask = now + READY_POLL_SECONDS
        waiting_for = next(filter(None, map(_closed, self.ports)), None) or _readiness(self.url)
        if waiting_for is None:
            self.ready = True
            self.on_ready()
        elif not self.complained and now - self.started >= READY_PATIENCE_SECONDS:
            self.complained = True
            print(
                f"ftserve: not ready after {READY_PATIENCE_SECONDS:g} s: {waiting_for}",
                file=sys.stderr,
            )


def _closed(address: tuple[str, int]) -> str | None:
    """None when ``address`` accepts a TCP connection, else why it does not."""
    try:
        socket.create_connection(address, timeout=READY_TIMEOUT_SECONDS).close()
    except OSError as exc:
        return f"{address[0]}:{address[1]} accepts no connection ({exc.strerror or exc})"
    return None


# Loopback needs no proxy, whatever http_proxy says.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _readiness(url: str) -> str | None:
    """None when ``url`` answers 200, else what it answered or why it did not."""
    try:
        with _NO_PROXY.open(url, timeout=READY_TIMEOUT_SECONDS) as response:
            return None if response.status == 200 else f"{url}: status {response.status}"
    except urllib.error.HTTPError as exc:
        with exc:
            return f"{url}: status {exc.code} {exc.read(500).decode(errors='replace')}"
    except OSError as exc:  # URLError, timeouts, refused connections
        return f"{url}: no answer ({getattr(exc, 'reason', exc)})"


def _restarted(name: str) -> bool:
    return name == RESTARTED_PREFIX or name.startswith(f"{RESTARTED_PREFIX}-")


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own process group: a terminal's Ctrl-C reaches the children only through us, in the
    # order we choose.
    return subprocess.Popen(command, env=env, start_new_session=True)


def _supervise(
    children: Children,
    commands: dict[str, list[str]],
    env: dict[str, str],
    stopping: Callable[[], bool],
    on_poll: Callable[[], None] = lambda: None,
) -> str | None:
    """Watch the children until a stop request or the exit of one that is not restarted.

    Workers start again after their backoff when they exit; ``children`` then holds the
    new process. ``on_poll`` runs once per round.

    Returns:
        The name of the child whose exit stops the stack, or None on a stop request.
    """
    backoffs = {name: _Backoff() for name in children if _restarted(name)}
    while not stopping():
        on_poll()
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
    workers = [n for n in children if _restarted(n)]
    order = [n for n in ("api", *workers, "model-server") if n in children]
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
