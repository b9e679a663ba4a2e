"""TensorFlow Serving's REST JSON, converted to and from its gRPC protobuf messages.

Pure functions, no I/O: the REST server parses the body, calls these, and the gRPC core does the
work. Behaviour follows TensorFlow Serving's ``util/json_tensor.cc`` (predict bodies) and
``model_servers/http_rest_api_util.cc`` (status and metadata), including its error messages.

Deliberate differences from TensorFlow Serving:

* DT_HALF is accepted and produced (TensorFlow Serving answers "unimplemented").
* Integers are range-checked against the input's own dtype, not only against int32.
* Non-UTF-8 bytes in a string output not named ``*_bytes`` become U+FFFD; TensorFlow Serving
  writes the raw bytes, which makes its answer invalid JSON.
* JSON quoted in error messages is written compactly (``{"a": 1}``), where TensorFlow
  Serving pretty-prints objects over several lines.

``:classify`` and ``:regress`` bodies are in ``rest_examples``.

Floats come back as Python floats, NaN and infinities included: ``json.dumps`` writes them as
``NaN``/``Infinity``/``-Infinity`` by default, exactly as TensorFlow Serving does, so the REST
server must not render with ``allow_nan=False`` (Starlette's ``JSONResponse`` does).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, NamedTuple

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

from service.model_server.status import ServingError, invalid_argument

_DEBUG_CHARS = 256  # TensorFlow Serving truncates the JSON it quotes in errors to 256 bytes.
_BYTES_SUFFIX = "_bytes"


class _Kind(NamedTuple):
    """How one TensorFlow dtype maps to JSON values and to TensorProto fields."""

    name: str  # TensorFlow's DataTypeString, as quoted in error messages
    numpy: str  # little-endian, the layout of tensor_content
    field: str  # the repeated TensorProto field TensorFlow fills (AsProtoField)
    json_types: tuple[type, ...]  # exact Python types json.loads yields for valid leaves


_FLOATS = (int, float)
_KINDS: dict[int, _Kind] = {
    types_pb2.DT_FLOAT: _Kind("float", "<f4", "float_val", _FLOATS),
    types_pb2.DT_DOUBLE: _Kind("double", "<f8", "double_val", _FLOATS),
    types_pb2.DT_HALF: _Kind("half", "<f2", "half_val", _FLOATS),
    types_pb2.DT_INT8: _Kind("int8", "i1", "int_val", (int,)),
    types_pb2.DT_UINT8: _Kind("uint8", "u1", "int_val", (int,)),
    types_pb2.DT_INT16: _Kind("int16", "<i2", "int_val", (int,)),
    types_pb2.DT_INT32: _Kind("int32", "<i4", "int_val", (int,)),
    types_pb2.DT_INT64: _Kind("int64", "<i8", "int64_val", (int,)),
    types_pb2.DT_UINT32: _Kind("uint32", "<u4", "uint32_val", (int,)),
    types_pb2.DT_UINT64: _Kind("uint64", "<u8", "uint64_val", (int,)),
    types_pb2.DT_BOOL: _Kind("bool", "?", "bool_val", (bool,)),
    types_pb2.DT_STRING: _Kind("string", "O", "string_val", (str,)),
}


def signature_name_from_json(body: object) -> str:
    """Returns the ``signature_name`` a predict body asks for, or ``"serving_default"``.

    Raises:
        ServingError: INVALID_ARGUMENT when the body is not an object or the name not a string.
    """
    body = _require_object(body)
    name = body.get("signature_name", "serving_default")
    if not isinstance(name, str):
        raise _value_error(
            body, "not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def predict_request_from_json(
    body: object,
    model_name: str,
    signature: meta_graph_pb2.SignatureDef,
    signature_name: str,
    version: int | None = None,
    version_label: str | None = None,
) -> tuple[predict_pb2.PredictRequest, bool]:
    """Builds a PredictRequest from a parsed ``:predict`` body.

    Args:
        body: The parsed JSON body, any Python value.
        model_name: Goes to ``model_spec.name``.
        signature: The signature serving the request; its inputs give dtypes and names.
        signature_name: Goes to ``model_spec.signature_name``.
        version: Optional ``model_spec.version``.
        version_label: Optional ``model_spec.version_label``.

    Returns:
        The request, and True when the body used the row (``instances``) format.

    Raises:
        ServingError: INVALID_ARGUMENT for any malformed body; UNIMPLEMENTED for an input dtype
            JSON cannot express.
    """
    body = _require_object(body)
    if version is not None and version_label is not None:
        raise invalid_argument(
            f"Both model version ({version}) and model version label ({version_label}) "
            "cannot be supplied."
        )
    dtypes = {name: info.dtype for name, info in signature.inputs.items()}
    if not dtypes:
        raise invalid_argument(f"Failed to get input map for signature: {signature_name}")
    try:
        tensors, row_format = _tensors_from_body(body, dtypes)
    except RecursionError:
        raise invalid_argument("JSON Value is nested too deeply") from None
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    if version_label is not None:
        request.model_spec.version_label = version_label
    for name, tensor in tensors.items():
        request.inputs[name].CopyFrom(tensor)
    return request, row_format


def predict_response_to_json(response: predict_pb2.PredictResponse, row_format: bool) -> dict:
    """Renders a PredictResponse as TensorFlow Serving's REST answer.

    Args:
        response: The gRPC answer.
        row_format: True when the request used ``instances``: answer ``{"predictions": ...}``
            split along dimension 0; else answer ``{"outputs": ...}``.

    Returns:
        A JSON-ready dict; DT_STRING outputs whose alias ends in ``_bytes`` are ``{"b64": ...}``.

    Raises:
        ServingError: INVALID_ARGUMENT when the outputs cannot be rendered (none, no batch
            dimension or unequal batch sizes in row format, a dtype JSON cannot express).
    """
    if not response.outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    tensors = {alias: response.outputs[alias] for alias in sorted(response.outputs)}
    if row_format:
        _check_batch_sizes(tensors)
    values = {alias: _tensor_to_json(alias, tensor) for alias, tensor in tensors.items()}
    if len(values) == 1:
        (only,) = values.values()
        return {"predictions" if row_format else "outputs": only}
    if not row_format:
        return {"outputs": values}
    batch = len(next(iter(values.values())))
    return {"predictions": [{alias: v[i] for alias, v in values.items()} for i in range(batch)]}


def model_status_to_json(response: get_model_status_pb2.GetModelStatusResponse) -> dict:
    """Renders a GetModelStatusResponse as TensorFlow Serving's REST model status answer.

    TensorFlow Serving prints it with ``always_print_fields_with_no_presence`` and JSON names;
    the proto pins those JSON names to the snake_case field names.
    """
    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)


def model_metadata_to_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict:
    """Renders a GetModelMetadataResponse as TensorFlow Serving's REST metadata answer.

    The shape is ``{"model_spec": ..., "metadata": {"signature_def": <SignatureDefMap>}}``:
    TensorFlow Serving unpacks the ``Any`` itself, so no ``@type`` appears, and the map's own
    field makes ``signature_def`` appear twice in a row.

    Raises:
        ServingError: INTERNAL when the metadata holds no SignatureDefMap.
    """
    packed = response.metadata.get("signature_def")
    if packed is None:
        raise ServingError(
            grpc.StatusCode.INTERNAL,
            "Failed to find 'signature_def' key in the GetModelMetadataResponse metadata map.",
        )
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    if not packed.Unpack(signature_defs):
        raise ServingError(
            grpc.StatusCode.INTERNAL, "Failed to unpack 'Any' object to 'SignatureDefMap'."
        )
    return {
        "model_spec": _proto_names_dict(response.model_spec),
        "metadata": {"signature_def": _proto_names_dict(signature_defs)},
    }


def _is_b64_object(value: dict) -> bool:
    return len(value) == 1 and isinstance(value.get("b64"), str)


def _utf8(value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise _value_error(value, "is not valid UTF-8 (unpaired surrogate)") from None


def _as_float(value: object) -> float:
    assert isinstance(value, (int, float))
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def _float32(value: float) -> float:
    # The shortest decimal that reads back as the same float32, as TensorFlow Serving writes.
    return float(str(np.float32(value)))


def _proto_names_dict(message: Any) -> dict:
    return json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )


# --- JSON -> TensorProto ---------------------------------------------------------------------


def _tensors_from_body(body: dict, dtypes: dict[str, int]) -> tuple[dict, bool]:
    if "instances" in body and "inputs" in body:
        raise _value_error(
            body,
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        )
    if "instances" in body:
        return _tensors_from_instances(body, dtypes), True
    if "inputs" in body:
        return _tensors_from_inputs(body["inputs"], dtypes), False
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _tensors_from_instances(body: dict, dtypes: dict[str, int]) -> dict:
    instances = body["instances"]
    if not isinstance(instances, list):
        raise _value_error(body, "Expecting 'instances' to be an list/array")
    if not instances:
        raise _value_error(body, "No values in 'instances' array")
    named = _is_named_object(instances[0])
    if not named and len(dtypes) > 1:
        # TensorFlow Serving lets a b64 object through here and picks an arbitrary input.
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    columns = {name: _Column(dtype) for name, dtype in dtypes.items()}
    for index, instance in enumerate(instances):
        if named != _is_named_object(instance):
            wanted, got = ("object", "list") if named else ("value/list", "object")
            raise invalid_argument(
                f"Expecting {wanted} but got {got} at item {index} of input list"
            )
        items = instance.items() if named else [(next(iter(dtypes)), instance)]
        for name, value in items:
            _add_instance_item(columns, index, name, value, named)
        if named and set(instance) != set(dtypes):
            raise invalid_argument(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{_debug(instance)} keys must be equal to: {','.join(sorted(dtypes))}"
            )
    return {name: column.tensor(len(instances)) for name, column in columns.items()}


def _add_instance_item(columns: dict, index: int, name: str, value: object, named: bool) -> None:
    where = f"{index} key: {name}" if named else f"{index}"
    try:
        if name not in columns:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        columns[name].add(value)
    except ServingError as err:
        raise invalid_argument(
            f"Failed to process element: {where} of 'instances' list. "
            f"Error: {err.code.name}: {err.message}"
        ) from None


class _Column:
    """One input's instances, stacked along a new dimension 0."""

    def __init__(self, dtype: int) -> None:
        self.dtype = dtype
        self.shape: list[int] | None = None
        self.values: list = []

    def add(self, value: object) -> None:
        shape, flat = _dense_values(value, self.dtype)
        if self.shape is not None and shape != self.shape:
            size = math.prod(self.shape)
            if size != len(flat):
                raise invalid_argument(f"Expecting tensor size: {size} but got: {len(flat)}")
            raise invalid_argument(
                f"Expecting shape {_shape_text(self.shape)} but got: {_shape_text(shape)}"
            )
        self.shape = shape
        self.values.extend(flat)

    def tensor(self, batch: int) -> tensor_pb2.TensorProto:
        return _make_tensor(self.dtype, [batch, *(self.shape or [])], self.values)


