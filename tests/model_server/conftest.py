"""Model servers as real processes on loopback, and models made by the exporter.

Every server test runs ``ftserve model-server``; the compatibility tests also run
``tensorflow_model_server`` when ``TF_SERVING_BIN`` names one. Both are started with the
same flags and driven only through the official ``tensorflow-serving-api`` stubs and HTTP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from exporter.repository import ModelRepository
from tests.conftest import Template as Template  # re-exported for the server tests

MODEL = "shapes"
IMAGE_SIZE = 32
FTSERVE = "ftserve"
TF_SERVING = "tensorflow_model_server"
NO_TF_SERVING = (
    "TF_SERVING_BIN is not set: tensorflow_model_server is not on PyPI and this machine has"
    " no container engine; point TF_SERVING_BIN at the binary to run these against it"
)
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


def add_version(repo_root: Path, source: Path, model: str = MODEL) -> int:
    """Publish a copy of ``source`` as the next version, the way the exporter publishes."""
    repository = ModelRepository(repo_root)
    with repository.staging(model) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        return repository.publish(model, staging)


def two_version_config(root: Path, source: Path) -> Path:
    """Versions 1 and 2 of ``source`` under ``root/repo``, all served, ``stable`` → 1.

    Returns the model config file.
    """
    repo = root / "repo"
    assert add_version(repo, source) == 1
    assert add_version(repo, source) == 2
    config = ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = MODEL, str(repo / MODEL), "tensorflow"
    entry.model_version_policy.all.SetInParent()
    entry.version_labels["stable"] = 1
    config_path = root / "models.config"
    config_path.write_text(text_format.MessageToString(config))
    return config_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A model server process with its ports, stubs and log."""

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
            command = [sys.executable, "-m", "service.cli", "model-server", *flags]
        else:
            command = [os.environ["TF_SERVING_BIN"], *flags]
        self.log_path = log_path
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.rest_port}", timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def status(self, model: str = MODEL) -> dict[int, get_model_status_pb2.ModelVersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = self.model_stub.GetModelStatus(request, timeout=10)
        return {s.version: s for s in response.model_version_status}

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

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.channel.close()
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(params=[FTSERVE, TF_SERVING])
def server_kind(request: pytest.FixtureRequest) -> str:
    if request.param == TF_SERVING and not os.environ.get("TF_SERVING_BIN"):
        pytest.skip(NO_TF_SERVING)
    return str(request.param)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """``start_server(kind, flags)`` → a running ``ServerProcess``; all stopped afterwards."""
    started: list[ServerProcess] = []

    def start(kind: str, flags: list[str]) -> ServerProcess:
        server = ServerProcess(kind, flags, tmp_path / f"{kind}-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(timeout=20)


def image_request(
    images: list[bytes], version: int | None = None, signature: str = "", model: str = MODEL
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if signature:
        request.model_spec.signature_name = signature
    request.inputs["image_bytes"].CopyFrom(
        tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)])
    )
    return request


def outputs(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}


def repo_flags(repo_root: Path, poll_seconds: int = 1) -> list[str]:
    return [
        f"--model_config_file={repo_root / 'models.config'}",
        f"--file_system_poll_wait_seconds={poll_seconds}",
    ]
