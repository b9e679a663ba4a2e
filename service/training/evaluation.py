"""Classification metrics on the validation split, from predicted probabilities."""

from __future__ import annotations

import numpy as np


def evaluate(
    probabilities: np.ndarray, labels: np.ndarray, classes: tuple[str, ...] | list[str]
) -> dict[str, object]:
    """Accuracy, top-k accuracy (k = min(5, classes)), log loss, per-class P/R/F1, confusion.

    ``confusion[i][j]`` counts images of class i predicted as class j.
    """
    num_classes = len(classes)
    k = min(5, num_classes)
    predicted = probabilities.argmax(axis=1)
    top_k = np.argsort(-probabilities, axis=1)[:, :k]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    picked = probabilities[np.arange(len(labels)), labels]
    return {
        "count": len(labels),
        "accuracy": float(np.mean(predicted == labels)),
        "top_k": k,
        "top_k_accuracy": float(np.mean((top_k == labels[:, None]).any(axis=1))),
        "loss": float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0)))),
        "per_class": _per_class(confusion, classes),
        "macro_f1": float(np.mean([_f1(confusion, i) for i in range(num_classes)])),
        "confusion_matrix": confusion.tolist(),
    }


def _per_class(confusion: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict:
    report = {}
    for i, name in enumerate(classes):
        report[name] = {
            "precision": _ratio(confusion[i, i], confusion[:, i].sum()),
            "recall": _ratio(confusion[i, i], confusion[i, :].sum()),
            "f1": _f1(confusion, i),
            "support": int(confusion[i, :].sum()),
        }
    return report


def _f1(confusion: np.ndarray, i: int) -> float:
    precision = _ratio(confusion[i, i], confusion[:, i].sum())
    recall = _ratio(confusion[i, i], confusion[i, :].sum())
    return _ratio(2 * precision * recall, precision + recall)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0
