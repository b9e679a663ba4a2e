"""Model servers as real processes on loopback, and models made by the exporter.

Every server test runs ``ftserve model-server``; the compatibility tests also run
``tensorflow_model_server`` when ``TF_SERVING_BIN`` names one. Both are started with the
same flags and driven only through the official ``tensorflow-serving-api`` stubs and HTTP.
Servers that test files share live in ``server_fixtures``, the manager tests' tiny
SavedModel fixtures in ``tiny_repo``; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

from tests.model_server.server_fixtures import (
    ALLOW_LABELS,
    TF_SERVING,
    ServerProcess,
    half_plus_three_copies,
    half_plus_two_server,
    shapes_flags,
    shapes_server,
    shared_servers,
    skip_without_tf_serving,
    two_version_config,
    upstream_models,
    upstream_server,
)
from tests.model_server.tiny_repo import loader, manager, repo, saved_model
from tests.support.servers import (
    FTSERVE,
    MODEL,
    WindingDown,
    add_version,
    free_port,
    repo_flags,
)
from tests.support.tf_serving_models import (
    write_half_plus_three_tf1,
    write_half_plus_two_tf1,
    write_half_plus_two_tf2,
)
from tests.support.trained import Template

# Re-exported: helpers for the tests here, and the fixtures for pytest to find.
__all__ = [
    "ALLOW_LABELS",
    "FTSERVE",
    "MODEL",
    "TF_SERVING",
    "ServerProcess",
    "Template",
    "add_version",
    "free_port",
    "half_plus_three_copies",
    "half_plus_two_server",
    "loader",
    "manager",
    "repo",
    "repo_flags",
    "saved_model",
    "shapes_flags",
    "shapes_server",
    "shared_servers",
    "two_version_config",
    "upstream_models",
    "upstream_server",
]

IMAGE_SIZE = 32
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


@pytest.fixture(params=[FTSERVE, TF_SERVING])
def server_kind(request: pytest.FixtureRequest) -> str:
    skip_without_tf_serving(request.param)
    return str(request.param)


@pytest.fixture(scope="package")
def winding_down() -> Iterator[WindingDown]:
    """Where a test's own servers go when it is done: signalled, waited for at the end."""
    servers = WindingDown()
    yield servers
    servers.wait_all()


@pytest.fixture
def start_server(tmp_path: Path, winding_down: WindingDown) -> Iterator:
    """``start_server(kind, flags)`` → a running ``ServerProcess``; all stopped afterwards."""
    started: list[ServerProcess] = []

    def start(kind: str, flags: list[str]) -> ServerProcess:
        server = ServerProcess(kind, flags, tmp_path / f"{kind}-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        winding_down.add(server)


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
