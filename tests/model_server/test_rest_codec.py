"""The REST JSON <-> protobuf codec, checked against TensorFlow Serving's documented behaviour."""

from __future__ import annotations

import base64
import json
import math
import random

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import any_pb2, wrappers_pb2
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from service.model_server import rest_codec, rest_examples
from service.model_server.status import ServingError

F = types_pb2.DT_FLOAT


def signature(**dtypes: int) -> meta_graph_pb2.SignatureDef:
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for alias, dtype in dtypes.items():
        sig.inputs[alias].dtype = dtype
        sig.inputs[alias].name = f"serving_default_{alias}:0"
    return sig


def to_request(body: object, sig: meta_graph_pb2.SignatureDef, **kwargs):
    return rest_codec.predict_request_from_json(body, "m", sig, "serving_default", **kwargs)


def inputs_as_arrays(request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    return {alias: tf.make_ndarray(tensor) for alias, tensor in request.inputs.items()}


def response(**tensors: tensor_pb2.TensorProto) -> predict_pb2.PredictResponse:
    result = predict_pb2.PredictResponse()
    for alias, tensor in tensors.items():
        result.outputs[alias].CopyFrom(tensor)
    return result


def proto(values, dtype=None) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto(values, dtype=dtype)


def rejection(body: object, sig: meta_graph_pb2.SignatureDef) -> ServingError:
    with pytest.raises(ServingError) as caught:
        to_request(body, sig)
    return caught.value


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


# --- requests: formats, model spec ------------------------------------------------------------


def test_row_format_with_one_input_stacks_plain_instances():
    request, row_format = to_request({"instances": [1.0, 2.0, 5.0]}, signature(x=F))

    assert row_format is True
    x = inputs_as_arrays(request)["x"]
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, [1.0, 2.0, 5.0])


def test_row_format_with_one_input_accepts_instances_naming_it():
    request, _ = to_request({"instances": [{"x": [1, 2]}, {"x": [3, 4]}]}, signature(x=F))

    np.testing.assert_array_equal(inputs_as_arrays(request)["x"], [[1, 2], [3, 4]])


def test_row_format_with_several_inputs_builds_one_batched_tensor_per_input():
    sig = signature(tag=types_pb2.DT_STRING, signal=types_pb2.DT_INT64, sensor=F)
    body = {
        "instances": [
            {"tag": "foo", "signal": [1, 2, 3], "sensor": [[1, 2], [3, 4]]},
            {"tag": "bar", "signal": [3, 4, 1], "sensor": [[4, 5], [6, 8]]},
        ]
    }

    arrays = inputs_as_arrays(to_request(body, sig)[0])

    assert sorted(arrays) == ["sensor", "signal", "tag"]
    np.testing.assert_array_equal(arrays["tag"], [b"foo", b"bar"])
    np.testing.assert_array_equal(arrays["signal"], [[1, 2, 3], [3, 4, 1]])
    assert arrays["signal"].dtype == np.int64
    assert arrays["sensor"].shape == (2, 2, 2)


def test_columnar_format_keeps_each_inputs_own_shape_and_ignores_extra_keys():
    sig = signature(a=F, b=types_pb2.DT_INT32)
    body = {"inputs": {"a": [[1, 2, 3]], "b": 7, "unused": "whatever"}}

    request, row_format = to_request(body, sig)

    assert row_format is False
    arrays = inputs_as_arrays(request)
    assert sorted(arrays) == ["a", "b"]
    np.testing.assert_array_equal(arrays["a"], [[1, 2, 3]])
    assert arrays["b"].shape == ()
    assert arrays["b"] == 7


def test_columnar_format_with_one_input_takes_the_value_itself():
    request, _ = to_request({"inputs": [[1, 2], [3, 4], [5, 6]]}, signature(x=F))

    np.testing.assert_array_equal(inputs_as_arrays(request)["x"], [[1, 2], [3, 4], [5, 6]])


