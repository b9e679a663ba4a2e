"""The model server's answer as ranked labels, the form ``POST /predict`` replies in.

ftserve's models answer ``labels`` and ``label_scores`` ([N, K], best first); other models'
``probabilities`` ([N, C]) are ranked here, labelled by class index. The tensors are read as
they came off the wire (``codec.tensor_values``), without numpy: a reply needs a few values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from service.contract.signatures import LABEL_SCORES, LABELS, PROBABILITIES
from service.errors import FtserveError
from service.model_client.codec import tensor_values
from service.model_client.tensor_pb2 import TensorProto


def rank(outputs: Mapping[str, TensorProto], top_k: int) -> list[dict[str, Any]]:
    """One prediction per image from the signature's outputs, with at most ``top_k`` labels.

    ftserve's models answer ``labels`` and ``label_scores`` ([N, K], best first); other
    models' ``probabilities`` are ranked here, labelled by class index. Each prediction is
    ``{"label", "score", "top_k": [{"label", "score"}, ...]}`` (a ``Prediction``).
    """
    try:
        rows = list(_ranked_rows(outputs, top_k))
    except ValueError as exc:
        raise FtserveError("The model server answered with a malformed tensor") from exc
    predictions = []
    for labels, scores in rows:
        ranked = [
            {"label": label, "score": _score(score)}
            for label, score in zip(labels, scores, strict=True)
        ]
        if not ranked:
            raise FtserveError("The model answered with no labels")
        predictions.append({**ranked[0], "top_k": ranked})
    return predictions


def _ranked_rows(
    outputs: Mapping[str, TensorProto], top_k: int
) -> Iterator[tuple[list[str], list[float]]]:
    """Each image's best ``top_k`` labels and their scores, best first."""
    if LABELS in outputs and LABEL_SCORES in outputs:
        shape, labels = tensor_values(outputs[LABELS])
        score_shape, scores = tensor_values(outputs[LABEL_SCORES])
        rows, width = _matrix(shape, score_shape)
        k = min(top_k, width)
        for start in _row_starts(rows, width):
            # Only the labels shown are decoded from bytes.
            yield [_text(label) for label in labels[start : start + k]], scores[start : start + k]
    elif PROBABILITIES in outputs:
        shape, probabilities = tensor_values(outputs[PROBABILITIES])
        rows, width = _matrix(shape, shape)
        for start in _row_starts(rows, width):
            row = probabilities[start : start + width]
            # Stable, and NaN last, as numpy's argsort of the negated row would order them.
            order = sorted(range(width), key=lambda i: (math.isnan(row[i]), -row[i]))[:top_k]
            yield [str(i) for i in order], [row[i] for i in order]
    else:
        raise FtserveError("The model answered without labels or probabilities")


def _matrix(shape: tuple[int, ...], other: tuple[int, ...]) -> tuple[int, int]:
    """(N, K) of two [N, K] outputs that must agree (labels and their scores)."""
    if len(shape) != 2 or shape != other:
        raise ValueError(f"outputs of shapes {list(shape)} and {list(other)}, not [N, K] both")
    return shape[0], shape[1]


def _row_starts(rows: int, width: int) -> list[int]:
    """Where each row starts in the flat values (every row at 0, empty, when K is 0)."""
    return [index * width for index in range(rows)]


def _score(value: float) -> float | None:
    # What pydantic's JSON gives a float that is not finite; json.dumps would fail on it.
    return value if math.isfinite(value) else None


def _text(value: object) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
