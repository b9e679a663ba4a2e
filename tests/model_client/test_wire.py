"""protos/service/model_client/'s lean messages are byte-compatible with tensorflow-serving-api.

Both directions: what the API tier sends parses as TensorFlow Serving's messages and writes
back to the same bytes, and TensorFlow Serving's answers parse as the lean messages, write
back to the same bytes and decode to the values ``tf.make_ndarray`` gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from google.protobuf.message import Message
from tensorflow.core.framework import tensor_pb2 as tf_tensor_pb2
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.framework import types_pb2 as tf_types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2 as tf_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2 as tf_status_pb2
from tensorflow_serving.apis import model_pb2 as tf_model_pb2
from tensorflow_serving.apis import predict_pb2 as tf_predict_pb2

from service.model_client import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    tensor_pb2,
)
from service.model_client.codec import decode_tensor, encode_strings

IMAGES = [b"\xff\xd8\xff\xe0 first", b"\x89PNG second", b""]

# Every lean message and enum, and the TensorFlow / TensorFlow Serving type it copies.
COUNTERPARTS: list[tuple[Descriptor | EnumDescriptor, Descriptor | EnumDescriptor]] = [
    (tensor_pb2.DataType.DESCRIPTOR, tf_types_pb2.DataType.DESCRIPTOR),
    (tensor_pb2.TensorShapeProto.DESCRIPTOR, tensor_shape_pb2.TensorShapeProto.DESCRIPTOR),
    (tensor_pb2.TensorProto.DESCRIPTOR, tf_tensor_pb2.TensorProto.DESCRIPTOR),
    (model_pb2.ModelSpec.DESCRIPTOR, tf_model_pb2.ModelSpec.DESCRIPTOR),
    (predict_pb2.PredictRequest.DESCRIPTOR, tf_predict_pb2.PredictRequest.DESCRIPTOR),
    (predict_pb2.PredictResponse.DESCRIPTOR, tf_predict_pb2.PredictResponse.DESCRIPTOR),
    *[
        (getattr(get_model_status_pb2, name).DESCRIPTOR, getattr(tf_status_pb2, name).DESCRIPTOR)
        for name in ("GetModelStatusRequest", "GetModelStatusResponse", "ModelVersionStatus")
    ],
    (
        get_model_status_pb2.StatusProto.DESCRIPTOR,
        tf_status_pb2.ModelVersionStatus.DESCRIPTOR.fields_by_name["status"].message_type,
    ),
    *[
        (getattr(get_model_metadata_pb2, n).DESCRIPTOR, getattr(tf_metadata_pb2, n).DESCRIPTOR)
        for n in ("GetModelMetadataRequest", "GetModelMetadataResponse", "SignatureDefMap")
    ],
    (get_model_metadata_pb2.SignatureDef.DESCRIPTOR, meta_graph_pb2.SignatureDef.DESCRIPTOR),
    (get_model_metadata_pb2.TensorInfo.DESCRIPTOR, meta_graph_pb2.TensorInfo.DESCRIPTOR),
]


def reparsed(message: Message, other: type[Message]) -> bytes:
    """``message``'s bytes parsed as ``other`` and written back."""
    return other.FromString(message.SerializeToString(deterministic=True)).SerializeToString(
        deterministic=True
    )


def enum_values(enum: EnumDescriptor) -> set[tuple[str, int]]:
    return {(value.name, value.number) for value in enum.values}


def field_signature(field) -> tuple:
    kind = field.message_type or field.enum_type
    return (
        field.number,
        field.type,
        field.is_repeated,
        field.json_name,
        field.containing_oneof.name if field.containing_oneof else None,
        kind.name if kind else None,  # nested and map-entry types keep TensorFlow's names
    )


@pytest.mark.parametrize(
    ("lean", "official"), COUNTERPARTS, ids=[lean.name for lean, _ in COUNTERPARTS]
)
def test_every_lean_field_and_enum_value_matches_tensorflow(lean, official):
    if isinstance(lean, EnumDescriptor):
        assert enum_values(lean) <= enum_values(official)
        return
    for field in lean.fields:
        counterpart = official.fields_by_name[field.name]
        assert field_signature(field) == field_signature(counterpart)
        if field.enum_type:
            assert enum_values(field.enum_type) <= enum_values(counterpart.enum_type)
    for nested in lean.nested_types:
        for field in nested.fields:
            counterpart = official.nested_types_by_name[nested.name].fields_by_name[field.name]
            assert field_signature(field) == field_signature(counterpart)