def test_model_spec_carries_name_signature_and_version():
    request, _ = rest_codec.predict_request_from_json(
        {"instances": [1]}, "mnist", signature(x=F), "classify", version=7
    )

    assert request.model_spec.name == "mnist"
    assert request.model_spec.signature_name == "classify"
    assert request.model_spec.WhichOneof("version_choice") == "version"
    assert request.model_spec.version.value == 7


def test_model_spec_carries_a_version_label():
    request, _ = to_request({"instances": [1]}, signature(x=F), version_label="canary")

    assert request.model_spec.WhichOneof("version_choice") == "version_label"
    assert request.model_spec.version_label == "canary"


def test_version_and_label_together_are_rejected():
    with pytest.raises(ServingError) as caught:
        to_request({"instances": [1]}, signature(x=F), version=1, version_label="canary")

    assert caught.value.message == (
        "Both model version (1) and model version label (canary) cannot be supplied."
    )


def test_signature_name_comes_from_the_body_or_defaults():
    assert rest_codec.signature_name_from_json({"instances": [1]}) == "serving_default"
    assert rest_codec.signature_name_from_json({"signature_name": "other"}) == "other"
    with pytest.raises(ServingError, match="'signature_name' key must be a string value"):
        rest_codec.signature_name_from_json({"signature_name": 3})
    with pytest.raises(ServingError, match="Is not object"):
        rest_codec.signature_name_from_json([1])


# --- requests: dtypes, shapes, strings --------------------------------------------------------

DTYPE_CASES = [
    (types_pb2.DT_FLOAT, [1, 2.5, -0.125], np.float32),
    (types_pb2.DT_DOUBLE, [1, 0.1, 1e300], np.float64),
    (types_pb2.DT_HALF, [1, 0.5, 65504], np.float16),
    (types_pb2.DT_INT8, [-128, 0, 127], np.int8),
    (types_pb2.DT_UINT8, [0, 1, 255], np.uint8),
    (types_pb2.DT_INT16, [-32768, 0, 32767], np.int16),
    (types_pb2.DT_INT32, [-(2**31), 0, 2**31 - 1], np.int32),
    (types_pb2.DT_INT64, [-(2**63), 0, 2**63 - 1], np.int64),
    (types_pb2.DT_UINT32, [0, 1, 2**32 - 1], np.uint32),
    (types_pb2.DT_UINT64, [0, 1, 2**64 - 1], np.uint64),
    (types_pb2.DT_BOOL, [True, False, True], np.bool_),
]


@pytest.mark.parametrize(("dtype", "values", "np_type"), DTYPE_CASES, ids=lambda c: str(c))
def test_every_numeric_dtype_round_trips_exactly(dtype, values, np_type):
    request, _ = to_request({"instances": values}, signature(x=dtype))

    x = inputs_as_arrays(request)["x"]
    assert request.inputs["x"].dtype == dtype
    assert x.dtype == np_type
    np.testing.assert_array_equal(x, np.array(values, dtype=np_type))


def test_float_inputs_accept_nan_and_infinities():
    request, _ = to_request({"inputs": [math.nan, math.inf, -math.inf]}, signature(x=F))

    x = inputs_as_arrays(request)["x"]
    assert np.isnan(x[0])
    assert list(x[1:]) == [np.inf, -np.inf]


def test_float_values_beyond_float32_become_infinity_as_in_cpp():
    request, _ = to_request({"inputs": [1e39, -1e39]}, signature(x=F))

    assert list(inputs_as_arrays(request)["x"]) == [np.inf, -np.inf]


def test_strings_are_utf8_encoded_and_b64_objects_decoded():
    sig = signature(x=types_pb2.DT_STRING)
    body = {"instances": ["héllo", b64(b"\x00\xffraw"), {"b64": "aGk"}]}

    request, _ = to_request(body, sig)

    assert list(request.inputs["x"].string_val) == ["héllo".encode(), b"\x00\xffraw", b"hi"]
    np.testing.assert_array_equal(
        inputs_as_arrays(request)["x"], np.array(["héllo".encode(), b"\x00\xffraw", b"hi"])
    )


