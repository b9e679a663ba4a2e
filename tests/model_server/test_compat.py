"""What a TensorFlow Serving client sees: the same answers, codes and messages from both servers.

The shared ``shapes`` server of each kind (``server_fixtures``): versions 1 and 2 of the same
exported model (``all`` policy) plus a ``stable`` label on version 1.
"""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

from exporter.export import decode_batch
from tests.model_server.conftest import (
    AVAILABLE,
    IMAGE_SIZE,
    MODEL,
    ServerProcess,
    Template,
    image_request,
    outputs,
)
from tests.model_server.server_fixtures import PROMETHEUS_PATH

CLASSES = {"circle", "square", "triangle"}


@pytest.fixture
def server(shapes_server: ServerProcess) -> ServerProcess:
    return shapes_server


def expected(template: Template, images: list[bytes]) -> np.ndarray:
    """Probabilities from the serving_tensor signature on pixels decoded like training did."""
    model = tf.saved_model.load(str(template.version_dir))
    pixels = tf.constant(decode_batch(images, IMAGE_SIZE))
    return model.signatures["serving_tensor"](images=pixels)["probabilities"].numpy()


def rpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30)
    return info.value


# -- Predict ----------------------------------------------------------------------------


def test_predict_on_image_bytes_answers_latest_version_with_all_outputs(server, template):
    images = [template.image(i) for i in range(4)]
    response = server.predict_stub.Predict(image_request(images), timeout=30)
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    got = outputs(response)
    assert set(got) == {"probabilities", "labels", "label_scores"}
    np.testing.assert_allclose(got["probabilities"], expected(template, images), atol=1e-5)
    assert got["labels"].shape == (4, 3)
    assert {label.decode() for label in got["labels"][0]} == CLASSES
    np.testing.assert_allclose(
        got["label_scores"], np.sort(got["probabilities"])[:, ::-1], atol=1e-6
    )


def test_predict_on_tensors_matches_predict_on_bytes(server, template):
    images = [template.image(i) for i in range(3)]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_tensor"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(decode_batch(images, IMAGE_SIZE)))
    from_pixels = outputs(server.predict_stub.Predict(request, timeout=30))
    from_bytes = outputs(server.predict_stub.Predict(image_request(images), timeout=30))
    np.testing.assert_allclose(from_pixels["probabilities"], from_bytes["probabilities"], atol=1e-5)


def test_predict_specific_version_and_label(server, template):
    by_version = server.predict_stub.Predict(image_request([template.image()], 1), timeout=30)
    assert by_version.model_spec.version.value == 1
    request = image_request([template.image()])
    request.model_spec.version_label = "stable"
    assert server.predict_stub.Predict(request, timeout=30).model_spec.version.value == 1


def test_output_filter_returns_only_the_named_outputs(server, template):
    request = image_request([template.image()])
    request.output_filter.append("labels")
    response = server.predict_stub.Predict(request, timeout=30)
    assert list(response.outputs) == ["labels"]