# -- requests: lean → TensorFlow Serving ----------------------------------------------------


def test_predict_request_bytes_equal_the_official_request():
    lean = predict_pb2.PredictRequest(output_filter=["probabilities", "labels"])
    lean.model_spec.name, lean.model_spec.signature_name = "shapes", "serving_default"
    lean.model_spec.version.value = 7
    lean.inputs["image_bytes"].CopyFrom(encode_strings(IMAGES))

    official = tf_predict_pb2.PredictRequest(output_filter=["probabilities", "labels"])
    official.model_spec.name, official.model_spec.signature_name = "shapes", "serving_default"
    official.model_spec.version.value = 7
    official.inputs["image_bytes"].CopyFrom(
        tf.make_tensor_proto(IMAGES, dtype=tf.string, shape=[len(IMAGES)])
    )

    wire = lean.SerializeToString(deterministic=True)
    assert wire == official.SerializeToString(deterministic=True)
    assert reparsed(lean, tf_predict_pb2.PredictRequest) == wire
    parsed = tf_predict_pb2.PredictRequest.FromString(wire)
    assert list(tf.make_ndarray(parsed.inputs["image_bytes"])) == IMAGES


def test_model_spec_with_a_version_label_keeps_the_oneof():
    lean = model_pb2.ModelSpec(name="shapes", version_label="stable")
    parsed = tf_model_pb2.ModelSpec.FromString(lean.SerializeToString())
    assert parsed.WhichOneof("version_choice") == "version_label"
    assert parsed.version_label == "stable"
    assert reparsed(lean, tf_model_pb2.ModelSpec) == lean.SerializeToString()


def test_get_model_status_request_bytes_equal_the_official_request():
    lean = get_model_status_pb2.GetModelStatusRequest()
    lean.model_spec.name = "shapes"
    lean.model_spec.version.value = 2
    official = tf_status_pb2.GetModelStatusRequest()
    official.model_spec.name = "shapes"
    official.model_spec.version.value = 2
    assert lean.SerializeToString() == official.SerializeToString()
    assert reparsed(lean, tf_status_pb2.GetModelStatusRequest) == lean.SerializeToString()


def test_get_model_metadata_request_bytes_equal_the_official_request():
    lean = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    lean.model_spec.name = "shapes"
    official = tf_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    official.model_spec.name = "shapes"
    assert lean.SerializeToString() == official.SerializeToString()
    assert reparsed(lean, tf_metadata_pb2.GetModelMetadataRequest) == lean.SerializeToString()


# -- responses: TensorFlow Serving → lean ---------------------------------------------------


def official_predict_response() -> tf_predict_pb2.PredictResponse:
    """A response like the server writes, plus one tensor of each dtype the codec reads."""
    response = tf_predict_pb2.PredictResponse()
    response.model_spec.name, response.model_spec.signature_name = "shapes", "serving_default"
    response.model_spec.version.value = 3
    rng = np.random.default_rng(0)
    arrays = {
        "probabilities": rng.random((2, 3), dtype=np.float32),
        "labels": np.array([[b"circle", b"square"], [b"triangle", b"circle"]]),
        "label_scores": rng.random((2, 2), dtype=np.float32),
        "double": rng.random(4),
        "int32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "int64": np.array([2**40, -1], dtype=np.int64),
        "bool": np.array([True, False, True]),
        "half": np.array([1.5, -2.0, 65504.0], dtype=np.float16),
    }
    for alias, array in arrays.items():
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(array))
    # Typed-field encodings (a scalar filled into a shape) as TensorFlow writes them.
    response.outputs["filled"].CopyFrom(tf.make_tensor_proto(0.25, shape=[2, 2]))
    response.outputs["filled_half"].CopyFrom(
        tf.make_tensor_proto(np.float16(3.5), dtype=tf.float16, shape=[3])
    )
    response.outputs["strings_filled"].CopyFrom(tf.make_tensor_proto(b"x", shape=[2]))
    return response