def test_a_single_b64_object_is_a_columnar_value_not_an_inputs_map():
    request, _ = to_request({"inputs": b64(b"image bytes")}, signature(image=types_pb2.DT_STRING))

    assert request.inputs["image"].tensor_shape.dim == []
    assert list(request.inputs["image"].string_val) == [b"image bytes"]


@pytest.mark.parametrize(
    ("value", "shape"),
    [
        (3, []),
        ([], [0]),
        ([[], []], [2, 0]),
        ([[1], [2], [3]], [3, 1]),
        ([[[1, 2, 3], [4, 5, 6]]], [1, 2, 3]),
    ],
)
def test_columnar_shape_is_inferred_from_the_nesting(value, shape):
    request, _ = to_request({"inputs": value}, signature(x=F))

    assert [d.size for d in request.inputs["x"].tensor_shape.dim] == shape
    np.testing.assert_array_equal(inputs_as_arrays(request)["x"], np.array(value, np.float32))


def test_row_shape_prefixes_the_number_of_instances():
    request, _ = to_request({"instances": [[[1, 2]], [[3, 4]]]}, signature(x=F))

    assert [d.size for d in request.inputs["x"].tensor_shape.dim] == [2, 1, 2]


# --- requests: rejections ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "JSON Value: [1, 2] Is not object"),
        ("text", 'JSON Value: "text" Is not object'),
        (None, "JSON Value: null Is not object"),
        ({"signature_name": "x"}, "Missing 'inputs' or 'instances' key"),
        (
            {"instances": [1], "inputs": [1]},
            'JSON Value: {"instances": [1], "inputs": [1]} Not formatted correctly expecting '
            "only one of 'inputs' or 'instances' keys to exist ",
        ),
        (
            {"instances": 1},
            "JSON Value: {\"instances\": 1} Expecting 'instances' to be an list/array",
        ),
        ({"instances": []}, "JSON Value: {\"instances\": []} No values in 'instances' array"),
        (
            {"instances": [1, {"x": 2}]},
            "Expecting value/list but got object at item 1 of input list",
        ),
        ({"instances": [{"x": 1}, 2]}, "Expecting object but got list at item 1 of input list"),
        (
            {"instances": [{"x": 1, "y": 2}]},
            "Failed to process element: 0 key: y of 'instances' list. "
            "Error: INVALID_ARGUMENT: JSON object: does not have named input: y",
        ),
        (
            {"instances": [{}]},
            "Failed to process element: 0 of 'instances' list. "
            "JSON object: {} keys must be equal to: x",
        ),
        ({"inputs": {"y": 1}}, "Missing named input: x in 'inputs' object."),
    ],
)
def test_malformed_bodies_are_invalid_arguments_with_tf_serving_messages(body, message):
    error = rejection(body, signature(x=F))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.http_status == 400
    assert error.message == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"instances": [[1, 2], [3]]},
            "Failed to process element: 1 of 'instances' list. "
            "Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 1",
        ),
        (
            {"instances": [[1, 2, 3, 4], [[1, 2], [3, 4]]]},
            "Failed to process element: 1 of 'instances' list. "
            "Error: INVALID_ARGUMENT: Expecting shape [4] but got: [2,2]",
        ),
        (
            {"inputs": [[1, 2], [3]]},
            "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
        ),
        (
            {"inputs": [[1, 2], 3]},
            "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
        ),
        ({"inputs": [1, [2]]}, "Encountered list at unexpected level: 1 expected < 1"),
        (
            {"inputs": [[], [1]]},
            "Encountered list at unexpected size: 1 at level: 1 expected size: 0",
        ),
    ],
)
def test_ragged_lists_and_unequal_instances_are_rejected(body, message):
    assert rejection(body, signature(x=F)).message == message


