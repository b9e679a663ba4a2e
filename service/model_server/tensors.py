"""TensorProto ↔ numpy for the server's responses, the way TensorFlow Serving writes them.

TensorFlow Serving answers with the typed repeated fields (``float_val``, ``string_val``, …)
rather than ``tensor_content``; clients decode both, and writing the same fields keeps the
bytes of a response alike between the two servers.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# numpy kind/size → (DataType, repeated field)
_FIELDS: dict[np.dtype, tuple[int, str]] = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.int16): (types_pb2.DT_INT16, "int_val"),
    np.dtype(np.int8): (types_pb2.DT_INT8, "int_val"),
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val"),
    np.dtype(np.uint16): (types_pb2.DT_UINT16, "int_val"),
    np.dtype(np.uint32): (types_pb2.DT_UINT32, "uint32_val"),
    np.dtype(np.uint64): (types_pb2.DT_UINT64, "uint64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
}


def shape_proto(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(size)) for size in shape]
    )


def tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """``array`` as a TensorProto with typed repeated fields (strings as bytes)."""
    proto = tensor_pb2.TensorProto(tensor_shape=shape_proto(array.shape))
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(_as_bytes(value) for value in array.reshape(-1))
    elif array.dtype == np.float16:
        proto.dtype = types_pb2.DT_HALF
        proto.half_val.extend(array.reshape(-1).view(np.uint16).tolist())
    elif array.dtype in _FIELDS:
        dtype, field = _FIELDS[array.dtype]
        proto.dtype = dtype
        getattr(proto, field).extend(array.reshape(-1).tolist())
    else:
        raise TypeError(f"cannot encode a {array.dtype} tensor")
    return proto


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")
