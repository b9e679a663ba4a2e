"""Model servers as real processes on loopback, and models made by the exporter.

Every server test runs ``ftserve model-server``; the compatibility tests also run
``tensorflow_model_server`` when ``TF_SERVING_BIN`` names one. Both are started with the
same flags and driven only through the official ``tensorflow-serving-api`` stubs and HTTP.
The manager tests' tiny SavedModel fixtures live in ``tiny_repo`` and are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

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

from tests.model_server.tiny_repo import loader, manager, repo, saved_model
from tests.support import servers
from tests.support.servers import FTSERVE, MODEL, add_version, free_port, repo_flags
from tests.support.tf_serving_models import (
    write_half_plus_three_tf1,
    write_half_plus_two_tf1,
    write_half_plus_two_tf2,
)
from tests.support.trained import Template

# Re-exported: helpers for the tests here, and the tiny-model fixtures for pytest to find.
__all__ = [
    "FTSERVE",
    "MODEL",
    "Template",
    "add_version",
    "free_port",
    "loader",
    "manager",
    "repo",
    "repo_flags",
    "saved_model",
]

IMAGE_SIZE = 32
TF_SERVING = "tensorflow_model_server"
NO_TF_SERVING = (
    "TF_SERVING_BIN is not set: tensorflow_model_server is not on PyPI and its registry image"
    " cannot be pulled here; point TF_SERVING_BIN at the binary to run these against it"
)
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
# Both servers refuse to start on a config with labels without it: nothing is loaded yet.
ALLOW_LABELS = "--allow_version_labels_for_unavailable_models=true"


def two_version_config(root: Path, source: Path) -> Path:
    """Versions 1 and 2 of ``source`` under ``root/repo``, all served, ``stable`` → 1.

    Returns the model config file; a server started on it needs ``ALLOW_LABELS``.
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


class ServerProcess(servers.ServerProcess):
    """A model server process driven through the official ``tensorflow-serving-api`` stubs."""

    def __init__(self, kind: str, flags: list[str], log_path: Path) -> None:
        super().__init__(kind, flags, log_path)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def status(self, model: str = MODEL) -> dict[int, get_model_status_pb2.ModelVersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = self.model_stub.GetModelStatus(request, timeout=10)
        return {s.version: s for s in response.model_version_status}


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


@pytest.fixture(scope="session")
def half_plus_two_tf2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Base path of TensorFlow Serving's TF2 ``half_plus_two``, version ``00000123``."""
    base = tmp_path_factory.mktemp("tf2") / "half_plus_two"
    write_half_plus_two_tf2(base)
    return base


@pytest.fixture(scope="session")
def half_plus_two_tf1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Base path of TensorFlow Serving's TF1 ``half_plus_two``, version ``00000123``."""
    base = tmp_path_factory.mktemp("tf1") / "half_plus_two"
    write_half_plus_two_tf1(base)
    return base


@pytest.fixture(scope="session")
def half_plus_three_tf1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Base path of TensorFlow Serving's TF 1.0 ``half_plus_three``, version ``00000123``."""
    base = tmp_path_factory.mktemp("tf1-three") / "half_plus_three"
    write_half_plus_three_tf1(base)
    return base