@pytest.mark.parametrize(
    ("dtype", "value", "described"),
    [
        (F, "1", '"1" Type: String is not of expected type: float'),
        (F, True, "true Type: True is not of expected type: float"),
        (F, None, "null Type: Null is not of expected type: float"),
        (F, {"b64": "AA=="}, '{"b64": "AA=="} Type: Object is not of expected type: float'),
        (types_pb2.DT_INT32, 1.0, "1.0 Type: Number is not of expected type: int32"),
        (types_pb2.DT_INT32, 2**31, "2147483648 Type: Number is not of expected type: int32"),
        (types_pb2.DT_UINT8, -1, "-1 Type: Number is not of expected type: uint8"),
        (types_pb2.DT_INT64, 2**63, f"{2**63} Type: Number is not of expected type: int64"),
        (types_pb2.DT_BOOL, 1, "1 Type: Number is not of expected type: bool"),
        (types_pb2.DT_STRING, 5, "5 Type: Number is not of expected type: string"),
    ],
)
def test_values_not_matching_the_input_dtype_are_rejected(dtype, value, described):
    error = rejection({"inputs": [value, value]}, signature(x=dtype))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == f"JSON Value: {described}"


def test_a_bad_value_deep_in_a_list_is_named_in_the_error():
    error = rejection({"inputs": [[1, 2], [3, "four"]]}, signature(x=types_pb2.DT_INT64))

    assert error.message == 'JSON Value: "four" Type: String is not of expected type: int64'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"b64": "not base64!"}, "Unable to base64 decode"),
        ({"b64": "YQ="}, "Unable to base64 decode"),  # one '=' where two are due
        ({"b64": "Y"}, "Unable to base64 decode"),  # six bits left over
        ({"b64": "aGk-"}, "Unable to base64 decode"),  # web-safe alphabet
        ({"b64": "aGVsbG8=", "x": 1}, "not formatted correctly for base64 data"),
        ({"b64": 5}, "not formatted correctly for base64 data"),
    ],
)
def test_bad_b64_is_rejected(value, message):
    error = rejection({"inputs": [value]}, signature(x=types_pb2.DT_STRING))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.message


def test_b64_with_whitespace_is_accepted_as_absl_does():
    request, _ = to_request({"inputs": {"b64": "aGVs\nbG8="}}, signature(x=types_pb2.DT_STRING))

    assert list(request.inputs["x"].string_val) == [b"hello"]


def test_unpaired_surrogates_in_strings_are_rejected():
    error = rejection({"inputs": ["\ud800"]}, signature(x=types_pb2.DT_STRING))

    assert "is not valid UTF-8" in error.message


def test_several_inputs_need_objects_in_either_format():
    sig = signature(a=F, b=F)

    assert rejection({"instances": [1, 2]}, sig).message.startswith(
        "instances is a plain list, but expecting list of objects"
    )
    assert rejection({"instances": [b64(b"x")]}, sig).message.startswith(
        "instances is a plain list"
    )
    assert rejection({"inputs": [1, 2]}, sig).message.startswith(
        "inputs is a plain value/list, but expecting an object"
    )


def test_an_instance_missing_a_named_input_is_rejected():
    sig = signature(a=F, b=F)

    error = rejection({"instances": [{"a": 1, "b": 2}, {"a": 3}]}, sig)

    assert error.message == (
        "Failed to process element: 1 of 'instances' list. "
        'JSON object: {"a": 3} keys must be equal to: a,b'
    )


def test_huge_integers_for_float_inputs_are_rejected():
    error = rejection({"inputs": [10**400]}, signature(x=F))

    assert error.message == "A JSON number is out of range for type: float"


def test_signature_without_inputs_is_rejected():
    error = rejection({"instances": [1]}, signature())

    assert error.message == "Failed to get input map for signature: serving_default"


def test_inputs_of_a_dtype_json_cannot_express_are_unimplemented():
    error = rejection({"inputs": [1]}, signature(x=types_pb2.DT_COMPLEX64))

    assert error.code == grpc.StatusCode.UNIMPLEMENTED
    assert error.message == "Conversion of JSON Value to type: complex64"


