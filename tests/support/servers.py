"""Model servers as real processes on loopback, driven with the lean (TF-free) stubs.

``ftserve model-server`` needs TensorFlow; the tests that start one may not have it (the
API's test environment). They run it with ``tf_python()``: this interpreter when it has
TensorFlow, else the one ``FTSERVE_TEST_TF_PYTHON`` names (``make test`` sets it).
The model server's own tests extend ``ServerProcess`` with the official stubs. Tests that
only ask a server questions share one through ``SharedServers``: a start costs seconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import text_format

from service.contract.model_server_config_pb2 import ModelServerConfig
from service.contract.repository import CONFIG_NAME, ModelRepository
from service.contract.signatures import BYTES_INPUT
from service.model_client import get_model_status_pb2, predict_pb2
from service.model_client.client import GET_MODEL_STATUS, PREDICT
from service.model_client.codec import decode_tensor, encode_strings

ROOT = Path(__file__).resolve().parents[2]
MODEL = "shapes"
FTSERVE = "ftserve"
TF_PYTHON_ENV = "FTSERVE_TEST_TF_PYTHON"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


def has_tensorflow() -> bool:
    """Whether this interpreter can import TensorFlow (without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def tf_python() -> str:
    """A Python interpreter with TensorFlow and ftserve, for model server subprocesses."""
    if has_tensorflow():
        return sys.executable
    named = os.environ.get(TF_PYTHON_ENV)
    if not named:
        pytest.skip(
            f"TensorFlow is not installed here and {TF_PYTHON_ENV} names no interpreter that"
            " has it; `make test` sets it to the project's main virtual environment"
        )
    return named


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The model server's own tests serve every model's latest version from this file, which the
# repository never writes: they test the server, not the repository's serving states.
LATEST_CONFIG = "latest.config"


def add_version(repo_root: Path, source: Path, model: str = MODEL, label: str | None = None) -> int:
    """Publish a copy of ``source`` as the next version, the way the exporter publishes.

    ``latest.config`` (``repo_flags``) then lists every model with TF Serving's default
    policy, the latest version. With ``label``, the label is written straight into the
    serving state (and models.config): only for a repository no model server runs on yet.
    """
    repository = ModelRepository(repo_root)
    with repository.staging(model) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        version = repository.publish(model, staging)
    if label is not None:
        repository.update_state(model, lambda state: state.set_label(label, version))
    write_latest_config(repository)
    return version


def write_latest_config(repository: ModelRepository) -> Path:
    config = ModelServerConfig()
    config.model_config_list.SetInParent()
    for model in repository.models():
        if repository.versions(model):
            entry = config.model_config_list.config.add()
            entry.name, entry.model_platform = model, "tensorflow"
            entry.base_path = str(repository.model_dir(model))
    path = repository.root / LATEST_CONFIG
    tmp = path.with_name(f".{LATEST_CONFIG}.tmp")
    tmp.write_text(text_format.MessageToString(config))
    tmp.replace(path)
    return path


def repo_flags(repo_root: Path, poll_seconds: int = 1) -> list[str]:
    """Serve the latest version of every model under ``repo_root`` (see ``add_version``)."""
    return [
        f"--model_config_file={repo_root / LATEST_CONFIG}",
        f"--file_system_poll_wait_seconds={poll_seconds}",
    ]


def labelled_flags(repo_root: Path, poll_seconds: int = 1) -> list[str]:
    """Serve what the repository's serving states say (``models.config``), labels included.

    TF Serving checks labels before it loads anything, so starting on a config with labels
    needs ``--allow_version_labels_for_unavailable_models``, as a restart in production does.
    """
    return [
        f"--model_config_file={repo_root / CONFIG_NAME}",
        f"--file_system_poll_wait_seconds={poll_seconds}",
        f"--model_config_file_poll_wait_seconds={poll_seconds}",
        "--allow_version_labels_for_unavailable_models=true",
    ]


class ServerProcess:
    """A model server process with its ports, a gRPC channel, an HTTP client and its log."""

    def __init__(self, kind: str, flags: list[str], log_path: Path) -> None:
        self.kind = kind
        self.port, self.rest_port = free_port(), free_port()
        flags = [
            f"--port={self.port}",
            f"--rest_api_port={self.rest_port}",
            "--enable_grpc_healthcheck_service=true",
            *flags,
        ]
        if kind == FTSERVE:
            command = [tf_python(), "-m", "service.cli", "model-server", *flags]
        else:
            command = [os.environ["TF_SERVING_BIN"], *flags]
        self.log_path = log_path
        self._signalled = False
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.rest_port}", timeout=30)
        self._status = self.channel.unary_unary(
            GET_MODEL_STATUS,
            request_serializer=get_model_status_pb2.GetModelStatusRequest.SerializeToString,
            response_deserializer=get_model_status_pb2.GetModelStatusResponse.FromString,
        )
        self._predict = self.channel.unary_unary(
            PREDICT,
            request_serializer=predict_pb2.PredictRequest.SerializeToString,
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def status(self, model: str = MODEL) -> dict:
        """``{version: ModelVersionStatus}`` as GetModelStatus reports them."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = self._status(request, timeout=10)
        return {s.version: s for s in response.model_version_status}

    def label_version(self, model: str, label: str) -> int:
        """The version ``label`` of ``model`` resolves to on this server now (REST metadata)."""
        response = self.http.get(f"/v1/models/{model}/labels/{label}/metadata")
        assert response.status_code == 200, response.text
        return int(response.json()["model_spec"]["version"])

    def predict(
        self, images: list[bytes], model: str = MODEL, version: int | None = None
    ) -> tuple[int, dict[str, np.ndarray]]:
        """``serving_default`` on ``images`` over gRPC: (version that answered, outputs)."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        request.inputs[BYTES_INPUT].CopyFrom(encode_strings(images))
        response = self._predict(request, timeout=30)
        outputs = {alias: decode_tensor(proto) for alias, proto in response.outputs.items()}
        return int(response.model_spec.version.value), outputs

    def wait_until(self, condition, what: str, timeout: float = 90.0) -> None:
        """Poll ``condition()`` (RPC errors count as not yet) until it holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.kind} exited with {self.process.returncode}:\n{self.log()}")
            try:
                if condition():
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{self.kind}: timed out waiting for {what}:\n{self.log()}")

    def wait_for_version(self, version: int, model: str = MODEL) -> None:
        def available() -> bool:
            state = self.status(model).get(version)
            return state is not None and state.state == AVAILABLE

        self.wait_until(available, f"{model} version {version} to be AVAILABLE")

    def terminate(self, signum: int = signal.SIGTERM) -> None:
        """Close the clients and signal the process once, without waiting for it to exit."""
        self.channel.close()
        self.http.close()
        if not self._signalled and self.process.poll() is None:
            self.process.send_signal(signum)
            self._signalled = True

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """``terminate``, then the exit code; a process still running at ``timeout`` is killed."""
        self.terminate(signum)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode


class Stoppable(Protocol):
    """What ``SharedServer`` needs of a server: its process, its log, a way to stop it."""

    process: subprocess.Popen[bytes]

    def log(self) -> str: ...

    def terminate(self) -> None: ...

    def stop(self, *, timeout: float = ...) -> int: ...


P = TypeVar("P", bound=Stoppable)


class SharedServer(Generic[P]):
    """One model server that many tests borrow: started on first use, and again after a crash.

    ``make(log_path)`` starts the process and ``ready(server)`` waits until it serves. A test
    during which the server dies fails in its teardown, with the server's log; the next test
    gets a fresh process rather than a dead port, so one crash is reported once.
    """

    def __init__(
        self,
        name: str,
        make: Callable[[Path], P],
        ready: Callable[[P], None],
        log_dir: Path,
    ) -> None:
        self.name = name
        self.starts = 0
        self._make, self._ready, self._log_dir = make, ready, log_dir
        self._server: P | None = None
        self._start_failure: str | None = None

    @contextmanager
    def borrow(self) -> Iterator[P]:
        """The running server, for one test; fails that test if the server dies during it."""
        server = self._running()
        yield server
        if server.process.poll() is not None:
            pytest.fail(
                f"the shared {self.name} server exited with {server.process.returncode} during"
                f" this test:\n{server.log()}"
            )

    def _running(self) -> P:
        if self._start_failure is not None:
            # Failed once already: every later test would wait just as long to fail the same way.
            pytest.fail(self._start_failure)
        if self._server is not None and self._server.process.poll() is None:
            return self._server
        self.stop()
        self.starts += 1
        server = self._make(self._log_dir / f"{self.name}-{self.starts}.log")
        try:
            self._ready(server)
        except BaseException as exc:  # pytest.fail raises a BaseException
            server.stop(timeout=20)
            self._start_failure = f"the shared {self.name} server did not start: {exc}"
            raise
        self._server = server
        return server

    def terminate(self) -> None:
        """Signal the server to stop, without waiting (``stop`` does)."""
        if self._server is not None:
            self._server.terminate()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=20)
            self._server = None


class SharedServers:
    """The shared servers of a test package, by name; ``stop_all`` when the package is done."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._servers: dict[str, SharedServer[Any]] = {}

    def get(
        self, name: str, make: Callable[[Path], P], ready: Callable[[P], None]
    ) -> SharedServer[P]:
        """The server called ``name``; ``make`` and ``ready`` count only on the first call."""
        if name not in self._servers:
            self._servers[name] = SharedServer(name, make, ready, self._log_dir)
        return self._servers[name]

    def stop_all(self) -> None:
        # Signal every server before waiting for any: they wind down side by side.
        for shared in self._servers.values():
            shared.terminate()
        for shared in self._servers.values():
            shared.stop()


class WindingDown:
    """Servers signalled to stop that nothing waits for until ``wait_all``.

    A model server takes a second or two to unload its models and exit; the tests after the
    one that started it need not wait for that.
    """

    def __init__(self) -> None:
        self._servers: list[Stoppable] = []

    def add(self, server: Stoppable) -> None:
        server.terminate()
        self._servers.append(server)

    def wait_all(self) -> None:
        for server in self._servers:
            server.stop(timeout=20)
        self._servers.clear()
