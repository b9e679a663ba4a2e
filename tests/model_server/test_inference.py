"""Classify, Regress and MultiInference, as TensorFlow Serving's own server tests send them.

``half_plus_two`` in TF2 and TF1 form (``y = 0.5 * x + 2``, ``y2 = 0.5 * x + 3``) parses
``tf.Example``s in its classify and regress signatures. The requests and expected values are
those of upstream ``testClassify``, ``testRegress``, ``testMultiInference`` (and their ``Tf2``
twins), ``testClassifyREST`` and ``testRegressREST``; the errors are TensorFlow Serving's
codes and messages. The servers are the ones test_upstream_cases asks (``server_fixtures``).
"""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    model_pb2,
    regression_pb2,
)

from service.model_server import inference
from service.model_server.status import ServingError
from tests.model_server.conftest import ServerProcess
from tests.model_server.server_fixtures import HALF_PLUS_TWO
from tests.support.tf_serving_models import VERSION

MODEL = HALF_PLUS_TWO
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


@pytest.fixture
def server(half_plus_two_server: ServerProcess) -> ServerProcess:
    """A server of each kind serving ``half_plus_two`` in each form."""
    return half_plus_two_server


def x_example(x: float) -> example_pb2.Example:
    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(x)
    return example


def classify_request(signature: str, *xs: float) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    request.input.example_list.examples.extend(x_example(x) for x in xs)
    return request


def regress_request(signature: str, *xs: float) -> regression_pb2.RegressionRequest:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    request.input.example_list.examples.extend(x_example(x) for x in xs)
    return request


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value


def signature_text(server: ServerProcess, name: str) -> str:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = server.predict_stub.GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    return text_format.MessageToString(signatures.signature_def[name])


def spec(signature: str) -> model_pb2.ModelSpec:
    echoed = model_pb2.ModelSpec(name=MODEL, signature_name=signature)
    echoed.version.value = VERSION
    return echoed


# -- upstream testClassify / testClassifyTf2 ---------------------------------------------------


def test_classify_scores_one_class_per_example(server: ServerProcess):
    response = server.predict_stub.Classify(classify_request("classify_x_to_y", 2.0), timeout=10)

    assert response.model_spec == spec("classify_x_to_y")
    assert len(response.result.classifications) == 1
    assert list(response.result.classifications[0].classes) == [
        classification_pb2.Class(label="", score=3.0)
    ]


def test_classify_a_batch_keeps_the_examples_order(server: ServerProcess):
    request = classify_request("classify_x_to_y", 2.0, 4.0, -2.0)

    response = server.predict_stub.Classify(request, timeout=10)

    scores = [[c.score for c in cl.classes] for cl in response.result.classifications]
    assert scores == [[3.0], [4.0], [1.0]]


# -- upstream testRegress / testRegressTf2 -----------------------------------------------------


@pytest.mark.parametrize(
    ("signature", "expected"), [("regress_x_to_y", 3.0), ("regress_x_to_y2", 4.0)]
)
def test_regress_answers_one_value_per_example(
    server: ServerProcess, signature: str, expected: float
):
    response = server.predict_stub.Regress(regress_request(signature, 2.0), timeout=10)

    assert response.model_spec == spec(signature)
    assert [r.value for r in response.result.regressions] == [expected]


def test_regress_merges_each_example_with_the_context(server: ServerProcess):
    request = regress_request("regress_x_to_y")
    with_context = request.input.example_list_with_context
    with_context.context.CopyFrom(x_example(2.0))
    with_context.examples.extend([example_pb2.Example(), x_example(4.0)])

    response = server.predict_stub.Regress(request, timeout=10)

    # The first example takes x from the context; the second's own x wins over it.
    assert [r.value for r in response.result.regressions] == [3.0, 4.0]


def test_regress_on_a_pinned_version(server: ServerProcess):
    request = regress_request("regress_x_to_y", 2.0)
    request.model_spec.version.value = VERSION

    response = server.predict_stub.Regress(request, timeout=10)

    assert response.model_spec == spec("regress_x_to_y")


# -- upstream testMultiInference / testMultiInferenceTf2 -------------------------------------------


def multi_request(*tasks: tuple[str, str]) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name = MODEL
        task.model_spec.signature_name = signature
    request.input.example_list.examples.append(x_example(2.0))
    return request


