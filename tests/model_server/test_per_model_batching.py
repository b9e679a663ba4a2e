"""``--enable_per_model_batching_parameters``: each version batches on its own terms.

As in TensorFlow Serving (``GetPerModelBatchingParams``): with batching on and the flag set,
a version whose folder holds ``batching_params.pbtxt`` batches with those parameters, and a
version without one is not batched at all; without the flag every version batches with
``--batching_parameters_file``. The server-wide limit here is 8 rows a batch, the own one 2.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from service.model_server.manager import BATCHING_PARAMS_FILE
from tests.model_server.conftest import FTSERVE, ServerProcess
from tests.model_server.tiny_repo import K
from tests.support.servers import WindingDown

END = get_model_status_pb2.ModelVersionStatus.END
OWN = "own"  # a version with its own batching_params.pbtxt
PLAIN = "plain"  # a version without one
UNPARSABLE = "unparsable"  # a version whose own file does not parse


def rows(model: str, count: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    batch = np.tile(np.asarray([[1.0, 2.0]], np.float32), (count, 1))
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(batch))
    return request


def start(root: Path, saved_model: Path, per_model: bool) -> ServerProcess:
    """``OWN`` and ``PLAIN``; with ``per_model``, also ``UNPARSABLE``, whose file is garbage."""
    models = [OWN, PLAIN, UNPARSABLE] if per_model else [OWN, PLAIN]
    config = ModelServerConfig()
    for name in models:
        shutil.copytree(saved_model, root / name / "1")
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, str(root / name), "tensorflow"
    (root / OWN / "1" / BATCHING_PARAMS_FILE).write_text(
        "max_batch_size { value: 2 }\nbatch_timeout_micros { value: 0 }\n"
    )
    if per_model:
        (root / UNPARSABLE / "1" / BATCHING_PARAMS_FILE).write_text("max_batch_size: {{ nonsense")
    (root / "models.config").write_text(text_format.MessageToString(config))
    (root / "batching.config").write_text("max_batch_size { value: 8 }\n")
    flags = [
        f"--model_config_file={root / 'models.config'}",
        "--enable_batching=true",
        f"--batching_parameters_file={root / 'batching.config'}",
        f"--enable_per_model_batching_parameters={str(per_model).lower()}",
    ]
    server = ServerProcess(FTSERVE, flags, root / "server.log")
    server.wait_for_version(1, model=OWN)
    server.wait_for_version(1, model=PLAIN)
    return server


@pytest.fixture(scope="module")
def per_model_server(
    tmp_path_factory: pytest.TempPathFactory, saved_model: Path, winding_down: WindingDown
) -> Iterator[tuple[ServerProcess, Path]]:
    """The server with ``--enable_per_model_batching_parameters``, and its models' folder."""
    root = tmp_path_factory.mktemp("per-model-batching")
    process = start(root, saved_model, per_model=True)
    yield process, root
    winding_down.add(process)


@pytest.fixture(scope="module")
def server_wide_server(
    tmp_path_factory: pytest.TempPathFactory, saved_model: Path, winding_down: WindingDown
) -> Iterator[ServerProcess]:
    process = start(tmp_path_factory.mktemp("server-wide-batching"), saved_model, per_model=False)
    yield process
    winding_down.add(process)


@pytest.fixture(params=[True, False], ids=["per-model", "server-wide"])
def server(request: pytest.FixtureRequest) -> tuple[ServerProcess, bool]:
    """Each of the two servers, and whether it has per-model parameters."""
    if request.param:
        return request.getfixturevalue("per_model_server")[0], True
    return request.getfixturevalue("server_wide_server"), False


def refusal(server: ServerProcess, request: predict_pb2.PredictRequest) -> tuple[object, str]:
    with pytest.raises(grpc.RpcError) as refused:
        server.predict_stub.Predict(request, timeout=30)
    return refused.value.code(), refused.value.details()


def test_a_version_with_its_own_file_batches_with_its_parameters(server):
    process, per_model = server
    answer = process.predict_stub.Predict(rows(OWN, 2), timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(answer.outputs["y"]), [[K, 2 * K]] * 2)
    if per_model:  # its own limit: 2 rows
        assert refusal(process, rows(OWN, 3)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "Task size 3 is larger than maximum input batch size 2",
        )
    else:  # the file is not read: the server-wide 8 rows
        assert (
            len(
                tf.make_ndarray(process.predict_stub.Predict(rows(OWN, 8), timeout=30).outputs["y"])
            )
            == 8
        )


def test_a_version_without_a_file_is_not_batched_with_per_model_parameters(server):
    process, per_model = server
    if per_model:  # not batched at all: no batch-size limit applies
        answer = process.predict_stub.Predict(rows(PLAIN, 20), timeout=30)
        assert tf.make_ndarray(answer.outputs["y"]).shape == (20, 2)
    else:
        assert refusal(process, rows(PLAIN, 20)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "Task size 20 is larger than maximum input batch size 8",
        )


def test_a_file_that_does_not_parse_fails_the_version_s_load(per_model_server):
    process, root = per_model_server

    process.wait_until(lambda: process.status(UNPARSABLE)[1].state == END, "version 1 END")
    message = process.status(UNPARSABLE)[1].status.error_message
    assert f"cannot use {root / UNPARSABLE / '1' / BATCHING_PARAMS_FILE}" in message
