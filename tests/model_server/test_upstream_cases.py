"""TensorFlow Serving's own server tests and README quick start, against both servers.

``half_plus_two`` (``y = 0.5 * x + 2``) in TF2 and TF1 form, served from the zero-padded
version folder ``00000123`` as TensorFlow Serving's test data and Docker quick start do:
the TF2 form with the quick start's flags, the TF1 form by the shared ``upstream`` server
(``server_fixtures``).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

from tests.model_server.conftest import FTSERVE, TF_SERVING, ServerProcess
from tests.model_server.server_fixtures import HALF_PLUS_TWO, skip_without_tf_serving, x_request

MODEL = HALF_PLUS_TWO
BAD_CONFIG_MESSAGE = "Error parsing text-format tensorflow.serving.ModelServerConfig"


@pytest.fixture
def server(half_plus_two_server: ServerProcess) -> ServerProcess:
    """A server of each kind serving ``half_plus_two`` in each form."""
    return half_plus_two_server


# -- the README quick start -----------------------------------------------------------------


def test_rest_predict_on_flat_instances_is_the_quick_start_answer(server: ServerProcess):
    response = server.http.post(f"/v1/models/{MODEL}:predict", json={"instances": [1.0, 2.0, 5.0]})

    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_rest_predict_columnar_inputs(server: ServerProcess):
    response = server.http.post(f"/v1/models/{MODEL}:predict", json={"inputs": [2.0, 3.0, 4.0]})

    assert response.status_code == 200, response.text
    assert response.json() == {"outputs": [3.0, 3.5, 4.0]}


def test_grpc_predict_on_a_flat_tensor(server: ServerProcess):
    response = server.predict_stub.Predict(x_request(MODEL, [1.0, 2.0, 5.0], [3]), timeout=10)

    y = response.outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in y.tensor_shape.dim] == [3]
    np.testing.assert_array_equal(tf.make_ndarray(y), np.array([2.5, 3.0, 4.5], np.float32))
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def test_grpc_predict_one_value_with_output_filter(server: ServerProcess):
    request = x_request(MODEL, [2.0], [1])
    request.output_filter.append("y")

    response = server.predict_stub.Predict(request, timeout=10)

    assert list(response.outputs["y"].float_val) == [3.0]


def test_input_tensorflow_cannot_use_is_invalid_argument(server: ServerProcess):
    """Parsing tf.Examples needs a vector; a matrix fails in TensorFlow, not before it."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "regress_x_to_y"
    request.inputs["inputs"].CopyFrom(
        tf.make_tensor_proto([b"", b""], dtype=tf.string, shape=[1, 2])
    )

    with pytest.raises(grpc.RpcError) as info:
        server.predict_stub.Predict(request, timeout=10)

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- upstream testGetModelStatus / testGetStatusREST / testGetModelMetadata(REST) -----------


def test_get_model_status(server: ServerProcess):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL

    result = server.model_stub.GetModelStatus(request, timeout=10)

    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


def test_get_status_rest(server: ServerProcess):
    response = server.http.get(f"/v1/models/{MODEL}")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def test_get_model_metadata(server: ServerProcess):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    request.metadata_field.append("signature_def")

    result = server.predict_stub.GetModelMetadata(request, timeout=10)

    assert result.model_spec.name == MODEL
    assert result.model_spec.version.value == 123
    assert list(result.metadata) == ["signature_def"]


def test_get_model_metadata_rest(server: ServerProcess):
    response = server.http.get(f"/v1/models/{MODEL}/metadata")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": "123"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) >= {
        "serving_default",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
        "classify_x_to_y",
    }
    predict = signatures["serving_default"]
    assert predict["method_name"] == "tensorflow/serving/predict"
    assert set(predict["inputs"]) == {"x"} and set(predict["outputs"]) == {"y"}
    assert predict["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert predict["outputs"]["y"]["dtype"] == "DT_FLOAT"


# -- upstream testBadModelConfig -------------------------------------------------------------


@pytest.mark.parametrize("kind", [FTSERVE, TF_SERVING])
def test_unparsable_model_config_is_reported_in_tf_serving_words(kind: str, tmp_path: Path):
    skip_without_tf_serving(kind)
    config = tmp_path / "bad_model_config.txt"
    config.write_text("improperly formatted file\n")
    server = ServerProcess(kind, [f"--model_config_file={config}"], tmp_path / "server.log")
    try:
        server.process.wait(timeout=60)
    finally:
        server.stop(timeout=10)

    assert server.process.returncode != 0
    assert BAD_CONFIG_MESSAGE in server.log_path.read_text(errors="replace")