def test_multi_inference_regresses_and_classifies_the_same_examples(server: ServerProcess):
    request = multi_request(("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY))

    response = server.predict_stub.MultiInference(request, timeout=10)

    assert len(response.results) == 2
    regression, classification = response.results
    assert [r.value for r in regression.regression_result.regressions] == [3.0]
    assert classification.classification_result.classifications[0].classes[0].score == 3.0
    assert regression.model_spec == spec("regress_x_to_y")
    assert classification.model_spec == spec("classify_x_to_y")


def test_multi_inference_runs_two_regressions(server: ServerProcess):
    request = multi_request(("regress_x_to_y", REGRESS), ("regress_x_to_y2", REGRESS))

    response = server.predict_stub.MultiInference(request, timeout=10)

    values = [r.regression_result.regressions[0].value for r in response.results]
    assert values == [3.0, 4.0]


@pytest.mark.parametrize(
    ("tasks", "code", "message"),
    [
        (
            [("regress_x_to_y", REGRESS), ("regress_x_to_y", REGRESS)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Duplicate evaluation of signature: regress_x_to_y",
        ),
        (
            [("nope", REGRESS)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Requested signature not found in model graph: nope",
        ),
        (
            [("regress_x_to_y", "tensorflow/serving/predict")],
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
    ],
    ids=["duplicate", "unknown-signature", "predict-method"],
)
def test_multi_inference_refuses_bad_tasks(server: ServerProcess, tasks, code, message):
    error = rpc_error(server.predict_stub.MultiInference, multi_request(*tasks))

    assert (error.code(), error.details()) == (code, message)


def test_multi_inference_tasks_must_share_one_model(server: ServerProcess):
    request = multi_request(("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY))
    request.tasks[1].model_spec.name = "other"

    error = rpc_error(server.predict_stub.MultiInference, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "All ModelSpecs in a MultiInferenceRequest must access the same model name."
    )


# -- errors ------------------------------------------------------------------------------------


def test_unknown_signature_is_invalid_argument(server: ServerProcess):
    error = rpc_error(server.predict_stub.Classify, classify_request("nope", 2.0))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "No signature was found with the name: nope"


def test_classify_on_a_regress_signature_names_the_missing_outputs(server: ServerProcess):
    error = rpc_error(server.predict_stub.Classify, classify_request("regress_x_to_y", 2.0))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        'Expected classification signature outputs to contain at least one of "classes" or'
        f' "scores". Signature was: {signature_text(server, "regress_x_to_y")}'
    )


def test_regress_on_a_classify_signature_names_the_missing_output(server: ServerProcess):
    error = rpc_error(server.predict_stub.Regress, regress_request("classify_x_to_y", 2.0))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "No regression outputs found in SignatureDef: " + signature_text(server, "classify_x_to_y")
    )


def test_regress_on_the_default_predict_signature_finds_no_inputs(server: ServerProcess):
    request = regress_request("", 2.0)

    error = rpc_error(server.predict_stub.Regress, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "No regression inputs found in SignatureDef: " + signature_text(server, "serving_default")
    )


def test_empty_input_is_invalid_argument(server: ServerProcess):
    error = rpc_error(server.predict_stub.Regress, regress_request("regress_x_to_y"))

    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")


def test_a_signature_taking_floats_cannot_take_examples(server: ServerProcess):
    error = rpc_error(server.predict_stub.Regress, regress_request("regress_x2_to_y3", 2.0))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Expects arg[0] to be float but string is provided"


def test_missing_model_spec_is_invalid_argument(server: ServerProcess):
    request = classification_pb2.ClassificationRequest()

    error = rpc_error(server.predict_stub.Classify, request)

    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing ModelSpec",
    )


# -- upstream testClassifyREST / testRegressREST -----------------------------------------------


def test_rest_classify(server: ServerProcess):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}

    response = server.http.post(f"/v1/models/{MODEL}:classify", json=body)

    assert response.status_code == 200, response.text
    assert response.json() == {"results": [[["", 3.0]]]}


def test_rest_regress(server: ServerProcess):
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}

    response = server.http.post(f"/v1/models/{MODEL}:regress", json=body)

    assert response.status_code == 200, response.text
    assert response.json() == {"results": [3.0]}


def test_rest_regress_on_a_version_with_context_and_lists(server: ServerProcess):
    body = {
        "signature_name": "regress_x_to_y2",
        "context": {"x": [1.0], "note": {"b64": base64.b64encode(b"\x00\xff").decode()}},
        "examples": [{}, {"x": [3.0]}],
    }

    response = server.http.post(f"/v1/models/{MODEL}/versions/{VERSION}:regress", json=body)

    assert response.status_code == 200, response.text
    assert response.json() == {"results": [3.5, 4.5]}


@pytest.mark.parametrize(
    ("method", "body", "status", "message"),
    [
        (
            "classify",
            {"signature_name": "nope", "examples": [{"x": 2.0}]},
            400,
            "No signature was found with the name: nope",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y"},
            400,
            'JSON Value: {"signature_name": "regress_x_to_y"} When method is classify, key'
            " 'examples' is expected and was not found",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": []},
            400,
            'JSON Value: {"signature_name": "regress_x_to_y", "examples": []}'
            " 'examples' value is an empty array",
        ),
    ],
    ids=["unknown-signature", "no-examples", "empty-examples"],
)
def test_rest_errors_are_tf_serving_messages(server: ServerProcess, method, body, status, message):
    response = server.http.post(f"/v1/models/{MODEL}:{method}", json=body)

    assert (response.status_code, response.json()) == (status, {"error": message})


def test_rest_unknown_model_is_404(server: ServerProcess):
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}

    response = server.http.post("/v1/models/nope:regress", json=body)

    assert response.status_code == 404
    assert response.json() == {"error": "Servable not found for request: Latest(nope)"}


# -- the checks themselves, on signatures and outputs no test model has -------------------------


def classify_signature(**outputs: int) -> meta_graph_pb2.SignatureDef:
    signature = meta_graph_pb2.SignatureDef(method_name=CLASSIFY)
    signature.inputs["inputs"].dtype = types_pb2.DT_STRING
    for alias, dtype in outputs.items():
        signature.outputs[alias].dtype = dtype
    return signature


def test_method_name_check_refuses_another_method():
    signature = classify_signature(scores=types_pb2.DT_FLOAT)
    signature.method_name = REGRESS
    requested = model_pb2.ModelSpec(name=MODEL, signature_name="s")

    with pytest.raises(ServingError) as info:
        inference.classify_task({"s": signature}, requested, check_method=True)

    assert info.value.message == (
        "Expected classification signature method_name to be tensorflow/serving/classify."
        " Was: tensorflow/serving/regress"
    )
    assert inference.classify_task({"s": signature}, requested, check_method=False)


def test_classes_and_scores_become_labelled_classes():
    signature = classify_signature(classes=types_pb2.DT_STRING, scores=types_pb2.DT_FLOAT)
    task = inference.Task("s", signature, CLASSIFY, "s")
    classes = np.array([[b"cat", b"dog"]], dtype=object)
    scores = np.array([[0.25, 0.75]], dtype=np.float32)

    result = inference.classification_result(task, 1, {"classes": classes, "scores": scores})

    assert [(c.label, c.score) for c in result.classifications[0].classes] == [
        ("cat", 0.25),
        ("dog", 0.75),
    ]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (
            {"scores": np.zeros([1], np.float32)},
            "Expected Tensor shape: [batch_size num_classes] but got [1]",
        ),
        (
            {"scores": np.zeros([1, 2], np.float64)},
            "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE",
        ),
        (
            {"scores": np.zeros([2, 2], np.float32)},
            "Expected scores output batch size of 1. Got: 2",
        ),
        (
            {"classes": np.zeros([1, 2], np.int64), "scores": np.zeros([1, 2], np.float32)},
            "Expected classes Tensor of DT_STRING. Got: DT_INT64",
        ),
        (
            {"classes": np.full([1, 3], b"a", object), "scores": np.zeros([1, 2], np.float32)},
            "Tensors class and score should match in dim_size(1). Got 3 vs. 2",
        ),
    ],
    ids=["rank", "dtype", "batch", "classes-dtype", "num-classes"],
)
def test_classification_outputs_are_checked(outputs, message):
    signature = classify_signature(**{alias: types_pb2.DT_FLOAT for alias in outputs})
    task = inference.Task("s", signature, CLASSIFY, "s")

    with pytest.raises(ServingError) as info:
        inference.classification_result(task, 1, outputs)

    assert info.value.message == message


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            np.zeros([1, 2], np.float32),
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got"
            " [1,2]",
        ),
        (np.zeros([2], np.float32), "Input batch size did not match output batch size: 1 vs. 2"),
        (np.zeros([1], np.int32), "Expected output Tensor of DT_FLOAT.  Got: DT_INT32"),
    ],
    ids=["shape", "batch", "dtype"],
)
def test_regression_outputs_are_checked(values, message):
    signature = meta_graph_pb2.SignatureDef(method_name=REGRESS)
    task = inference.Task("s", signature, REGRESS, "s")

    with pytest.raises(ServingError) as info:
        inference.regression_result(task, 1, {"outputs": values})

    assert info.value.message == message


def test_a_classify_signature_needs_classes_or_scores():
    signature = classify_signature(probabilities=types_pb2.DT_FLOAT)
    requested = model_pb2.ModelSpec(name=MODEL, signature_name="s")

    with pytest.raises(ServingError) as info:
        inference.classify_task({"s": signature}, requested, check_method=False)

    assert info.value.message.startswith(
        'Expected classification signature outputs to contain at least one of "classes" or'
        ' "scores". Signature was: inputs {\n  key: "inputs"\n'
    )