def _tensors_from_inputs(value: object, dtypes: dict[str, int]) -> dict:
    if isinstance(value, dict) and _is_named_object(value):
        missing = sorted(set(dtypes) - set(value))  # extra keys are ignored, as in TF Serving
        if missing:
            raise invalid_argument(f"Missing named input: {missing[0]} in 'inputs' object.")
        return {n: _make_tensor(t, *_dense_values(value[n], t)) for n, t in dtypes.items()}
    if len(dtypes) > 1:
        raise invalid_argument(
            "inputs is a plain value/list, but expecting an object as multiple input "
            "tensors required as per tensorinfo_map"
        )
    ((name, dtype),) = dtypes.items()
    return {name: _make_tensor(dtype, *_dense_values(value, dtype))}


def _dense_values(value: object, dtype: int) -> tuple[list[int], list]:
    """Shape (from the first element at each depth) and row-major leaves of a nested list."""
    kind = _KINDS.get(dtype)
    if kind is None:
        raise ServingError(
            grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value to type: {_dtype_name(dtype)}"
        )
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat: list = []
    _flatten(value, shape, 0, kind, flat)
    return shape, flat


def _flatten(value: object, shape: list[int], level: int, kind: _Kind, out: list) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            # TensorFlow Serving's message counts this level from 1 but the rank from 0.
            raise _value_error(
                value,
                f"found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}",
            )
        out.append(_leaf(value, kind))
        return
    if level >= len(shape):
        raise invalid_argument(
            f"Encountered list at unexpected level: {level} expected < {len(shape)}"
        )
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    if level == len(shape) - 1 and kind.name != "string":
        # Fast path for the innermost list of numbers: a type check per value, no recursion.
        bad = [v for v in value if type(v) not in kind.json_types]
        if bad:
            _flatten(bad[0], shape, level + 1, kind, out)  # raises the first value's error
        out.extend(value)
        return
    for item in value:
        _flatten(item, shape, level + 1, kind, out)


