"""Model server processes for these tests, and the servers that test files share.

A start costs seconds, so tests that only ask a server questions borrow a shared one
(``SharedServer.borrow``); tests that reload, relabel or kill a server, or test a flag,
start their own (``start_server`` in ``conftest``). A shared server starts when the first
test needs it, whichever file that is, and runs until the package is done:

- ``upstream``: one model config with TensorFlow Serving's TF1 test models and the models its
  tests export (test_upstream_more, test_session_loader, and the TF1 cases of test_inference
  and test_upstream_cases);
- ``half_plus_two-tf2``: the TF2 ``half_plus_two``, started the way the Docker quick start
  starts it, with ``--model_name`` (the TF2 cases of test_inference and test_upstream_cases);
- ``shapes``: the trained model in two versions with ``stable`` on version 1, and a model
  under a latest-two policy, with Prometheus metrics (test_compat, test_image_limits, and a
  start-up test each of test_labels and test_lifecycle).

``conftest`` re-exports the fixtures here for pytest to find.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from service.model_server.servable import WARMUP_PATH
from tests.support import servers
from tests.support.servers import MODEL, SharedServer, SharedServers, add_version
from tests.support.tf_serving_models import VERSION, VERSION_DIR, write_upstream_exports
from tests.support.trained import Template

TF_SERVING = "tensorflow_model_server"
NO_TF_SERVING = (
    "TF_SERVING_BIN is not set: tensorflow_model_server is not on PyPI and its registry image"
    " cannot be pulled here; point TF_SERVING_BIN at the binary to run these against it"
)
# Both servers refuse to start on a config with labels without it: nothing is loaded yet.
ALLOW_LABELS = "--allow_version_labels_for_unavailable_models=true"
# The models of the shared ``upstream`` server; ``default`` is upstream's name for the TF1
# half plus two in most of its cases.
DEFAULT = "default"
HALF_PLUS_TWO = "half_plus_two"
HALF_PLUS_THREE = "half_plus_three"
BROKEN = "half_plus_three_with_a_corrupt_checkpoint"
# The shared ``shapes`` server's second model.
LATEST_TWO = "latest_two"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def skip_without_tf_serving(kind: str) -> None:
    if kind == TF_SERVING and not os.environ.get("TF_SERVING_BIN"):
        pytest.skip(NO_TF_SERVING)


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

    def load_failed(self, model: str, version: int = VERSION) -> bool:
        """Whether ``version`` of ``model`` has been reported with a load error."""
        state = self.status(model).get(version)
        return state is not None and state.status.error_code != 0


# -- model configs and requests -----------------------------------------------------------------


def model_list(models: dict[str, Path]) -> ModelServerConfig:
    """A config serving each model's latest version from its base path."""
    config = ModelServerConfig()
    for name, base_path in models.items():
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, str(base_path), "tensorflow"
    return config


def write_config(path: Path, config: ModelServerConfig) -> None:
    # Whole files only: a server that polls the file must never read half of one.
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text_format.MessageToString(config))
    partial.replace(path)


def two_version_models(root: Path, source: Path) -> ModelServerConfig:
    """Versions 1 and 2 of ``source`` under ``root/repo``, all served, ``stable`` → 1."""
    repo = root / "repo"
    assert add_version(repo, source) == 1
    assert add_version(repo, source) == 2
    config = ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = MODEL, str(repo / MODEL), "tensorflow"
    entry.model_version_policy.all.SetInParent()
    entry.version_labels["stable"] = 1
    return config


def two_version_config(root: Path, source: Path) -> Path:
    """``two_version_models`` in ``root/models.config``; a server on it needs ``ALLOW_LABELS``."""
    config_path = root / "models.config"
    write_config(config_path, two_version_models(root, source))
    return config_path


