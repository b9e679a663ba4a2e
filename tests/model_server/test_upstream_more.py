"""The rest of TensorFlow Serving's ``tensorflow_model_server_test.py``, against both servers.

Upstream starts one server per case and names its model ``default``; here the shared
``upstream`` server (``server_fixtures``) serves all the models of the prediction cases from
one model config file (upstream's ``good_model_config`` models, and the four it exports with
TF and Keras), and three more servers cover batching with gRPC channel arguments and the two
ways a new model list arrives. Requests and expected answers are upstream's: ``x = 2.0`` in,
``y`` out, every model at version 123.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import model_management_pb2

from tests.model_server.conftest import FTSERVE, TF_SERVING, ServerProcess
from tests.model_server.server_fixtures import (
    DEFAULT,
    HALF_PLUS_THREE,
    HALF_PLUS_TWO,
    model_list,
    skip_without_tf_serving,
    write_config,
    x_request,
)
from tests.support.servers import WindingDown
from tests.support.tf_serving_models import (
    CUSTOM_SIGNATURE,
    KERAS,
    KERAS_MIRRORED,
    SAVED,
    SAVED_TWO_SIGNATURES,
    SERVING_DEFAULT,
    VERSION,
)

KINDS = [FTSERVE, TF_SERVING]
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


# -- servers -----------------------------------------------------------------------------------


@pytest.fixture
def config_server(upstream_server: ServerProcess) -> ServerProcess:
    """Upstream's good_model_config, the exported models added to it: the shared server."""
    return upstream_server


def start(kind: str, flags: list[str], log_dir: Path, models: list[str]) -> ServerProcess:
    skip_without_tf_serving(kind)
    server = ServerProcess(kind, flags, log_dir / "server.log")
    for name in models:
        server.wait_for_version(VERSION, name)
    return server


@pytest.fixture(scope="module", params=KINDS)
def batching_server(
    request: pytest.FixtureRequest,
    half_plus_two_tf1: Path,
    tmp_path_factory: pytest.TempPathFactory,
    winding_down: WindingDown,
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
    winding_down.add(server)


@pytest.fixture(scope="module")
def reload_models(
    half_plus_two_tf1: Path, half_plus_three_copies: dict[str, Path]
) -> dict[str, Path]:
    """The two models a reload swaps: base paths by name."""
    return {
        HALF_PLUS_TWO: half_plus_two_tf1,
        HALF_PLUS_THREE: half_plus_three_copies[HALF_PLUS_THREE],
    }


def reload_server(
    kind: str, poll_seconds: int, models: dict[str, Path], root: Path
) -> tuple[ServerProcess, Path]:
    config = root / "model_config.txt"
    write_config(config, model_list({HALF_PLUS_TWO: models[HALF_PLUS_TWO]}))
    flags = [
        f"--model_config_file={config}",
        f"--model_config_file_poll_wait_seconds={poll_seconds}",
    ]
    return start(kind, flags, root, [HALF_PLUS_TWO]), config


@pytest.fixture(scope="module", params=KINDS)
def polled_server(
    request: pytest.FixtureRequest,
    reload_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    winding_down: WindingDown,
):
    """half_plus_two from a config file read again every second; yields (server, file)."""
    root = tmp_path_factory.mktemp(f"polled-{request.param}")
    server, config = reload_server(request.param, 1, reload_models, root)
    yield server, config
    winding_down.add(server)


@pytest.fixture(scope="module", params=KINDS)
def unpolled_server(
    request: pytest.FixtureRequest,
    reload_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    winding_down: WindingDown,
):
    """half_plus_two from a config file that is never read again; yields (server, file)."""
    root = tmp_path_factory.mktemp(f"unpolled-{request.param}")
    server, config = reload_server(request.param, 0, reload_models, root)
    yield server, config
    winding_down.add(server)


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
    request = x_request(model, [2.0], [1, 1] if batch_input else [1])
    request.model_spec.signature_name = signature
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
    try:
        server.predict_stub.Predict(x_request(model, [2.0], [1]), timeout=20)
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


def test_model_config_reload_from_the_polled_file(polled_server, reload_models):
    server, config = polled_server
    verify_predict(server, HALF_PLUS_TWO, 3.0, specify_output=False)

    write_config(config, model_list({HALF_PLUS_THREE: reload_models[HALF_PLUS_THREE]}))

    # Upstream sleeps ten seconds; a busy machine gets until the load is seen.
    server.wait_for_version(VERSION, HALF_PLUS_THREE)
    verify_predict(server, HALF_PLUS_THREE, 4.0, specify_output=False)
    wait_until_gone(server, HALF_PLUS_TWO)


def test_zero_poll_period_keeps_the_config_until_reload_config_request(
    unpolled_server, reload_models
):
    server, config = unpolled_server
    verify_predict(server, HALF_PLUS_TWO, 3.0, specify_output=False)
    three = model_list({HALF_PLUS_THREE: reload_models[HALF_PLUS_THREE]})
    write_config(config, three)

    time.sleep(2)  # upstream's wait: the poll period plus one second

    verify_predict(server, HALF_PLUS_TWO, 3.0, specify_output=False)
    assert predict_fails(server, HALF_PLUS_THREE) == grpc.StatusCode.NOT_FOUND

    request = model_management_pb2.ReloadConfigRequest(config=three)
    response = server.model_stub.HandleReloadConfigRequest(request, timeout=120)

    assert response.status.error_code == 0
    assert response.status.error_message == ""
    verify_predict(server, HALF_PLUS_THREE, 4.0, specify_output=False)
    wait_until_gone(server, HALF_PLUS_TWO)


def test_reload_config_request_without_a_model_list_is_invalid_argument(
    unpolled_server, reload_models
):
    """HandleReloadConfigRequest only takes a ModelConfigList (model_service_impl.cc)."""
    server, _ = unpolled_server
    two = model_list({HALF_PLUS_TWO: reload_models[HALF_PLUS_TWO]})
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