def _leaf(value: object, kind: _Kind) -> object:
    if kind.name != "string":
        if type(value) not in kind.json_types:
            raise _type_error(value, kind)
        return value
    if isinstance(value, dict):
        return _decode_b64(value)
    if not isinstance(value, str):
        raise _type_error(value, kind)
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise _value_error(value, "is not valid UTF-8 (unpaired surrogate)") from None


def _decode_b64(value: dict) -> bytes:
    text = value.get("b64")
    if len(value) != 1 or not isinstance(text, str):
        raise _value_error(value, "not formatted correctly for base64 data")
    # Like absl::Base64Unescape: whitespace and missing padding are fine, anything outside
    # the standard alphabet (or a wrong amount of padding) is not.
    compact = "".join(text.split())
    if "=" not in compact:
        compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _make_tensor(dtype: int, shape: list[int], flat: list) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    kind = _KINDS[dtype]
    if dtype == types_pb2.DT_STRING:
        tensor.string_val.extend(flat)
        return tensor
    if kind.json_types == (int,) and flat:
        info = np.iinfo(kind.numpy)
        if min(flat) < info.min or max(flat) > info.max:
            raise _type_error(next(v for v in flat if not info.min <= v <= info.max), kind)
    try:
        with np.errstate(over="ignore"):  # too big for float32/float16 is ±inf, as in C++
            array = np.array(flat, dtype=kind.numpy)
    except OverflowError:
        raise invalid_argument(f"A JSON number is out of range for type: {kind.name}") from None
    tensor.tensor_content = array.tobytes()
    return tensor