def test_predict_response_round_trips_to_identical_bytes_and_decodes_like_make_ndarray():
    official = official_predict_response()
    wire = official.SerializeToString(deterministic=True)
    lean = predict_pb2.PredictResponse.FromString(wire)
    assert lean.SerializeToString(deterministic=True) == wire
    assert (lean.model_spec.name, lean.model_spec.version.value) == ("shapes", 3)
    assert sorted(lean.outputs) == sorted(official.outputs)
    for alias, proto in official.outputs.items():
        expected = tf.make_ndarray(proto)
        decoded = decode_tensor(lean.outputs[alias])
        assert decoded.dtype == expected.dtype, alias
        np.testing.assert_array_equal(decoded, expected, err_msg=alias)


def test_fields_the_lean_messages_leave_out_survive_parsing():
    official = tf_predict_pb2.PredictRequest(client_id=b"caller-1")
    official.model_spec.name = "shapes"
    official.request_options.max_cache_length = 64
    official.predict_streamed_options.split_dimensions["x"] = 1
    official.inputs["u"].CopyFrom(tf.make_tensor_proto(np.array([1, 2], np.uint32), shape=[2]))
    official.inputs["u"].uint32_val.extend([7, 8])  # field 16, unknown to the lean TensorProto
    official.inputs["info"].CopyFrom(tf.make_tensor_proto(np.array([1 + 2j], np.complex64)))
    wire = official.SerializeToString(deterministic=True)
    assert reparsed(official, predict_pb2.PredictRequest) == wire


def test_get_model_status_response_round_trips_with_states_and_errors():
    official = tf_status_pb2.GetModelStatusResponse()
    official.model_version_status.add(version=1, state=tf_status_pb2.ModelVersionStatus.AVAILABLE)
    failed = official.model_version_status.add(
        version=2, state=tf_status_pb2.ModelVersionStatus.END
    )
    failed.status.error_code = 3  # INVALID_ARGUMENT
    failed.status.error_message = "cannot load version 2"
    lean = get_model_status_pb2.GetModelStatusResponse.FromString(official.SerializeToString())
    assert lean.SerializeToString() == official.SerializeToString()
    states = get_model_status_pb2.ModelVersionStatus.State
    assert [(s.version, states.Name(s.state)) for s in lean.model_version_status] == [
        (1, "AVAILABLE"),
        (2, "END"),
    ]
    # The json_name options are TensorFlow Serving's, so the REST JSON looks the same.
    assert json_format.MessageToDict(lean) == json_format.MessageToDict(official)
    assert "model_version_status" in json_format.MessageToDict(lean)


def official_signatures() -> tf_metadata_pb2.SignatureDefMap:
    signatures = tf_metadata_pb2.SignatureDefMap()
    default = signatures.signature_def["serving_default"]
    default.method_name = "tensorflow/serving/predict"
    default.inputs["image_bytes"].CopyFrom(
        meta_graph_pb2.TensorInfo(
            name="serving_default_image_bytes:0",
            dtype=tf_types_pb2.DT_STRING,
            tensor_shape=tf.TensorShape([None]).as_proto(),
        )
    )
    default.outputs["probabilities"].CopyFrom(
        meta_graph_pb2.TensorInfo(
            name="StatefulPartitionedCall:0",
            dtype=tf_types_pb2.DT_FLOAT,
            tensor_shape=tf.TensorShape([None, 3]).as_proto(),
        )
    )
    default.outputs["sparse"].coo_sparse.values_tensor_name = "values:0"  # not in the lean copy
    default.defaults["k"].CopyFrom(tf.make_tensor_proto(5))  # neither is this
    return signatures


def test_get_model_metadata_response_round_trips_and_its_any_parses_as_the_lean_map():
    official = tf_metadata_pb2.GetModelMetadataResponse()
    official.model_spec.name = "shapes"
    official.model_spec.version.value = 1
    official.metadata["signature_def"].Pack(official_signatures())
    wire = official.SerializeToString(deterministic=True)
    lean = get_model_metadata_pb2.GetModelMetadataResponse.FromString(wire)
    assert lean.SerializeToString(deterministic=True) == wire

    packed = lean.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = get_model_metadata_pb2.SignatureDefMap.FromString(packed.value)
    expected = official_signatures().SerializeToString(deterministic=True)
    assert signatures.SerializeToString(deterministic=True) == expected
    image_bytes = signatures.signature_def["serving_default"].inputs["image_bytes"]
    assert tensor_pb2.DataType.Name(image_bytes.dtype) == "DT_STRING"
    assert [d.size for d in image_bytes.tensor_shape.dim] == [-1]