def test_unknown_model_is_not_found_with_tf_serving_message(server, template):
    error = rpc_error(server.predict_stub.Predict, image_request([template.image()], model="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(nope)"


def test_unknown_version_is_not_found_with_tf_serving_message(server, template):
    error = rpc_error(server.predict_stub.Predict, image_request([template.image()], version=9))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"Servable not found for request: Specific({MODEL}, 9)"


def test_unknown_label_is_invalid_argument(server, template):
    request = image_request([template.image()])
    request.model_spec.version_label = "canary"
    error = rpc_error(server.predict_stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Unrecognized servable version label: canary"


def test_wrong_input_name_is_invalid_argument(server, template):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto([template.image()]))
    error = rpc_error(server.predict_stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "input tensor alias not found in signature: pixels."
        " Inputs expected to be in the set {image_bytes}."
    )


def test_missing_and_extra_inputs_are_invalid_argument(server, template):
    request = image_request([template.image()])
    request.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0]))
    error = rpc_error(server.predict_stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("input size does not match signature: 2!=1")
    assert "Sent extra: {extra}. Missing but required: {}." in error.details()


def test_wrong_dtype_is_invalid_argument(server):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
    error = rpc_error(server.predict_stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "string" in error.details() and "float" in error.details()


def test_a_shape_the_graph_cannot_use_is_invalid_argument(server):
    # As TF Serving, the declared shape is not checked up front: TensorFlow refuses an
    # image without its batch dimension when it runs the convolution.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_tensor"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((8, 8, 3), np.float32)))
    error = rpc_error(server.predict_stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_undecodable_bytes_are_invalid_argument(server, template):
    error = rpc_error(server.predict_stub.Predict, image_request([b"not an image"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unknown image file format" in error.details()


def test_unknown_signature_is_failed_precondition(server, template):
    error = rpc_error(server.predict_stub.Predict, image_request([template.image()], signature="x"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == 'Serving signature key "x" not found.'


def test_classify_on_the_predict_signature_is_invalid_argument(server, template):
    """Without --enable_signature_method_name_check the signature is judged by its shape:
    the exported serving_default has three outputs where a classifier has one or two."""
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    error = rpc_error(server.predict_stub.Classify, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Expected one or two output Tensors, found 3"


# -- metadata and status ----------------------------------------------------------------


def test_metadata_lists_both_signatures(server):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = server.predict_stub.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 2
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    default = signatures.signature_def["serving_default"]
    assert list(default.inputs) == ["image_bytes"]
    assert default.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert set(default.outputs) == {"probabilities", "labels", "label_scores"}
    tensor = signatures.signature_def["serving_tensor"].inputs["images"]
    assert [d.size for d in tensor.tensor_shape.dim] == [-1, IMAGE_SIZE, IMAGE_SIZE, 3]


def test_metadata_without_fields_is_invalid_argument(server):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    error = rpc_error(server.predict_stub.GetModelMetadata, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "GetModelMetadataRequest must specify at least one metadata_field"


def test_status_lists_every_loaded_version(server):
    states = server.status()
    assert {v: s.state for v, s in states.items()} == {1: AVAILABLE, 2: AVAILABLE}
    assert all(s.status.error_code == 0 for s in states.values())


def test_status_of_unknown_version_and_model_is_not_found(server):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    request.model_spec.version.value = 7
    error = rpc_error(server.model_stub.GetModelStatus, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        f"Could not find version 7 of model {MODEL}",
    )
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    error = rpc_error(server.model_stub.GetModelStatus, request)
    assert error.details() == "Could not find any versions of model nope"


def test_health_service_reports_serving(server):
    stub = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "tensorflow.serving.PredictionService"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


# -- REST -------------------------------------------------------------------------------


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def test_rest_row_format_predicts_like_grpc(server, template):
    images = [template.image(i) for i in range(2)]
    response = server.http.post(
        f"/v1/models/{MODEL}:predict", json={"instances": [b64(data) for data in images]}
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    grpc_out = outputs(server.predict_stub.Predict(image_request(images), timeout=30))
    for row, prediction in enumerate(predictions):
        np.testing.assert_allclose(
            prediction["probabilities"], grpc_out["probabilities"][row], atol=1e-6
        )
        assert prediction["labels"] == [label.decode() for label in grpc_out["labels"][row]]


def test_rest_columnar_format_on_a_version_and_a_label(server, template):
    body = {"signature_name": "serving_default", "inputs": {"image_bytes": [b64(template.image())]}}
    for path in (
        f"/v1/models/{MODEL}/versions/1:predict",
        f"/v1/models/{MODEL}/labels/stable:predict",
    ):
        response = server.http.post(path, json=body)
        assert response.status_code == 200, response.text
        result = response.json()["outputs"]
        assert set(result) == {"probabilities", "labels", "label_scores"}
        assert len(result["probabilities"]) == 1 and len(result["probabilities"][0]) == 3


def test_rest_status_and_metadata(server):
    status = server.http.get(f"/v1/models/{MODEL}/versions/2")
    assert status.status_code == 200
    assert status.json() == {
        "model_version_status": [
            {
                "version": "2",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    metadata = server.http.get(f"/v1/models/{MODEL}/metadata").json()
    assert metadata["model_spec"]["name"] == MODEL
    assert metadata["model_spec"]["version"] == "2"
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image_bytes"]["dtype"] == "DT_STRING"


def test_rest_errors_are_json_with_tf_serving_status_codes(server, template):
    unknown = server.http.post(
        "/v1/models/nope:predict", json={"instances": [b64(template.image())]}
    )
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "Servable not found for request: Latest(nope)"}
    bad_image = server.http.post(f"/v1/models/{MODEL}:predict", json={"instances": [b64(b"xx")]})
    assert bad_image.status_code == 400
    assert "Unknown image file format" in bad_image.json()["error"]
    bad_json = server.http.post(f"/v1/models/{MODEL}:predict", content=b"{not json")
    assert bad_json.status_code == 400
    assert "error" in bad_json.json()


def test_prometheus_metrics_count_requests(server, template):
    server.predict_stub.Predict(image_request([template.image()]), timeout=30)
    text = server.http.get(PROMETHEUS_PATH).text
    assert ":tensorflow:serving:request_count" in text
    lines = [x for x in text.splitlines() if x.startswith(":tensorflow:serving:request_count{")]
    assert any(f'model_name="{MODEL}"' in line and 'status="OK"' in line for line in lines)


def test_rest_metrics_path_absent_is_404(server):
    assert server.http.get("/no/such/path").status_code == 404
