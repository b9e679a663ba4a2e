"""Docker for the container smoke test: the engine, the images, a compose project, layer scans.

Everything goes through the docker and compose command lines, as a user would, so the test
needs no Docker SDK. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from tests.deploy.manifests import ROOT

COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
T = TypeVar("T")


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``docker ARGS``; output captured as text."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def engine_problem() -> str | None:
    """Why no Docker engine can be used from here, or None when one answers."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    try:
        result = docker("version", "--format", "{{.Server.Version}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer `docker version` within 30 s"
    if result.returncode != 0 or not result.stdout.strip():
        reason = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"no Docker engine is reachable ({reason})"
    return None


def compose_command() -> list[str] | None:
    """The Compose v2 plugin (``docker compose``) if installed, else ``docker-compose`` (v1,
    Debian bookworm's package), else None."""
    candidates = (["docker", "compose"], ["docker-compose"])
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        result = subprocess.run(
            [*command, "version"], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode == 0:
            return command
    return None


def pip_ca_bundle() -> Path | None:
    """The CA bundle pip is configured with here (what ``make images`` passes as a secret)."""
    named = os.environ.get("PIP_CERT")
    if not named:
        result = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), "-m", "pip", "config", "get", "global.cert"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        named = result.stdout.strip() if result.returncode == 0 else None
    named = named or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    if named and Path(named).is_file():
        return Path(named)
    return None


def build_images(settings: Mapping[str, str], log: Path, timeout: float) -> None:
    """``make images`` with ``settings`` (BASE=..., ...); its output goes to ``log``.

    Raises:
        AssertionError: the build failed, with the end of its output.
    """
    with log.open("w") as out:
        result = subprocess.run(
            ["make", "-C", str(ROOT), "images", *(f"{k}={v}" for k, v in settings.items())],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-6000:]
        raise AssertionError(f"make images failed ({result.returncode}); log {log}:\n{tail}")


def image_size(image: str) -> int:
    """The image's size in bytes, all layers counted."""
    return int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(probe: Callable[[], T | None], what: str, timeout: float, every: float = 1.0) -> T:
    """Call ``probe`` until it returns something other than None (exceptions count as not
    yet); return that. Raises AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = probe()
        except Exception as exc:  # a server that is not up yet refuses, resets, times out
            last_error = exc
        else:
            if found is not None:
                return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} ({last_error!r})")


@dataclass
class ComposeProject:
    """One ``docker compose -p NAME -f deploy/compose.yaml`` project and its environment."""

    command: list[str]
    name: str
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``compose ARGS`` for this project; raises CalledProcessError (with output) on failure."""
        return subprocess.run(
            [*self.command, "-p", self.name, "-f", str(COMPOSE_FILE), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            env={**os.environ, **self.env},
        )

    def container(self, service: str) -> str:
        """The id of the service's container (stopped or running)."""
        ids = self.run("ps", "-a", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: expected one container, found {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict:
        return json.loads(docker("inspect", self.container(service)).stdout)[0]

    def logs(self, service: str) -> str:
        result = docker("logs", self.container(service), check=False)
        return result.stdout + result.stderr

    def all_logs(self, tail: int = 60) -> str:
        """The end of every service's log, for a failure message."""
        try:
            return self.run("logs", "--no-color", f"--tail={tail}", timeout=60).stdout
        except subprocess.SubprocessError as exc:
            return f"(no logs: {exc})"


# Layer scan --------------------------------------------------------------------------------

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    """A member's bytes, decompressed when it is a gzip stream (compressed layers)."""
    first = stream.read(_CHUNK)
    if first.startswith(_GZIP_MAGIC):
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        data = first
        while data:
            yield inflate.decompress(data)
            data = stream.read(_CHUNK)
        yield inflate.flush()
        return
    while first:
        yield first
        first = stream.read(_CHUNK)


def _holders(chunks: Iterator[bytes], needles: Mapping[str, bytes]) -> set[str]:
    """The names of ``needles`` that the concatenated ``chunks`` contain (across chunk edges)."""
    keep = max(len(needle) for needle in needles.values()) - 1
    found: set[str] = set()
    tail = b""
    for chunk in chunks:
        window = tail + chunk
        found.update(name for name, needle in needles.items() if needle in window)
        if len(found) == len(needles):
            break
        tail = window[-keep:] if keep else b""
    return found


def layers_containing(image: str, needles: Mapping[str, bytes]) -> dict[str, list[str]]:
    """For each needle, the members of ``docker save IMAGE`` (layer tars, the image config
    with its history, manifests) whose bytes contain it.

    An uncompressed layer tar stores each file's contents in one piece, so a file holding
    a needle makes its layer's bytes hold it; compressed layers are inflated first.
    """
    process = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    assert process.stdout is not None
    found: dict[str, list[str]] = {name: [] for name in needles}
    try:
        with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
            for member in archive:
                stream = archive.extractfile(member) if member.isfile() else None
                if stream is None:
                    continue
                for name in _holders(_chunks(stream), needles):
                    found[name].append(member.name)
    finally:
        process.stdout.close()
        returncode = process.wait(timeout=1800)
    assert returncode == 0, f"docker save {image} exited with {returncode}"
    return found