def x_request(model: str, values: list[float], shape: list[int]) -> predict_pb2.PredictRequest:
    """Predict on the float input ``x`` that the half-plus models take."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values, dtype=tf.float32, shape=shape))
    return request


def write_warmup(version_dir: Path, request: predict_pb2.PredictRequest) -> None:
    """One warmup record replaying ``request``, where TensorFlow Serving looks for it."""
    path = version_dir / WARMUP_PATH
    path.parent.mkdir(exist_ok=True)
    record = prediction_log_pb2.PredictionLog()
    record.predict_log.request.CopyFrom(request)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(record.SerializeToString())


# -- what the shared servers serve --------------------------------------------------------------


@pytest.fixture(scope="package")
def shared_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServers]:
    shared = SharedServers(tmp_path_factory.mktemp("shared-servers"))
    yield shared
    shared.stop_all()


@pytest.fixture(scope="package")
def half_plus_three_copies(
    half_plus_three_tf1: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """``half_plus_three`` with a warmup record, and ``BROKEN``: a garbage checkpoint index."""
    root = tmp_path_factory.mktemp("half-plus-three")
    warm = root / HALF_PLUS_THREE
    shutil.copytree(half_plus_three_tf1, warm)
    write_warmup(warm / VERSION_DIR, x_request(HALF_PLUS_THREE, [1.0], [1]))
    broken = root / BROKEN
    shutil.copytree(half_plus_three_tf1, broken)
    (broken / VERSION_DIR / "variables" / "variables.index").write_bytes(b"not an index")
    return {HALF_PLUS_THREE: warm, BROKEN: broken}


@pytest.fixture(scope="package")
def upstream_models(
    half_plus_two_tf1: Path,
    half_plus_three_copies: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """Every model of the ``upstream`` server: base paths by name."""
    return {
        DEFAULT: half_plus_two_tf1,
        HALF_PLUS_TWO: half_plus_two_tf1,
        **half_plus_three_copies,
        **write_upstream_exports(tmp_path_factory.mktemp("upstream-exports")),
    }


@pytest.fixture(scope="package")
def shapes_flags(tmp_path_factory: pytest.TempPathFactory, template: Template) -> list[str]:
    """The ``shapes`` server's flags: its model config, Prometheus metrics, ``ALLOW_LABELS``.

    ``MODEL`` as ``two_version_models`` has it, and ``LATEST_TWO``: three versions, of which
    a latest-two policy serves 2 and 3.
    """
    root = tmp_path_factory.mktemp("shapes-models")
    config = two_version_models(root, template.version_dir)
    for _ in range(3):
        add_version(root / "repo", template.version_dir, model=LATEST_TWO)
    entry = config.model_config_list.config.add()
    entry.name, entry.model_platform = LATEST_TWO, "tensorflow"
    entry.base_path = str(root / "repo" / LATEST_TWO)
    entry.model_version_policy.latest.num_versions = 2
    write_config(root / "models.config", config)
    monitoring = root / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{PROMETHEUS_PATH}" }}')
    return [
        f"--model_config_file={root / 'models.config'}",
        f"--monitoring_config_file={monitoring}",
        ALLOW_LABELS,
    ]


# -- the shared servers ---------------------------------------------------------------------------


def upstream(shared: SharedServers, kind: str, models: dict[str, Path]) -> SharedServer:
    """The ``upstream`` server of ``kind``: every model of ``models`` from one config file."""
    skip_without_tf_serving(kind)

    def make(log_path: Path) -> ServerProcess:
        config = log_path.with_suffix(".config")
        write_config(config, model_list(models))
        return ServerProcess(kind, [f"--model_config_file={config}"], log_path)

    def ready(server: ServerProcess) -> None:
        for name in models:
            if name != BROKEN:
                server.wait_for_version(VERSION, name)
        server.wait_until(lambda: server.load_failed(BROKEN), f"{BROKEN} to fail")

    return shared.get(f"upstream-{kind}", make, ready)


def quick_start_tf2(shared: SharedServers, kind: str, base_path: Path) -> SharedServer:
    """The TF2 ``half_plus_two`` at ``base_path``, served the Docker quick start's way."""
    skip_without_tf_serving(kind)
    flags = [f"--model_name={HALF_PLUS_TWO}", f"--model_base_path={base_path}"]
    return shared.get(
        f"half_plus_two-tf2-{kind}",
        lambda log_path: ServerProcess(kind, flags, log_path),
        lambda server: server.wait_for_version(VERSION, HALF_PLUS_TWO),
    )


def shapes(shared: SharedServers, kind: str, flags: list[str]) -> SharedServer:
    """The ``shapes`` server of ``kind``, started with ``shapes_flags``."""
    skip_without_tf_serving(kind)

    def ready(server: ServerProcess) -> None:
        for model, versions in ((MODEL, (1, 2)), (LATEST_TWO, (2, 3))):
            for version in versions:
                server.wait_for_version(version, model)

    return shared.get(
        f"shapes-{kind}", lambda log_path: ServerProcess(kind, flags, log_path), ready
    )


@pytest.fixture
def upstream_server(
    server_kind: str, shared_servers: SharedServers, upstream_models: dict[str, Path]
) -> Iterator[ServerProcess]:
    """The shared ``upstream`` server of each kind."""
    with upstream(shared_servers, server_kind, upstream_models).borrow() as server:
        yield server


@pytest.fixture(params=["tf2", "tf1"])
def half_plus_two_server(
    request: pytest.FixtureRequest, server_kind: str, shared_servers: SharedServers
) -> Iterator[ServerProcess]:
    """A server of each kind with ``half_plus_two`` in each form (TF1: the upstream server)."""
    if request.param == "tf1":
        models = request.getfixturevalue("upstream_models")
        shared = upstream(shared_servers, server_kind, models)
    else:
        base_path = request.getfixturevalue("half_plus_two_tf2")
        shared = quick_start_tf2(shared_servers, server_kind, base_path)
    with shared.borrow() as server:
        yield server


@pytest.fixture
def shapes_server(
    server_kind: str, shared_servers: SharedServers, shapes_flags: list[str]
) -> Iterator[ServerProcess]:
    """The shared ``shapes`` server of each kind."""
    with shapes(shared_servers, server_kind, shapes_flags).borrow() as server:
        yield server
