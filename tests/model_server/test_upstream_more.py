"""The rest of TensorFlow Serving's ``tensorflow_model_server_test.py``, against both servers.

Upstream starts one server per case and names its model ``default``; here one model config
file serves all the models of the prediction cases at once (upstream's ``good_model_config``
models, and the four it exports with TF and Keras), and three more servers cover batching
with gRPC channel arguments and the two ways a new model list arrives. Requests and
expected answers are upstream's: ``x = 2.0`` in, ``y`` out, every model at version 123.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import model_management_pb2, predict_pb2
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from tests.model_server.conftest import FTSERVE, NO_TF_SERVING, TF_SERVING, ServerProcess
from tests.support.servers import ROOT
from tests.support.tf_serving_models import VERSION, VERSION_DIR

KINDS = [FTSERVE, TF_SERVING]
DEFAULT = "default"
HALF_PLUS_TWO = "half_plus_two"
HALF_PLUS_THREE = "half_plus_three"
SAVED = "tf_saved_model_save"
SAVED_TWO_SIGNATURES = "tf_saved_model_save_multiple_signatures"
KERAS = "sequential_keras_saved_model_save"
KERAS_MIRRORED = "distrat_sequential_keras_saved_model_save"
SERVING_DEFAULT = "serving_default"
CUSTOM_SIGNATURE = "custom_signature_key"
# Upstream's batching_config.txt and testGoodGrpcChannelArgs' arguments.
BATCHING_PARAMETERS = """\
max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
"""
CHANNEL_ARGUMENTS = "grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb"
UNSUPPORTED_RELOAD = (
    "ServerModelConfig type not supported by HandleReloadConfigRequest."
    " Only ModelConfigList is currently supported"
)


# -- the models upstream exports inside its tests --------------------------------------------


def write_checkpoint_root(base_path: Path) -> None:
    """test_tf_saved_model_save: ``y = v1 * v2 * x`` on a ``tf.train.Checkpoint`` root."""
    root = tf.train.Checkpoint()
    root.v1, root.v2 = tf.Variable(3.0), tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    signature = root.f.get_concrete_function(tf.TensorSpec(None, tf.float32))
    tf.saved_model.save(root, str(base_path / VERSION_DIR), signatures=signature)


def write_two_signatures(base_path: Path) -> None:
    """test_tf_saved_model_save_multiple_signatures: ``y`` is 1 by default, 2 by the other."""
    any_x = [tf.TensorSpec(None, tf.float32)]
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.0}, input_signature=any_x)
    root.g = tf.function(lambda x: {"y": 2.0}, input_signature=any_x)
    signatures = {SERVING_DEFAULT: root.f, CUSTOM_SIGNATURE: root.g}
    tf.saved_model.save(root, str(base_path / VERSION_DIR), signatures=signatures)


def sequential(with_dense: bool) -> tf.keras.Model:
    """Input ``x``, an optional ``Dense(1)`` with weight 1 and bias 0, identity ``y``."""
    model = tf.keras.Sequential([tf.keras.layers.Input(shape=(1,), dtype="float32", name="x")])
    if with_dense:
        model.add(tf.keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros"))
    model.add(tf.keras.layers.Lambda(lambda x: x, name="y"))
    return model


def save_keras(model: tf.keras.Model, base_path: Path) -> None:
    # Keras 2, which upstream ran, named the default signature's tensors after the Input and
    # the last layer (``x``, ``y``); Keras 3 names them ``inputs`` and ``output_0``. The
    # explicit signature gives the SavedModel the names upstream's request uses.
    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": model(x)}

    tf.saved_model.save(model, str(base_path / VERSION_DIR), signatures=serve)


def write_mirrored_keras(base_path: Path) -> None:
    """test_distrat_sequential_keras_saved_model_save: built under a two-CPU MirroredStrategy.

    Splitting the CPU into two logical devices must happen before TensorFlow's runtime
    starts, so this runs in a fresh interpreter (``mirrored_keras_in_a_fresh_process``).
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    with tf.distribute.MirroredStrategy(devices=["/cpu:0", "/cpu:1"]).scope():
        model = sequential(with_dense=True)
    save_keras(model, base_path)


