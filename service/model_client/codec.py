"""TensorProto ↔ numpy for the API tier, without TensorFlow.

Decoding follows ``tf.make_ndarray``: values come from ``tensor_content`` (raw little-endian
bytes) when it is set, otherwise from the dtype's repeated field, where fewer values than the
shape holds means "repeat the last one" and none means zeros (empty strings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service.model_client.tensor_pb2 import DataType, TensorProto

# dtype → (numpy dtype on the wire, the repeated field holding its values).
_NUMERIC: dict[int, tuple[np.dtype, str]] = {
    DataType.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    DataType.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    DataType.DT_INT32: (np.dtype("<i4"), "int_val"),
    DataType.DT_INT64: (np.dtype("<i8"), "int64_val"),
    DataType.DT_BOOL: (np.dtype("?"), "bool_val"),
    DataType.DT_HALF: (np.dtype("<f2"), "half_val"),
}


def encode_strings(values: Sequence[bytes]) -> TensorProto:
    """A DT_STRING tensor of shape ``[len(values)]`` (what ``tf.make_tensor_proto`` builds)."""
    proto = TensorProto(dtype=DataType.DT_STRING, string_val=values)
    proto.tensor_shape.dim.add(size=len(values))
    return proto


def tensor_shape(proto: TensorProto) -> tuple[int, ...]:
    """The tensor's dimensions (a response tensor has no unknown sizes)."""
    return tuple(int(dim.size) for dim in proto.tensor_shape.dim)


def decode_tensor(proto: TensorProto) -> np.ndarray:
    """The values of ``proto`` as an array of its shape.

    DT_STRING becomes an object array of ``bytes``; the numeric dtypes become their numpy
    dtype in native byte order.

    Raises:
        ValueError: an unsupported dtype, or values that do not fit the shape.
    """
    shape = tensor_shape(proto)
    if proto.dtype == DataType.DT_STRING:
        return _fill(list(proto.string_val), shape, np.dtype(object), b"")
    if proto.dtype not in _NUMERIC:
        raise ValueError(f"unsupported tensor dtype {_dtype_name(proto.dtype)}")
    wire_dtype, field = _NUMERIC[proto.dtype]
    if proto.tensor_content:
        return _from_content(proto.tensor_content, shape, wire_dtype)
    values = getattr(proto, field)
    if proto.dtype == DataType.DT_HALF:
        # half_val carries each value's 16-bit pattern in an int32.
        array = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        array = np.array(values, dtype=wire_dtype.newbyteorder("="))
    return _fill(array, shape, wire_dtype.newbyteorder("="), 0)


def _from_content(content: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    count = math.prod(shape)
    if len(content) != count * dtype.itemsize:
        raise ValueError(
            f"tensor_content has {len(content)} bytes; shape {list(shape)} of {dtype.name}"
            f" needs {count * dtype.itemsize}"
        )
    return np.frombuffer(content, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape)


def _fill(
    values: Sequence[object] | np.ndarray, shape: tuple[int, ...], dtype: np.dtype, zero: object
) -> np.ndarray:
    """``values`` as ``shape``: repeat the last value to fill it, or ``zero`` when empty."""
    count = math.prod(shape)
    if len(values) > count:
        raise ValueError(f"{len(values)} values do not fit shape {list(shape)}")
    array = np.empty(count, dtype=dtype)
    if count:
        array[: len(values)] = values
        array[len(values) :] = values[-1] if len(values) else zero
    return array.reshape(shape)


def _dtype_name(dtype: int) -> str:
    try:
        return DataType.Name(dtype)
    except ValueError:
        return str(dtype)
