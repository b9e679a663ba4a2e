"""TF1 exports that only a session loader serves: upstream's ``saved_model_half_plus_three``.

``tf.saved_model.load`` cannot rebuild its TF 1.0 graph; TensorFlow Serving serves it from
a session, and so does ``ftserve model-server``. The shared ``upstream`` server
(``server_fixtures``) serves it with a warmup record, beside a copy whose checkpoint index
is garbage.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from service.model_server.manager import load_servable, open_servable
from service.model_server.servable import FunctionServable, LoadError
from service.model_server.session_servable import SessionServable
from service.model_server.status import ServingError
from tests.model_server.conftest import FTSERVE, ServerProcess
from tests.model_server.server_fixtures import BROKEN, HALF_PLUS_THREE, x_request
from tests.support.tf_serving_models import VERSION, VERSION_DIR

MODEL = HALF_PLUS_THREE
REPORTED_ERROR = "Shape must be rank 1 but is rank 0 for '{{node ParseExample}}"
PREDICT = "tensorflow/serving/predict"


def example(x: float) -> bytes:
    feature = tf.train.Feature(float_list=tf.train.FloatList(value=[x]))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature})).SerializeToString()


@pytest.fixture
def server(upstream_server: ServerProcess) -> ServerProcess:
    """The shared upstream server of each kind; ``BROKEN`` has failed to load there."""
    return upstream_server


# -- in process -------------------------------------------------------------------------------


def test_tf2_loader_fails_on_half_plus_three_as_reported(half_plus_three_tf1: Path):
    with pytest.raises(ValueError, match=r"Shape must be rank 1 but is rank 0") as info:
        tf.saved_model.load(str(half_plus_three_tf1 / VERSION_DIR), tags=["serve"])

    assert str(info.value).startswith(REPORTED_ERROR)


def test_tf1_exports_load_into_a_session_and_tf2_ones_as_functions(
    half_plus_three_tf1: Path, half_plus_two_tf1: Path, half_plus_two_tf2: Path
):
    def loaded(base: Path) -> type:
        return type(open_servable(base.name, VERSION, base / VERSION_DIR))

    assert loaded(half_plus_three_tf1) is SessionServable
    assert loaded(half_plus_two_tf1) is SessionServable
    assert loaded(half_plus_two_tf2) is FunctionServable


def test_session_servable_runs_predict_and_regress_signatures(half_plus_three_tf1: Path):
    servable = open_servable(MODEL, VERSION, half_plus_three_tf1 / VERSION_DIR)

    predicted = servable.run("serving_default", {"x": np.array([1.0, 2.0, 5.0], np.float32)})
    regressed = servable.run(
        "regress_x_to_y2", {"inputs": np.array([example(1.0), example(2.0)], object)}
    )

    np.testing.assert_array_equal(predicted["y"], np.array([3.5, 4.0, 5.5], np.float32))
    np.testing.assert_array_equal(regressed["outputs"], np.array([[4.5], [5.0]], np.float32))


def test_session_servable_keeps_tensorflows_status_code(half_plus_three_tf1: Path):
    servable = open_servable(MODEL, VERSION, half_plus_three_tf1 / VERSION_DIR)

    with pytest.raises(ServingError) as info:
        servable.run("regress_x_to_y", {"inputs": np.array([[example(1.0)]], object)})

    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected serialized to be a vector, got shape: [1,1]" in info.value.message


def test_warmup_replays_its_record_on_the_session(half_plus_three_copies: dict[str, Path]):
    path = half_plus_three_copies[MODEL] / VERSION_DIR
    servable = load_servable(MODEL, VERSION, path, warmup=False)

    assert isinstance(servable, SessionServable)
    assert servable.warm_up() == 1


def test_session_load_error_is_a_clean_load_error(half_plus_three_copies: dict[str, Path]):
    path = half_plus_three_copies[BROKEN] / VERSION_DIR

    with pytest.raises(LoadError) as info:
        open_servable(BROKEN, VERSION, path)

    assert str(info.value).startswith(f"cannot load {path}: ")
    assert "\n" not in str(info.value)


# -- in a model server ------------------------------------------------------------------------


def test_grpc_predict_on_a_flat_tensor(server: ServerProcess):
    response = server.predict_stub.Predict(x_request(MODEL, [1.0, 2.0, 5.0], [3]), timeout=10)

    y = response.outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in y.tensor_shape.dim] == [3]
    np.testing.assert_array_equal(tf.make_ndarray(y), np.array([3.5, 4.0, 5.5], np.float32))
    assert response.model_spec.version.value == VERSION
    assert response.model_spec.signature_name == "serving_default"


def test_rest_predict(server: ServerProcess):
    response = server.http.post(f"/v1/models/{MODEL}:predict", json={"instances": [1.0, 2.0, 5.0]})

    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [3.5, 4.0, 5.5]}


def test_grpc_get_model_metadata(server: ServerProcess):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    request.metadata_field.append("signature_def")

    result = server.predict_stub.GetModelMetadata(request, timeout=10)

    signatures = get_model_metadata_pb2.SignatureDefMap()
    result.metadata["signature_def"].Unpack(signatures)
    assert result.model_spec.version.value == VERSION
    assert sorted(signatures.signature_def) == [
        "classify_x_to_y",
        "regress_x2_to_y3",
        "regress_x_to_y",
        "regress_x_to_y2",
        "serving_default",
    ]
    predict = signatures.signature_def["serving_default"]
    assert predict.method_name == PREDICT
    assert predict.inputs["x"].name == "x:0"
    assert predict.outputs["y"].name == "y:0"


def test_rest_get_model_metadata(server: ServerProcess):
    response = server.http.get(f"/v1/models/{MODEL}/metadata")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": "123"}
    predict = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert predict == {
        "inputs": {
            "x": {
                "dtype": "DT_FLOAT",
                "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
                    "unknown_rank": False,
                },
                "name": "x:0",
            }
        },
        "outputs": {
            "y": {
                "dtype": "DT_FLOAT",
                "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
                    "unknown_rank": False,
                },
                "name": "y:0",
            }
        },
        "method_name": PREDICT,
        "defaults": {},
    }


def test_broken_version_reports_its_load_error(
    server: ServerProcess, upstream_models: dict[str, Path]
):
    state = server.status(BROKEN)[VERSION]

    assert state.status.error_code != 0
    if server.kind == FTSERVE:
        path = upstream_models[BROKEN] / VERSION_DIR
        assert state.status.error_message.startswith(f"cannot load {path}: ")