def _is_named_object(value: object) -> bool:
    """An object keyed by input names, as opposed to a ``{"b64": ...}`` value."""
    if not isinstance(value, dict):
        return False
    return not (len(value) == 1 and isinstance(value.get("b64"), str))


def _require_object(body: object) -> dict:
    if not isinstance(body, dict):
        raise _value_error(body, "Is not object")
    return body


def _value_error(value: object, problem: str) -> ServingError:
    """TensorFlow Serving's usual error: the offending JSON, then what is wrong with it."""
    return invalid_argument(f"JSON Value: {_debug(value)} {problem}")


def _type_error(value: object, kind: _Kind) -> ServingError:
    return _value_error(value, f"Type: {_json_type(value)} is not of expected type: {kind.name}")


def _json_type(value: object) -> str:
    # rapidjson's type names; it has no boolean type, only "True" and "False".
    names = {bool: str(value), int: "Number", float: "Number", str: "String", list: "Array"}
    return "Null" if value is None else names.get(type(value), "Object")


def _debug(value: object) -> str:
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError, RecursionError):  # only for values json.loads never makes
        text = "<unprintable>"
    return text[:_DEBUG_CHARS]


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(size) for size in shape) + "]"


def _dtype_name(dtype: int) -> str:
    try:
        return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()
    except ValueError:
        return f"unknown dtype {dtype}"


