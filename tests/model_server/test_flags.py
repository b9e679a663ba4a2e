"""Every TensorFlow Serving 2.21 flag, on a real ``ftserve model-server`` process.

One server takes every flag except ``--version`` and the TLS group (``test_tls.py``) at once
and must still serve; the tests then check what the flags that work here do.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from service.model_server.options import NO_EFFECT_FLAGS
from tests.model_server.conftest import FTSERVE, ServerProcess
from tests.model_server.tiny_repo import K
from tests.model_server.upstream_flags import (
    GIVEN_BY_SERVER_PROCESS,
    MODEL_CONFIG_GROUP,
    TLS_GROUP,
    UPSTREAM_FLAGS,
)
from tests.support.servers import ROOT, WindingDown, tf_python

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
MODEL = "m"
# The tiny model again, its signature's method_name changed to one Predict does not take.
ODD_MODEL = "odd"
ODD_METHOD = "tensorflow/serving/custom"
CORS_HEADERS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "POST, GET",
    "access-control-allow-headers": "Content-Type",
}


def flag_values(names: tuple[str, ...], files: dict[str, str]) -> list[str]:
    return [f"--{name}={UPSTREAM_FLAGS[name].format(**files)}" for name in names]


def odd_method_copy(source: Path, target: Path) -> None:
    shutil.copytree(source, target)
    graph = target / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(graph.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def["serving_default"].method_name = ODD_METHOD
    graph.write_bytes(saved_model.SerializeToString())


def model_config(root: Path, saved_model: Path) -> Path:
    shutil.copytree(saved_model, root / MODEL / "1")
    odd_method_copy(saved_model, root / ODD_MODEL / "1")
    config = ModelServerConfig()
    for name in (MODEL, ODD_MODEL):
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, str(root / name), "tensorflow"
    path = root / "models.config"
    path.write_text(text_format.MessageToString(config))
    return path


def x_request(model: str) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0]], dtype=tf.float32))
    return request


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    # A unix socket path must stay short (108 bytes); pytest's tmp paths may not.
    path = Path(tempfile.mkdtemp(prefix="ftsock"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    saved_model: Path,
    socket_dir: Path,
    winding_down: WindingDown,
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("all-flags")
    files = {
        "grpc_socket_path": str(socket_dir / "grpc.sock"),
        "model_config_file": str(model_config(root / "models", saved_model)),
        "batching_parameters_file": str(root / "batching.config"),
        "monitoring_config_file": str(root / "monitoring.config"),
        "tensorflow_session_config_file": str(root / "session.config"),
        "platform_config_file": str(root / "platform.config"),
        "thread_pool_factory_config_file": str(root / "thread_pool.config"),
    }
    (root / "batching.config").write_text("max_batch_size { value: 8 }\n")
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    (root / "session.config").write_text(
        "intra_op_parallelism_threads: 3\nallow_soft_placement: true\n"
    )
    server = ServerProcess(FTSERVE, flag_values(MODEL_CONFIG_GROUP, files), root / "server.log")
    for name in (MODEL, ODD_MODEL):
        server.wait_until(
            lambda name=name: server.status(name)[1].state == AVAILABLE, f"{name} AVAILABLE"
        )
    yield server
    winding_down.add(server)


def test_flag_groups_cover_every_upstream_flag_once():
    groups = [*GIVEN_BY_SERVER_PROCESS, *MODEL_CONFIG_GROUP, *TLS_GROUP, "version"]

    assert sorted(groups) == sorted(UPSTREAM_FLAGS)
    assert len(UPSTREAM_FLAGS) == 48


def test_server_given_every_flag_serves_over_tcp(server: ServerProcess):
    response = server.predict_stub.Predict(x_request(MODEL), timeout=30)

    assert server.status(MODEL)[1].state == AVAILABLE
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [[K, 2 * K]])


def test_every_no_effect_flag_logs_one_line_saying_why(server: ServerProcess):
    log = server.log_path.read_text()

    for name in NO_EFFECT_FLAGS:
        assert log.count(f"--{name} has no effect") == 1, name
    assert log.count(": --per_process_gpu_memory_fraction has no effect: this server runs on")
    assert (
        "--prefer_tflite_model has no effect: this server serves TensorFlow SavedModels,"
        " never TensorFlow Lite models\n"
    ) in log


def test_thread_flags_win_over_the_session_config_file(server: ServerProcess):
    log = server.log_path.read_text()

    assert "TensorFlow threads: intra-op 2, inter-op 1 (0: TensorFlow's choice)" in log
    assert (
        "--tensorflow_session_config_file: allow_soft_placement has no effect: only the thread"
        " counts apply to this server"
    ) in log


def test_grpc_socket_path_serves_predict_and_model_status(server: ServerProcess, socket_dir: Path):
    with grpc.insecure_channel(f"unix:{socket_dir / 'grpc.sock'}") as channel:
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = MODEL
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            status_request, timeout=10
        )
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            x_request(MODEL), timeout=30
        )

    assert [(s.version, s.state) for s in status.model_version_status] == [(1, AVAILABLE)]
    np.testing.assert_allclose(tf.make_ndarray(predict.outputs["y"]), [[K, 2 * K]])


def test_method_name_check_refuses_a_signature_that_is_not_predict(server: ServerProcess):
    with pytest.raises(grpc.RpcError) as refused:
        server.predict_stub.Predict(x_request(ODD_MODEL), timeout=30)

    assert refused.value.code() == grpc.StatusCode.INTERNAL
    assert refused.value.details() == (
        "Expected prediction signature method_name to be one of {tensorflow/serving/predict,"
        f" tensorflow/serving/classify, tensorflow/serving/regress}}. Was: {ODD_METHOD}"
    )


def test_cors_headers_on_every_rest_response(server: ServerProcess):
    response = server.http.get(f"/v1/models/{MODEL}")

    assert response.status_code == 200
    assert {name: response.headers[name] for name in CORS_HEADERS} == CORS_HEADERS


def test_cors_preflight_with_an_origin_is_answered(server: ServerProcess):
    response = server.http.options(
        f"/v1/models/{MODEL}:predict", headers={"Origin": "https://example.com"}
    )

    assert response.status_code == 200
    assert response.content == b""
    assert {name: response.headers[name] for name in CORS_HEADERS} == CORS_HEADERS


def test_cors_preflight_without_an_origin_is_refused(server: ServerProcess):
    response = server.http.options(f"/v1/models/{MODEL}:predict")

    assert response.status_code == 400
    assert response.json() == {"error": "Origin header is missing in CORS preflight"}
    assert response.headers["access-control-allow-origin"] == "*"


def test_version_prints_both_versions_and_exits_zero():
    done = subprocess.run(
        [tf_python(), "-m", "service.cli", "model-server", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"TensorFlow ModelServer: ftserve 0.1.0\nTensorFlow Library: {tf.__version__}\n"
    )
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", tf.__version__)
