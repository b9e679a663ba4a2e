"""The exported model's signatures: what the exporter writes and every client calls.

``serving_default`` takes encoded images (``image_bytes``, DT_STRING [-1]); ``serving_tensor``
takes pixels (``images``, float32 [-1, H, W, 3], 0-255). Both answer ``probabilities``
[-1, C], ``labels`` [-1, K] and ``label_scores`` [-1, K] with K = min(5, C).
"""

from __future__ import annotations

SERVING_DEFAULT = "serving_default"
SERVING_TENSOR = "serving_tensor"
BYTES_INPUT = "image_bytes"
TENSOR_INPUT = "images"
PROBABILITIES = "probabilities"
LABELS = "labels"
LABEL_SCORES = "label_scores"
OUTPUTS = (PROBABILITIES, LABELS, LABEL_SCORES)
MAX_TOP_K = 5


def top_k(num_classes: int) -> int:
    """How many ranked labels the signatures return for ``num_classes`` classes."""
    return min(MAX_TOP_K, num_classes)
