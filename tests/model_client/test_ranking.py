"""``service.model_client.ranking`` turns the model server's tensors into ranked predictions."""

from __future__ import annotations

import math
import struct

import pytest

from service.errors import FtserveError
from service.model_client.ranking import rank
from service.model_client.tensor_pb2 import DataType, TensorProto

MALFORMED = "The model server answered with a malformed tensor"


def floats(rows: list[list[float]]) -> TensorProto:
    """A float32 [N, K] tensor in ``tensor_content``, as TensorFlow Serving sends one."""
    proto = TensorProto(dtype=DataType.DT_FLOAT)
    for size in (len(rows), len(rows[0]) if rows else 0):
        proto.tensor_shape.dim.add(size=size)
    values = [value for row in rows for value in row]
    proto.tensor_content = struct.pack(f"<{len(values)}f", *values)
    return proto


def strings(rows: list[list[bytes]]) -> TensorProto:
    proto = TensorProto(dtype=DataType.DT_STRING)
    for size in (len(rows), len(rows[0]) if rows else 0):
        proto.tensor_shape.dim.add(size=size)
    proto.string_val.extend(value for row in rows for value in row)
    return proto


def vector(values: list[float]) -> TensorProto:
    proto = TensorProto(dtype=DataType.DT_FLOAT, float_val=values)
    proto.tensor_shape.dim.add(size=len(values))
    return proto


def labelled(labels: list[list[bytes]], scores: list[list[float]]) -> dict[str, TensorProto]:
    return {"labels": strings(labels), "label_scores": floats(scores)}


def test_labels_and_scores_give_each_images_best_k():
    outputs = labelled(
        [[b"cat", b"dog", b"emu"], [b"emu", b"cat", b"dog"]], [[0.5, 0.25, 0.25]] * 2
    )
    outputs["probabilities"] = floats([[0.1, 0.2, 0.7]] * 2)  # not read when labels exist
    assert rank(outputs, 2) == [
        {
            "label": "cat",
            "score": 0.5,
            "top_k": [{"label": "cat", "score": 0.5}, {"label": "dog", "score": 0.25}],
        },
        {
            "label": "emu",
            "score": 0.5,
            "top_k": [{"label": "emu", "score": 0.5}, {"label": "cat", "score": 0.25}],
        },
    ]


def test_top_k_past_the_models_k_lists_every_label():
    outputs = labelled([[b"a", b"b"]], [[0.75, 0.25]])
    assert [p["label"] for p in rank(outputs, 1000)[0]["top_k"]] == ["a", "b"]


def test_scores_are_the_float32_values_sent():
    (prediction,) = rank(labelled([[b"a"]], [[0.1]]), 5)
    assert prediction["score"] == struct.unpack("<f", struct.pack("<f", 0.1))[0]


def test_labels_that_are_not_utf8_are_replaced_not_refused():
    (prediction,) = rank(labelled([[b"caf\xe9"]], [[1.0]]), 1)
    assert prediction["label"] == "caf\ufffd"


def test_probabilities_alone_are_ranked_by_class_index_ties_in_order_nan_last():
    outputs = {"probabilities": floats([[0.25, math.nan, 0.5, 0.25]])}
    (prediction,) = rank(outputs, 4)
    assert [p["label"] for p in prediction["top_k"]] == ["2", "0", "3", "1"]
    # A score that is not a number is sent as null, as pydantic's JSON would.
    assert [p["score"] for p in prediction["top_k"]] == [0.5, 0.25, 0.25, None]


def test_one_prediction_per_image_even_for_many_images():
    probabilities = [[float(i % 3 == j) for j in range(3)] for i in range(7)]
    predictions = rank({"probabilities": floats(probabilities)}, 1)
    assert [p["label"] for p in predictions] == ["0", "1", "2", "0", "1", "2", "0"]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({"scores": floats([[1.0]])}, "The model answered without labels or probabilities"),
        (labelled([[b"a", b"b"]], [[1.0]]), "The model server answered with a malformed tensor"),
        (
            {"probabilities": vector([0.5, 0.5])},
            "The model server answered with a malformed tensor",
        ),
        (labelled([[], []], [[], []]), "The model answered with no labels"),
    ],
    ids=["no-known-output", "shapes-differ", "not-a-matrix", "no-labels"],
)
def test_answers_that_cannot_be_ranked_are_errors(outputs: dict[str, TensorProto], message: str):
    with pytest.raises(FtserveError) as info:
        rank(outputs, 5)
    assert info.value.message == message