def mirrored_keras_in_a_fresh_process(base_path: Path) -> None:
    code = (
        f"import sys, pathlib; from {__name__} import write_mirrored_keras;"
        " write_mirrored_keras(pathlib.Path(sys.argv[1]))"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(base_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def model_paths(
    half_plus_two_tf1: Path, half_plus_three_tf1: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Every prediction case's model by name; upstream's ``default`` is the TF1 half plus two."""
    root = tmp_path_factory.mktemp("upstream-exports")
    built = {SAVED: root / SAVED, SAVED_TWO_SIGNATURES: root / SAVED_TWO_SIGNATURES}
    write_checkpoint_root(built[SAVED])
    write_two_signatures(built[SAVED_TWO_SIGNATURES])
    built[KERAS] = root / KERAS
    save_keras(sequential(with_dense=False), built[KERAS])
    built[KERAS_MIRRORED] = root / KERAS_MIRRORED
    mirrored_keras_in_a_fresh_process(built[KERAS_MIRRORED])
    return {
        DEFAULT: half_plus_two_tf1,
        HALF_PLUS_TWO: half_plus_two_tf1,
        HALF_PLUS_THREE: half_plus_three_tf1,
        **built,
    }


# -- servers -----------------------------------------------------------------------------------


def model_list(models: dict[str, Path]) -> ModelServerConfig:
    config = ModelServerConfig()
    for name, base_path in models.items():
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, str(base_path), "tensorflow"
    return config


def write_config(path: Path, models: dict[str, Path]) -> None:
    # Whole files only: a polling server must never read half of one.
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text_format.MessageToString(model_list(models)))
    partial.replace(path)


def start(kind: str, flags: list[str], log_dir: Path, models: list[str]) -> ServerProcess:
    if kind == TF_SERVING and not os.environ.get("TF_SERVING_BIN"):
        pytest.skip(NO_TF_SERVING)
    server = ServerProcess(kind, flags, log_dir / "server.log")
    for name in models:
        server.wait_for_version(VERSION, name)
    return server


@pytest.fixture(scope="module", params=KINDS)
def config_server(
    request: pytest.FixtureRequest,
    model_paths: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
):
    """Upstream's good_model_config, the exported models added to it."""
    root = tmp_path_factory.mktemp(f"good-config-{request.param}")
    write_config(root / "good_model_config.conf", model_paths)
    flags = [f"--model_config_file={root / 'good_model_config.conf'}"]
    server = start(request.param, flags, root, list(model_paths))
    yield server
    server.stop()


@pytest.fixture(scope="module", params=KINDS)
def batching_server(
    request: pytest.FixtureRequest,
    half_plus_two_tf1: Path,
    tmp_path_factory: pytest.TempPathFactory,
):
    """``default`` half plus two with upstream's batching parameters and channel arguments."""
    root = tmp_path_factory.mktemp(f"batching-{request.param}")
    (root / "batching_config.txt").write_text(BATCHING_PARAMETERS)
    flags = [
        f"--model_name={DEFAULT}",
        f"--model_base_path={half_plus_two_tf1}",
        "--enable_batching",
        f"--batching_parameters_file={root / 'batching_config.txt'}",
        f"--grpc_channel_arguments={CHANNEL_ARGUMENTS}",
    ]
    server = start(request.param, flags, root, [DEFAULT])
    yield server
    server.stop()


def reload_server(
    kind: str, poll_seconds: int, models: dict[str, Path], root: Path
) -> tuple[ServerProcess, Path]:
    config = root / "model_config.txt"
    write_config(config, {HALF_PLUS_TWO: models[HALF_PLUS_TWO]})
    flags = [
        f"--model_config_file={config}",
        f"--model_config_file_poll_wait_seconds={poll_seconds}",
    ]
    return start(kind, flags, root, [HALF_PLUS_TWO]), config


@pytest.fixture(scope="module", params=KINDS)
def polled_server(
    request: pytest.FixtureRequest,
    model_paths: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
):
    """half_plus_two from a config file read again every second; yields (server, file)."""
    root = tmp_path_factory.mktemp(f"polled-{request.param}")
    server, config = reload_server(request.param, 1, model_paths, root)
    yield server, config
    server.stop()


@pytest.fixture(scope="module", params=KINDS)
def unpolled_server(
    request: pytest.FixtureRequest,
    model_paths: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
):
    """half_plus_two from a config file that is never read again; yields (server, file)."""
    root = tmp_path_factory.mktemp(f"unpolled-{request.param}")
    server, config = reload_server(request.param, 0, model_paths, root)
    yield server, config
    server.stop()


# -- upstream's VerifyPredictRequest ---------------------------------------------------------


def verify_predict(
    server: ServerProcess,
    model: str,
    expected: float,
    signature: str = SERVING_DEFAULT,
    specify_output: bool = True,
    batch_input: bool = False,
) -> None:
    """Predict on ``x = 2.0`` (shape [1], or [1, 1] as a batch) and check ``y`` and the spec."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    shape = [1, 1] if batch_input else [1]
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], dtype=tf.float32, shape=shape))
    if specify_output:
        request.output_filter.append("y")

    response = server.predict_stub.Predict(request, timeout=20)

    assert "y" in response.outputs
    assert response.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(response.outputs["y"].float_val) == [expected]
    assert response.model_spec.name == model
    assert response.model_spec.signature_name == signature
    assert response.model_spec.version.value == VERSION


def predict_fails(server: ServerProcess, model: str) -> grpc.StatusCode | None:
    """The status of a Predict on ``model``, or None when it answers."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], dtype=tf.float32, shape=[1]))
    try:
        server.predict_stub.Predict(request, timeout=20)
    except grpc.RpcError as error:
        return error.code()
    return None


def wait_until_gone(server: ServerProcess, model: str) -> None:
    server.wait_until(
        lambda: predict_fails(server, model) == grpc.StatusCode.NOT_FOUND, f"{model} unloaded"
    )


# -- testPredictSavedModel, testGoodGrpcChannelArgs -------------------------------------------


def test_predict_saved_model(config_server: ServerProcess):
    verify_predict(config_server, DEFAULT, 3.0)
    verify_predict(config_server, DEFAULT, 3.0, specify_output=False)


def test_predict_saved_model_with_batching(batching_server: ServerProcess):
    verify_predict(batching_server, DEFAULT, 3.0)
    verify_predict(batching_server, DEFAULT, 3.0, specify_output=False)


def test_good_grpc_channel_arguments_still_serve(batching_server: ServerProcess):
    # max_connection_age_ms=2000: the connection the fixture opened has been aged out since.
    time.sleep(2.5)
    verify_predict(batching_server, DEFAULT, 3.0, specify_output=False)


# -- testGoodModelConfig ---------------------------------------------------------------------


@pytest.mark.parametrize(("model", "expected"), [(HALF_PLUS_TWO, 3.0), (HALF_PLUS_THREE, 4.0)])
def test_good_model_config_serves_every_model(
    config_server: ServerProcess, model: str, expected: float
):
    verify_predict(config_server, model, expected)
    verify_predict(config_server, model, expected, specify_output=False)


# -- models saved with tf.saved_model.save and Keras -----------------------------------------


def test_tf_saved_model_save(config_server: ServerProcess):
    verify_predict(config_server, SAVED, 12.0, specify_output=False)


def test_tf_saved_model_save_multiple_signatures(config_server: ServerProcess):
    verify_predict(config_server, SAVED_TWO_SIGNATURES, 2.0, signature=CUSTOM_SIGNATURE)
    verify_predict(config_server, SAVED_TWO_SIGNATURES, 1.0)


@pytest.mark.parametrize("model", [KERAS, KERAS_MIRRORED])
def test_sequential_keras_saved_model_save(config_server: ServerProcess, model: str):
    verify_predict(config_server, model, 2.0, specify_output=False, batch_input=True)


# -- testModelConfigReload, testModelConfigReloadWithZeroPollPeriod ---------------------------


def test_model_config_reload_from_the_polled_file(polled_server, model_paths):
    server, config = polled_server
    verify_predict(server, HALF_PLUS_TWO, 3.0, specify_output=False)

    write_config(config, {HALF_PLUS_THREE: model_paths[HALF_PLUS_THREE]})

    # Upstream sleeps ten seconds; a busy machine gets until the load is seen.
    server.wait_for_version(VERSION, HALF_PLUS_THREE)
    verify_predict(server, HALF_PLUS_THREE, 4.0, specify_output=False)
    wait_until_gone(server, HALF_PLUS_TWO)


def test_zero_poll_period_keeps_the_config_until_reload_config_request(
    unpolled_server, model_paths
):
    server, config = unpolled_server
    verify_predict(server, HALF_PLUS_TWO, 3.0, specify_output=False)
    three = {HALF_PLUS_THREE: model_paths[HALF_PLUS_THREE]}
    write_config(config, three)

    time.sleep(2)  # upstream's wait: the poll period plus one second

    verify_predict(server, HALF_PLUS_TWO, 3.0, specify_output=False)
    assert predict_fails(server, HALF_PLUS_THREE) == grpc.StatusCode.NOT_FOUND

    request = model_management_pb2.ReloadConfigRequest(config=model_list(three))
    response = server.model_stub.HandleReloadConfigRequest(request, timeout=120)

    assert response.status.error_code == 0
    assert response.status.error_message == ""
    verify_predict(server, HALF_PLUS_THREE, 4.0, specify_output=False)
    wait_until_gone(server, HALF_PLUS_TWO)


def test_reload_config_request_without_a_model_list_is_invalid_argument(
    unpolled_server, model_paths
):
    """HandleReloadConfigRequest only takes a ModelConfigList (model_service_impl.cc)."""
    server, _ = unpolled_server
    two = model_list({HALF_PLUS_TWO: model_paths[HALF_PLUS_TWO]})
    reload = server.model_stub.HandleReloadConfigRequest
    reload(model_management_pb2.ReloadConfigRequest(config=two), timeout=120)
    server.wait_for_version(VERSION, HALF_PLUS_TWO)
    try:
        with pytest.raises(grpc.RpcError) as error:
            reload(model_management_pb2.ReloadConfigRequest(), timeout=120)

        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details() == UNSUPPORTED_RELOAD
        verify_predict(server, HALF_PLUS_TWO, 3.0, specify_output=False)
    finally:
        reload(model_management_pb2.ReloadConfigRequest(config=two), timeout=120)


# -- testGetModelMetadataREST ----------------------------------------------------------------


def tensor_info(name: str, dtype: str, dims: list[int] | None) -> dict:
    """A TensorInfo as TF Serving's REST API prints it; ``dims=None``: unknown rank."""
    shape = {
        "dim": [{"size": str(size), "name": ""} for size in dims or []],
        "unknown_rank": dims is None,
    }
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def signature_def(method: str, inputs: dict, outputs: dict) -> dict:
    return {
        "inputs": inputs,
        "outputs": outputs,
        "method_name": f"tensorflow/serving/{method}",
        "defaults": {},
    }


def test_get_model_metadata_rest(config_server: ServerProcess):
    response = config_server.http.get(f"/v1/models/{DEFAULT}/metadata")

    assert response.status_code == 200, response.text
    column = [-1, 1]
    # Upstream's export left the tf_example placeholder without a shape, printed as
    # {"dim": [], "unknown_rank": true}; write_half_plus_two_tf1 gives it shape [None].
    examples = {"inputs": tensor_info("tf_example:0", "DT_STRING", [-1])}
    assert response.json() == {
        "model_spec": {"name": DEFAULT, "signature_name": "", "version": str(VERSION)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "regress_x2_to_y3": signature_def(
                        "regress",
                        {"inputs": tensor_info("x2:0", "DT_FLOAT", column)},
                        {"outputs": tensor_info("y3:0", "DT_FLOAT", column)},
                    ),
                    SERVING_DEFAULT: signature_def(
                        "predict",
                        {"x": tensor_info("x:0", "DT_FLOAT", column)},
                        {"y": tensor_info("y:0", "DT_FLOAT", column)},
                    ),
                    "classify_x_to_y": signature_def(
                        "classify", examples, {"scores": tensor_info("y:0", "DT_FLOAT", column)}
                    ),
                    "regress_x_to_y2": signature_def(
                        "regress", examples, {"outputs": tensor_info("y2:0", "DT_FLOAT", column)}
                    ),
                    "regress_x_to_y": signature_def(
                        "regress", examples, {"outputs": tensor_info("y:0", "DT_FLOAT", column)}
                    ),
                }
            }
        },
    }