def random_json(rng: random.Random, depth: int = 0) -> object:
    """Any JSON value json.loads could produce, biased towards near-misses."""
    leaves = [
        None, True, 0, -1, 2**70, 10**400, 1.5, math.nan, "", "x", "\ud800",
        {"b64": "aGk="}, {"b64": "!"}, {"b64": 1},
    ]  # fmt: skip
    if depth > 3 or rng.random() < 0.4:
        return rng.choice(leaves)
    if rng.random() < 0.6:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["a", "b", "b64", "instances", "inputs", "signature_name", "zzz"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


@pytest.mark.parametrize(
    "sig",
    [signature(a=F), signature(a=types_pb2.DT_STRING), signature(a=types_pb2.DT_INT8, b=F)],
    ids=["float", "string", "two-inputs"],
)
def test_no_malformed_body_escapes_as_anything_but_a_serving_error(sig):
    rng = random.Random(1234)
    outcomes = {"accepted": 0, "rejected": 0}
    for _ in range(3000):
        body = random_json(rng)
        if rng.random() < 0.8:
            body = {rng.choice(["instances", "inputs"]): body}
        try:
            to_request(body, sig)
            outcomes["accepted"] += 1
        except ServingError as error:
            assert error.code in {grpc.StatusCode.INVALID_ARGUMENT}
            outcomes["rejected"] += 1
    assert outcomes["accepted"] > 0 and outcomes["rejected"] > 0


# --- responses --------------------------------------------------------------------------------


def test_row_response_with_one_output_lists_each_instance():
    out = rest_codec.predict_response_to_json(response(y=proto([[0.1, 0.2], [3.0, 4.5]])), True)

    assert out == {"predictions": [[0.1, 0.2], [3.0, 4.5]]}
    assert json.dumps(out) == '{"predictions": [[0.1, 0.2], [3.0, 4.5]]}'


def test_row_response_with_several_outputs_lists_one_object_per_instance():
    resp = response(
        scores=proto(np.array([[0.5, 0.25], [0.75, 0.125]], np.float32)),
        label=proto(np.array([b"cat", b"dog"])),
    )

    out = rest_codec.predict_response_to_json(resp, True)

    assert out == {
        "predictions": [
            {"label": "cat", "scores": [0.5, 0.25]},
            {"label": "dog", "scores": [0.75, 0.125]},
        ]
    }


def test_columnar_response_gives_one_output_directly_and_several_by_alias():
    one = rest_codec.predict_response_to_json(response(y=proto([1, 2], tf.int64)), False)
    several = rest_codec.predict_response_to_json(
        response(a=proto(7, tf.int32), b=proto([[True], [False]])), False
    )

    assert one == {"outputs": [1, 2]}
    assert several == {"outputs": {"a": 7, "b": [[True], [False]]}}


def test_float32_outputs_are_the_shortest_decimals_tf_serving_writes():
    values = np.array([0.1, 1 / 3, 16777216, 1e-45], np.float32)

    out = rest_codec.predict_response_to_json(response(y=proto(values)), False)["outputs"]

    assert out == [0.1, 0.33333334, 16777216.0, 1e-45]
    assert all(type(v) is float for v in out)
    assert np.array_equal(np.array(out, np.float32), values)


def test_non_finite_floats_come_back_as_python_floats_json_writes_as_tokens():
    out = rest_codec.predict_response_to_json(
        response(y=proto(np.array([np.nan, np.inf, -np.inf], np.float32))), True
    )

    assert json.dumps(out) == '{"predictions": [NaN, Infinity, -Infinity]}'


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([0.1, 2.0], np.float64), [0.1, 2.0]),
        (np.array([0.5, 65504], np.float16), [0.5, 65504.0]),
        (np.array([-128, 127], np.int8), [-128, 127]),
        (np.array([0, 255], np.uint8), [0, 255]),
        (np.array([-(2**15), 5], np.int16), [-(2**15), 5]),
        (np.array([-(2**31), 5], np.int32), [-(2**31), 5]),
        (np.array([-(2**63), 2**63 - 1], np.int64), [-(2**63), 2**63 - 1]),
        (np.array([0, 2**32 - 1], np.uint32), [0, 2**32 - 1]),
        (np.array([0, 2**64 - 1], np.uint64), [0, 2**64 - 1]),
        (np.array([True, False]), [True, False]),
    ],
    ids=lambda v: str(getattr(v, "dtype", "")),
)
def test_every_supported_output_dtype_decodes_to_plain_python_values(values, expected):
    out = rest_codec.predict_response_to_json(response(y=proto(values)), False)["outputs"]

    assert out == expected
    assert [type(v) for v in out] == [type(v) for v in expected]


