"""``service.model_client.codec`` decodes tensors exactly as ``tf.make_ndarray`` does."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2 as tf_tensor_pb2

from service.model_client.codec import (
    decode_tensor,
    encode_strings,
    tensor_shape,
    tensor_values,
)
from service.model_client.tensor_pb2 import DataType, TensorProto


def lean(official: tf_tensor_pb2.TensorProto) -> TensorProto:
    return TensorProto.FromString(official.SerializeToString())


def assert_decodes_like_tensorflow(official) -> None:
    expected = tf.make_ndarray(official)
    decoded = decode_tensor(lean(official))
    assert decoded.dtype == expected.dtype
    assert decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)
    # The numpy-free reading gives the same values, as Python objects, in row-major order.
    shape, values = tensor_values(lean(official))
    assert shape == expected.shape
    assert values == expected.ravel().tolist()
    assert all(type(v) is type(e) for v, e in zip(values, expected.ravel().tolist(), strict=True))


def test_encode_strings_is_a_string_vector():
    proto = encode_strings([b"a", b"\x00b"])
    assert proto.dtype == DataType.DT_STRING
    assert tensor_shape(proto) == (2,)
    assert list(proto.string_val) == [b"a", b"\x00b"]
    assert proto.SerializeToString() == (
        tf.make_tensor_proto([b"a", b"\x00b"], dtype=tf.string, shape=[2]).SerializeToString()
    )


def test_encode_no_strings_is_an_empty_vector():
    proto = encode_strings([])
    assert tensor_shape(proto) == (0,)
    assert decode_tensor(proto).shape == (0,)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        np.linspace(-1, 1, 5),
        np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
        np.array([2**62, -(2**62), 0], dtype=np.int64),
        np.array([[True, False], [False, True]]),
        np.array([0.5, -65504.0, 6e-8], dtype=np.float16),
        np.array([[b"circle", b""], [b"\xff\x00", b"square"]], dtype=object),
        np.float32(4.5),
    ],
    ids=["float", "double", "int32", "int64", "bool", "half", "string", "scalar"],
)
def test_tensor_content_and_strings_decode_like_make_ndarray(array):
    assert_decodes_like_tensorflow(tf.make_tensor_proto(array))


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (1.25, tf.float32),
        (2.5, tf.float64),
        (-7, tf.int32),
        (2**40, tf.int64),
        (True, tf.bool),
        (np.float16(0.75), tf.float16),
        (b"x", tf.string),
    ],
    ids=["float", "double", "int32", "int64", "bool", "half", "string"],
)
def test_one_typed_value_fills_the_shape(value, dtype):
    official = tf.make_tensor_proto(value, dtype=dtype, shape=[2, 3])
    assert not official.tensor_content  # TensorFlow writes a single typed value here
    assert_decodes_like_tensorflow(official)


@pytest.mark.parametrize(
    ("field", "dtype", "values", "expected"),
    [
        ("float_val", DataType.DT_FLOAT, [1.0, 2.0], [1.0, 2.0, 2.0, 2.0]),
        ("int_val", DataType.DT_INT32, [], [0, 0, 0, 0]),
        ("int64_val", DataType.DT_INT64, [5], [5, 5, 5, 5]),
        ("bool_val", DataType.DT_BOOL, [], [False] * 4),
        ("double_val", DataType.DT_DOUBLE, [0.5, 1.5, 2.5, 3.5], [0.5, 1.5, 2.5, 3.5]),
        ("string_val", DataType.DT_STRING, [b"a", b"b"], [b"a", b"b", b"b", b"b"]),
        ("string_val", DataType.DT_STRING, [], [b""] * 4),
    ],
)
def test_short_repeated_fields_repeat_the_last_value_or_zero(field, dtype, values, expected):
    proto = TensorProto(dtype=dtype, **{field: values})
    proto.tensor_shape.dim.add(size=4)
    decoded = decode_tensor(proto)
    assert decoded.tolist() == expected
    assert tensor_values(proto) == ((4,), expected)
    if dtype != DataType.DT_STRING:  # TensorFlow's own reader agrees
        official = tf.make_ndarray(tf_tensor_pb2.TensorProto.FromString(proto.SerializeToString()))
        assert official.tolist() == expected


def test_half_values_are_bit_patterns():
    proto = TensorProto(dtype=DataType.DT_HALF, half_val=[0x3C00, 0xC000])  # 1.0, -2.0
    proto.tensor_shape.dim.add(size=2)
    decoded = decode_tensor(proto)
    assert decoded.dtype == np.float16
    assert decoded.tolist() == [1.0, -2.0]
    assert tensor_values(proto) == ((2,), [1.0, -2.0])


def test_more_values_than_the_shape_holds_is_an_error():
    proto = TensorProto(dtype=DataType.DT_FLOAT, float_val=[1.0, 2.0, 3.0])
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(ValueError, match=re.escape("3 values do not fit shape [2]")):
        decode_tensor(proto)
    with pytest.raises(ValueError, match=re.escape("3 values do not fit shape [2]")):
        tensor_values(proto)


def test_tensor_content_of_the_wrong_size_is_an_error():
    proto = TensorProto(dtype=DataType.DT_INT64, tensor_content=b"\x00" * 12)
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(
        ValueError, match=re.escape("tensor_content has 12 bytes; shape [2] of int64 needs 16")
    ):
        decode_tensor(proto)
    with pytest.raises(ValueError, match=re.escape("tensor_content has 12 bytes")):
        tensor_values(proto)


def test_unsupported_dtypes_are_named():
    with pytest.raises(ValueError, match="unsupported tensor dtype DT_COMPLEX64"):
        decode_tensor(lean(tf.make_tensor_proto(np.array([1j], np.complex64))))
    with pytest.raises(ValueError, match="unsupported tensor dtype 400"):
        decode_tensor(TensorProto(dtype=400))
    with pytest.raises(ValueError, match="unsupported tensor dtype 400"):
        tensor_values(TensorProto(dtype=400))


def test_decoded_arrays_are_writable_copies():
    decoded = decode_tensor(lean(tf.make_tensor_proto(np.zeros(3, np.float32))))
    decoded[0] = 1.0
    assert decoded.tolist() == [1.0, 0.0, 0.0]
