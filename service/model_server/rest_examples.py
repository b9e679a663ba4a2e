"""TensorFlow Serving's REST ``:classify`` and ``:regress`` JSON, to and from protobuf.

A body ``{"signature_name", "context", "examples"}`` becomes ``tf.Example`` features: JSON
floats a ``float_list``, integers and booleans an ``int64_list``, strings and ``{"b64": ...}``
a ``bytes_list``; a feature is one value or a flat list of them. Behaviour and messages follow
TensorFlow Serving's ``util/json_tensor.cc``; the shared JSON helpers are ``rest_codec``'s.
"""

from __future__ import annotations

from typing import Any

from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, model_pb2, regression_pb2

from service.model_server.rest_codec import (
    _as_float,
    _decode_b64,
    _float32,
    _is_b64_object,
    _json_type,
    _require_object,
    _utf8,
    _value_error,
    signature_name_from_json,
)
from service.model_server.status import invalid_argument


def classification_request_from_json(
    body: object, spec: model_pb2.ModelSpec
) -> classification_pb2.ClassificationRequest:
    """Builds a ClassificationRequest for ``spec`` from a parsed ``:classify`` body.

    Raises:
        ServingError: INVALID_ARGUMENT for a malformed body, with TensorFlow Serving's message.
    """
    request = classification_pb2.ClassificationRequest(model_spec=spec)
    _fill_example_request(body, request)
    return request


def regression_request_from_json(
    body: object, spec: model_pb2.ModelSpec
) -> regression_pb2.RegressionRequest:
    """Builds a RegressionRequest for ``spec`` from a parsed ``:regress`` body (as above)."""
    request = regression_pb2.RegressionRequest(model_spec=spec)
    _fill_example_request(body, request)
    return request


def classification_result_to_json(result: classification_pb2.ClassificationResult) -> dict:
    """``{"results": [[[label, score], ...], ...]}``: one list of classes per example."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    return {
        "results": [
            [[entry.label, _float32(entry.score)] for entry in classifications.classes]
            for classifications in result.classifications
        ]
    }


def regression_result_to_json(result: regression_pb2.RegressionResult) -> dict:
    """``{"results": [value, ...]}``: one value per example."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return {"results": [_float32(regression.value) for regression in result.regressions]}


def _fill_example_request(
    body: object,
    request: classification_pb2.ClassificationRequest | regression_pb2.RegressionRequest,
) -> None:
    body = _require_object(body)
    if "signature_name" in body:
        request.model_spec.signature_name = signature_name_from_json(body)
    has_context = "context" in body
    if has_context:
        with_context = request.input.example_list_with_context
        with_context.context.CopyFrom(_example_from_json(body["context"]))
    examples = body.get("examples")
    # TensorFlow Serving says "classify" here for regress requests too.
    if "examples" not in body:
        raise _value_error(
            body, "When method is classify, key 'examples' is expected and was not found"
        )
    if not isinstance(examples, list):
        raise _value_error(body, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _value_error(body, "'examples' value is an empty array")
    target = (
        request.input.example_list_with_context.examples
        if has_context
        else request.input.example_list.examples
    )
    for value in examples:
        target.append(_example_from_json(value))


def _example_from_json(value: object) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, feature)
        example.features.feature[name].CopyFrom(feature)
    return example


def _add_to_feature(value: object, name: str, feature: feature_pb2.Feature) -> None:
    """One JSON value into ``feature``, whose kind the first value decided."""
    if (
        value is None
        or isinstance(value, list)
        or (isinstance(value, dict) and not _is_b64_object(value))
    ):
        raise invalid_argument(
            f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}"
        )
    if isinstance(value, bool):
        _feature_list(feature, "int64_list", name).append(1 if value else 0)
    elif isinstance(value, dict):
        _feature_list(feature, "bytes_list", name).append(_decode_b64(value))
    elif isinstance(value, str):
        _feature_list(feature, "bytes_list", name).append(_utf8(value))
    elif isinstance(value, int) and -(2**63) <= value < 2**63:
        _feature_list(feature, "int64_list", name).append(value)
    elif isinstance(value, int) and 0 <= value < 2**64:
        raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    else:  # a float, or an integer beyond 64 bits, which the JSON parser reads as a double
        _feature_list(feature, "float_list", name).append(_as_float(value))


def _feature_list(feature: feature_pb2.Feature, kind: str, name: str) -> Any:
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        expected = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[current]
        raise invalid_argument(
            f"Unexpected element type in feature: {name} expecting type: {expected}"
        )
    return getattr(feature, kind).value