def test_repeated_fields_decode_like_tensor_content():
    half = tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF)
    half.tensor_shape.dim.add(size=2)
    half.half_val.extend(np.array([1.5, -2], np.float16).view(np.uint16).tolist())
    ints = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[1, 2, 3])
    ints.tensor_shape.dim.add(size=3)

    out = rest_codec.predict_response_to_json(response(h=half, i=ints), False)

    assert out == {"outputs": {"h": [1.5, -2.0], "i": [1, 2, 3]}}


def test_a_single_repeated_value_fills_the_whole_shape():
    tensor = tensor_pb2.TensorProto(dtype=F, float_val=[7.0])
    tensor.tensor_shape.dim.add(size=2)
    tensor.tensor_shape.dim.add(size=3)

    out = rest_codec.predict_response_to_json(response(y=tensor), True)

    assert out == {"predictions": [[7.0, 7.0, 7.0], [7.0, 7.0, 7.0]]}
    np.testing.assert_array_equal(tf.make_ndarray(tensor), np.array(out["predictions"]))


def test_too_few_repeated_values_repeat_the_last_and_none_mean_zeros():
    short = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"a", b"b"])
    short.tensor_shape.dim.add(size=4)
    empty = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64)
    empty.tensor_shape.dim.add(size=2)

    out = rest_codec.predict_response_to_json(response(s=short, z=empty), False)

    assert out == {"outputs": {"s": ["a", "b", "b", "b"], "z": [0, 0]}}


def test_string_outputs_named_bytes_are_base64_and_others_utf8_text():
    raw = np.array([b"\x89PNG\xff", "ünï".encode()])

    out = rest_codec.predict_response_to_json(
        response(image_bytes=proto(raw), caption=proto(raw)), False
    )

    assert out == {
        "outputs": {
            "image_bytes": [
                {"b64": "iVBOR/8="},
                {"b64": base64.b64encode("ünï".encode()).decode()},
            ],
            "caption": ["\ufffdPNG\ufffd", "ünï"],
        }
    }


def test_a_bytes_suffix_on_a_numeric_output_changes_nothing():
    out = rest_codec.predict_response_to_json(response(y_bytes=proto([1, 2], tf.int32)), False)

    assert out == {"outputs": [1, 2]}


def test_request_tensors_round_trip_through_the_response_renderer():
    sig = signature(img_bytes=types_pb2.DT_STRING, x=F, n=types_pb2.DT_INT64)
    instances = [
        {"img_bytes": b64(b"\x00\x01"), "x": [[0.1, 0.2]], "n": 3},
        {"img_bytes": b64(b"\xff"), "x": [[1.5, -2.0]], "n": -4},
    ]
    columns = {"img_bytes": [b64(b"ab")], "x": 0.25, "n": [[1, 2], [3, 4]]}

    row_request, _ = to_request({"instances": instances}, sig)
    col_request, _ = to_request({"inputs": columns}, sig)

    row_back = rest_codec.predict_response_to_json(response(**row_request.inputs), True)
    col_back = rest_codec.predict_response_to_json(response(**col_request.inputs), False)
    assert row_back == {"predictions": instances}
    assert col_back == {"outputs": columns}


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({}, "Cannot convert empty tensor map to JSON"),
        ({"y": proto(3.0)}, "Tensor name: y has no shape information "),
        (
            {"a": proto([1, 2]), "b": proto([1, 2, 3])},
            "Tensor name: b has inconsistent batch size: 3 expecting: 2",
        ),
        (
            {"c": proto(np.array([1j], np.complex64))},
            "Failed to write JSON value for tensor type: complex64",
        ),
    ],
)
def test_unrenderable_row_responses_are_invalid_arguments(tensors, message):
    with pytest.raises(ServingError) as caught:
        rest_codec.predict_response_to_json(response(**tensors), True)

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == message


