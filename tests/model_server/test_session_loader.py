"""TF1 exports that only a session loader serves: upstream's ``saved_model_half_plus_three``.

``tf.saved_model.load`` cannot rebuild its TF 1.0 graph; TensorFlow Serving serves it from
a session, and so does ``ftserve model-server``. One server for the module serves it, with
a warmup record, beside a copy whose checkpoint index is garbage.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_log_pb2
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from service.model_server.manager import load_servable, open_servable
from service.model_server.servable import WARMUP_PATH, FunctionServable, LoadError
from service.model_server.session_servable import SessionServable
from service.model_server.status import ServingError
from tests.model_server.conftest import FTSERVE, NO_TF_SERVING, TF_SERVING, ServerProcess
from tests.support.tf_serving_models import VERSION, VERSION_DIR

MODEL = "half_plus_three"
BROKEN = "half_plus_three_with_a_corrupt_checkpoint"
REPORTED_ERROR = "Shape must be rank 1 but is rank 0 for '{{node ParseExample}}"
PREDICT = "tensorflow/serving/predict"


def x_request(values: list[float], shape: list[int], model: str = MODEL):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values, dtype=tf.float32, shape=shape))
    return request


def example(x: float) -> bytes:
    feature = tf.train.Feature(float_list=tf.train.FloatList(value=[x]))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature})).SerializeToString()


def write_warmup(version_dir: Path, request: predict_pb2.PredictRequest) -> None:
    path = version_dir / WARMUP_PATH
    path.parent.mkdir(exist_ok=True)
    record = prediction_log_pb2.PredictionLog()
    record.predict_log.request.CopyFrom(request)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(record.SerializeToString())


@pytest.fixture(scope="module")
def models(half_plus_three_tf1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``half_plus_three`` with a warmup record, and a copy with a corrupt checkpoint."""
    root = tmp_path_factory.mktemp("session-models")
    warm = root / MODEL
    shutil.copytree(half_plus_three_tf1, warm)
    write_warmup(warm / VERSION_DIR, x_request([1.0], [1]))
    broken = root / BROKEN
    shutil.copytree(half_plus_three_tf1, broken)
    (broken / VERSION_DIR / "variables" / "variables.index").write_bytes(b"not an index")
    config = ModelServerConfig()
    for name, base in [(MODEL, warm), (BROKEN, broken)]:
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, str(base), "tensorflow"
    (root / "models.config").write_text(text_format.MessageToString(config))
    return root


@pytest.fixture(scope="module", params=[FTSERVE, TF_SERVING])
def server(request: pytest.FixtureRequest, models: Path, tmp_path_factory: pytest.TempPathFactory):
    kind = request.param
    if kind == TF_SERVING and not os.environ.get("TF_SERVING_BIN"):
        pytest.skip(NO_TF_SERVING)
    log = tmp_path_factory.mktemp(f"session-{kind}") / "server.log"
    process = ServerProcess(kind, [f"--model_config_file={models / 'models.config'}"], log)
    process.wait_for_version(VERSION, MODEL)
    process.wait_until(lambda: broken_version_failed(process), f"{BROKEN} to fail")
    yield process
    process.stop()


def broken_version_failed(process: ServerProcess) -> bool:
    state = process.status(BROKEN).get(VERSION)
    return state is not None and state.status.error_code != 0


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


def test_warmup_replays_its_record_on_the_session(models: Path):
    servable = load_servable(MODEL, VERSION, models / MODEL / VERSION_DIR, warmup=False)

    assert isinstance(servable, SessionServable)
    assert servable.warm_up() == 1


def test_session_load_error_is_a_clean_load_error(models: Path):
    path = models / BROKEN / VERSION_DIR

    with pytest.raises(LoadError) as info:
        open_servable(BROKEN, VERSION, path)

    assert str(info.value).startswith(f"cannot load {path}: ")
    assert "\n" not in str(info.value)


# -- in a model server ------------------------------------------------------------------------


def test_grpc_predict_on_a_flat_tensor(server: ServerProcess):
    response = server.predict_stub.Predict(x_request([1.0, 2.0, 5.0], [3]), timeout=10)

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


def test_broken_version_reports_its_load_error(server: ServerProcess, models: Path):
    state = server.status(BROKEN)[VERSION]

    assert state.status.error_code != 0
    if server.kind == FTSERVE:
        path = models / BROKEN / VERSION_DIR
        assert state.status.error_message.startswith(f"cannot load {path}: ")
