"""TensorProto ↔ Python values and numpy arrays for the API tier, without TensorFlow.

Decoding follows ``tf.make_ndarray``: values come from ``tensor_content`` (raw little-endian
bytes) when it is set, otherwise from the dtype's repeated field, where fewer values than the
shape holds means "repeat the last one" and none means zeros (empty strings).

``tensor_values`` gives the values as plain Python objects, which is all ``POST /predict``
needs to build its reply; ``decode_tensor`` gives a numpy array. numpy is imported on the
first ``decode_tensor`` call: the API does not pay for it at start-up or per request.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from service.model_client.tensor_pb2 import DataType, TensorProto

if TYPE_CHECKING:
    import numpy as np


class _Numeric:
    """How one numeric dtype travels: its ``struct`` code (little-endian on the wire), its
    repeated field, its zero, and numpy's name for it."""

    def __init__(self, code: str, field: str, zero: Any, name: str) -> None:
        self.code, self.field, self.zero, self.name = code, field, zero, name
        self.itemsize = struct.calcsize(f"<{code}")


_NUMERIC: dict[int, _Numeric] = {
    DataType.DT_FLOAT: _Numeric("f", "float_val", 0.0, "float32"),
    DataType.DT_DOUBLE: _Numeric("d", "double_val", 0.0, "float64"),
    DataType.DT_INT32: _Numeric("i", "int_val", 0, "int32"),
    DataType.DT_INT64: _Numeric("q", "int64_val", 0, "int64"),
    DataType.DT_BOOL: _Numeric("?", "bool_val", False, "bool"),
    DataType.DT_HALF: _Numeric("e", "half_val", 0.0, "float16"),
}


def encode_strings(values: Sequence[bytes]) -> TensorProto:
    """A DT_STRING tensor of shape ``[len(values)]`` (what ``tf.make_tensor_proto`` builds)."""
    proto = TensorProto()
    fill_strings(proto, values)
    return proto


def fill_strings(proto: TensorProto, values: Sequence[bytes]) -> None:
    """Make ``proto`` (e.g. a request's input, in place) a DT_STRING vector of ``values``."""
    proto.dtype = DataType.DT_STRING
    proto.string_val.extend(values)
    proto.tensor_shape.dim.add(size=len(values))


def tensor_shape(proto: TensorProto) -> tuple[int, ...]:
    """The tensor's dimensions (a response tensor has no unknown sizes)."""
    return tuple(int(dim.size) for dim in proto.tensor_shape.dim)


def tensor_values(proto: TensorProto) -> tuple[tuple[int, ...], list[Any]]:
    """The tensor's shape and its values in row-major order, as Python objects.

    DT_STRING values are ``bytes``; the numeric dtypes give ``float``, ``int`` or ``bool``.

    Raises:
        ValueError: an unsupported dtype, or values that do not fit the shape.
    """
    shape = tensor_shape(proto)
    count = math.prod(shape)
    if proto.dtype == DataType.DT_STRING:
        return shape, _fill(list(proto.string_val), count, shape, b"")
    numeric = _numeric(proto.dtype)
    if proto.tensor_content:
        return shape, _unpack(proto.tensor_content, numeric, count, shape)
    values = list(getattr(proto, numeric.field))
    if proto.dtype == DataType.DT_HALF and values:
        # half_val carries each value's 16-bit pattern in an int32.
        patterns = struct.pack(f"<{len(values)}H", *(v & 0xFFFF for v in values))
        values = list(struct.unpack(f"<{len(values)}e", patterns))
    return shape, _fill(values, count, shape, numeric.zero)


def decode_tensor(proto: TensorProto) -> np.ndarray:
    """The values of ``proto`` as an array of its shape.

    DT_STRING becomes an object array of ``bytes``; the numeric dtypes become their numpy
    dtype in native byte order.

    Raises:
        ValueError: an unsupported dtype, or values that do not fit the shape.
    """
    import numpy as np  # only here: see the module's docstring

    if proto.dtype != DataType.DT_STRING and proto.tensor_content:
        # Large tensors come this way: read the bytes as they are, not value by value.
        numeric = _numeric(proto.dtype)
        shape = tensor_shape(proto)
        _check_content(proto.tensor_content, numeric, math.prod(shape), shape)
        wire = np.dtype(f"<{numeric.code}")
        array = np.frombuffer(proto.tensor_content, dtype=wire)
        return array.astype(wire.newbyteorder("=")).reshape(shape)
    shape, values = tensor_values(proto)
    if proto.dtype == DataType.DT_STRING:
        dtype = np.dtype(object)
    else:
        dtype = np.dtype(_numeric(proto.dtype).name)
    array = np.empty(len(values), dtype=dtype)
    array[:] = values
    return array.reshape(shape)


def _numeric(dtype: int) -> _Numeric:
    numeric = _NUMERIC.get(dtype)
    if numeric is None:
        raise ValueError(f"unsupported tensor dtype {_dtype_name(dtype)}")
    return numeric


def _check_content(content: bytes, numeric: _Numeric, count: int, shape: tuple[int, ...]) -> None:
    if len(content) != count * numeric.itemsize:
        raise ValueError(
            f"tensor_content has {len(content)} bytes; shape {list(shape)} of {numeric.name}"
            f" needs {count * numeric.itemsize}"
        )


def _unpack(content: bytes, numeric: _Numeric, count: int, shape: tuple[int, ...]) -> list[Any]:
    _check_content(content, numeric, count, shape)
    return list(struct.unpack(f"<{count}{numeric.code}", content))


def _fill(values: list[Any], count: int, shape: tuple[int, ...], zero: Any) -> list[Any]:
    """``values`` as ``count`` values: repeat the last one to fill, or ``zero`` when empty."""
    if len(values) > count:
        raise ValueError(f"{len(values)} values do not fit shape {list(shape)}")
    if len(values) < count:
        values.extend([values[-1] if values else zero] * (count - len(values)))
    return values


def _dtype_name(dtype: int) -> str:
    try:
        return DataType.Name(dtype)
    except ValueError:
        return str(dtype)