def test_columnar_responses_need_no_batch_dimension():
    out = rest_codec.predict_response_to_json(
        response(a=proto(3.0), b=proto([1, 2, 3], tf.int32)), False
    )

    assert out == {"outputs": {"a": 3.0, "b": [1, 2, 3]}}


def test_tensor_content_of_the_wrong_size_is_an_internal_error():
    tensor = proto(np.array([1, 2, 3], np.float32))
    tensor.tensor_shape.dim[0].size = 4

    with pytest.raises(ServingError) as caught:
        rest_codec.predict_response_to_json(response(y=tensor), False)

    assert caught.value.code == grpc.StatusCode.INTERNAL


# --- status and metadata ----------------------------------------------------------------------


def test_model_status_renders_like_tf_serving():
    status = get_model_status_pb2.GetModelStatusResponse()
    available = status.model_version_status.add(version=123, state="AVAILABLE")
    available.status.error_code = 0
    failed = status.model_version_status.add(version=7, state="END")
    failed.status.error_code = 5
    failed.status.error_message = "not found"

    assert rest_codec.model_status_to_json(status) == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            },
            {
                "version": "7",
                "state": "END",
                "status": {"error_code": "NOT_FOUND", "error_message": "not found"},
            },
        ]
    }


def metadata_response(
    packed: any_pb2.Any | None,
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    result = get_model_metadata_pb2.GetModelMetadataResponse()
    result.model_spec.name = "shapes"
    result.model_spec.version.CopyFrom(wrappers_pb2.Int64Value(value=3))
    if packed is not None:
        result.metadata["signature_def"].CopyFrom(packed)
    return result


def test_model_metadata_unpacks_the_signature_def_map_without_type_url():
    sig = signature(image=F)
    sig.inputs["image"].tensor_shape.dim.add(size=-1)
    sig.outputs["scores"].dtype = F
    sig.outputs["scores"].name = "StatefulPartitionedCall:0"
    sig.outputs["scores"].tensor_shape.unknown_rank = True
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    signature_map.signature_def["serving_default"].CopyFrom(sig)
    packed = any_pb2.Any()
    packed.Pack(signature_map)

    out = rest_codec.model_metadata_to_json(metadata_response(packed))

    assert out == {
        "model_spec": {"name": "shapes", "signature_name": "", "version": "3"},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {
                            "image": {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": {
                                    "dim": [{"size": "-1", "name": ""}],
                                    "unknown_rank": False,
                                },
                                "name": "serving_default_image:0",
                            }
                        },
                        "outputs": {
                            "scores": {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": {"dim": [], "unknown_rank": True},
                                "name": "StatefulPartitionedCall:0",
                            }
                        },
                        "method_name": "tensorflow/serving/predict",
                        "defaults": {},
                    }
                }
            }
        },
    }
    assert "@type" not in json.dumps(out)


def test_model_metadata_without_a_signature_def_map_is_an_internal_error():
    wrong = any_pb2.Any()
    wrong.Pack(wrappers_pb2.StringValue(value="nope"))

    for packed in (None, wrong):
        with pytest.raises(ServingError) as caught:
            rest_codec.model_metadata_to_json(metadata_response(packed))
        assert caught.value.code == grpc.StatusCode.INTERNAL


# --- :classify and :regress bodies ---------------------------------------------------------


def example_request(body: object):
    return rest_examples.regression_request_from_json(body, model_pb2.ModelSpec(name="m"))


def features(example: example_pb2.Example) -> dict[str, tuple[str | None, list]]:
    return {
        name: (feature.WhichOneof("kind"), list(getattr(feature, kind).value) if kind else [])
        for name, feature in example.features.feature.items()
        for kind in [feature.WhichOneof("kind")]
    }


def test_example_features_take_their_kind_from_the_json_values():
    body = {
        "examples": [
            {
                "f": 2.5,
                "i": [1, -2],
                "flag": True,
                "s": "héllo",
                "b": {"b64": base64.b64encode(b"\x00\xff").decode()},
                "empty": [],
                "huge": 2**70,
            }
        ]
    }

    request = example_request(body)

    (example,) = request.input.example_list.examples
    assert features(example) == {
        "f": ("float_list", [2.5]),
        "i": ("int64_list", [1, -2]),
        "flag": ("int64_list", [1]),
        "s": ("bytes_list", ["héllo".encode()]),
        "b": ("bytes_list", [b"\x00\xff"]),
        "empty": (None, []),
        "huge": ("float_list", [float(np.float32(2**70))]),
    }
    assert request.model_spec == model_pb2.ModelSpec(name="m")