# --- TensorProto -> JSON ---------------------------------------------------------------------


def _check_batch_sizes(tensors: dict) -> None:
    batch = None
    for alias, tensor in tensors.items():
        dims = tensor.tensor_shape.dim
        if not dims:
            raise invalid_argument(f"Tensor name: {alias} has no shape information ")
        if batch is not None and dims[0].size != batch:
            raise invalid_argument(
                f"Tensor name: {alias} has inconsistent batch size: {dims[0].size} "
                f"expecting: {batch}"
            )
        batch = dims[0].size


def _tensor_to_json(alias: str, tensor: tensor_pb2.TensorProto) -> Any:
    kind = _KINDS.get(tensor.dtype)
    if kind is None:
        raise invalid_argument(
            f"Failed to write JSON value for tensor type: {_dtype_name(tensor.dtype)}"
        )
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if tensor.tensor_shape.unknown_rank or any(size < 0 for size in shape):
        raise _corrupt(alias, "has no fully defined shape")
    values = _flat_values(alias, tensor, kind, math.prod(shape))
    if tensor.dtype == types_pb2.DT_FLOAT:
        # TensorFlow Serving writes the shortest decimal that reads back as the same float32
        # ("0.1", not "0.10000000149011612"); the double nearest that decimal does the same.
        values = values.astype(str).astype(np.float64)
    elif tensor.dtype == types_pb2.DT_STRING:
        as_b64 = alias.endswith(_BYTES_SUFFIX)
        values = _object_array([_string_to_json(v, as_b64) for v in values])
    return values.reshape(shape).tolist()


def _flat_values(alias: str, tensor: tensor_pb2.TensorProto, kind: _Kind, size: int) -> Any:
    """The tensor's values as a 1-D array, from tensor_content or the repeated field."""
    if tensor.tensor_content and tensor.dtype != types_pb2.DT_STRING:
        if len(tensor.tensor_content) != size * np.dtype(kind.numpy).itemsize:
            raise _corrupt(alias, "has tensor_content of the wrong size")
        return np.frombuffer(tensor.tensor_content, dtype=kind.numpy)
    field = getattr(tensor, kind.field)
    if kind.field == "half_val":  # each float16's bit pattern, widened to an int32
        values = np.array(field, dtype=np.int32).astype(np.uint16).view(np.float16)
    elif kind.field == "int_val":  # int8/uint8/int16 widened to int32; C++ narrows them back
        values = np.array(field, dtype=np.int32).astype(kind.numpy)
    elif tensor.dtype == types_pb2.DT_STRING:
        values = _object_array(list(field))
    else:
        values = np.array(field, dtype=kind.numpy)
    # TensorFlow's Tensor::FromProto: no values means zeros, too few repeat the last one,
    # surplus ones are ignored.
    if len(values) == 0:
        values = _object_array([b""]) if kind.name == "string" else np.zeros(1, kind.numpy)
    if len(values) < size:
        return np.concatenate([values, np.full(size - len(values), values[-1], values.dtype)])
    return values[:size]


def _string_to_json(value: bytes, as_b64: bool) -> object:
    if as_b64:
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value.decode("utf-8", errors="replace")


def _object_array(items: list) -> Any:
    # Filled by assignment so numpy never mistakes a dict or bytes for a nested sequence.
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _corrupt(alias: str, problem: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, f"Output tensor {alias} {problem}")