def test_context_makes_an_example_list_with_context_and_keeps_the_signature():
    body = {"signature_name": "r", "context": {"x": 1.0}, "examples": [{}, {"x": [3.0]}]}

    request = rest_examples.classification_request_from_json(body, model_pb2.ModelSpec(name="m"))

    assert request.model_spec.signature_name == "r"
    with_context = request.input.example_list_with_context
    assert features(with_context.context) == {"x": ("float_list", [1.0])}
    assert [features(e) for e in with_context.examples] == [{}, {"x": ("float_list", [3.0])}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1], "JSON Value: [1] Is not object"),
        (
            {"signature_name": 1, "examples": [{}]},
            'JSON Value: {"signature_name": 1, "examples": [{}]} not formatted correctly.'
            " 'signature_name' key must be a string value.",
        ),
        (
            {},
            "JSON Value: {} When method is classify, key 'examples' is expected and was not found",
        ),
        (
            {"examples": {}},
            "JSON Value: {\"examples\": {}} Expecting 'examples' value to be an list/array",
        ),
        ({"examples": []}, "JSON Value: {\"examples\": []} 'examples' value is an empty array"),
        ({"examples": [[1]]}, "Example must be JSON object but got JSON Array"),
        ({"context": 1, "examples": [{}]}, "Example must be JSON object but got JSON Number"),
        (
            {"examples": [{"x": None}]},
            "Feature: x has element with unexpected JSON type: Null",
        ),
        (
            {"examples": [{"x": [[1]]}]},
            "Feature: x has element with unexpected JSON type: Array",
        ),
        (
            {"examples": [{"x": {"a": 1}}]},
            "Feature: x has element with unexpected JSON type: Object",
        ),
        (
            {"examples": [{"x": [1.5, 2]}]},
            "Unexpected element type in feature: x expecting type: float",
        ),
        (
            {"examples": [{"x": ["a", True]}]},
            "Unexpected element type in feature: x expecting type: bytes",
        ),
        (
            {"examples": [{"x": 2**63}]},
            "Feature: x has uint64_t element. Only int64_t is supported.",
        ),
        ({"examples": [{"x": {"b64": "!!"}}]}, "Unable to base64 decode"),
    ],
)
def test_malformed_example_bodies_are_tf_serving_errors(body, message):
    with pytest.raises(ServingError) as info:
        example_request(body)

    assert (info.value.code, info.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_classification_result_json_is_label_score_pairs_per_example():
    result = classification_pb2.ClassificationResult()
    first = result.classifications.add()
    first.classes.add(label="cat", score=0.1)
    first.classes.add(label="dog", score=0.9)
    result.classifications.add().classes.add(score=3.0)

    assert rest_examples.classification_result_to_json(result) == {
        "results": [[["cat", 0.1], ["dog", 0.9]], [["", 3.0]]]
    }


def test_regression_result_json_is_one_value_per_example():
    result = regression_pb2.RegressionResult()
    result.regressions.add(value=0.1)
    result.regressions.add(value=-4.0)

    assert rest_examples.regression_result_to_json(result) == {"results": [0.1, -4.0]}


@pytest.mark.parametrize(
    ("render", "empty", "message"),
    [
        (
            rest_examples.classification_result_to_json,
            classification_pb2.ClassificationResult(),
            "Cannot convert empty ClassificationResults to JSON",
        ),
        (
            rest_examples.regression_result_to_json,
            regression_pb2.RegressionResult(),
            "Cannot convert empty RegressionResults to JSON",
        ),
    ],
)
def test_empty_results_cannot_be_rendered(render, empty, message):
    with pytest.raises(ServingError) as info:
        render(empty)

    assert info.value.message == message
