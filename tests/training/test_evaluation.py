from __future__ import annotations

import json
import math

import numpy as np
import pytest

from service.training.evaluation import evaluate

CLASSES = ("cat", "dog", "fox")
# Seven validation images; "fox" is never the top prediction.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2])
PROBABILITIES = np.array(
    [
        [0.8, 0.1, 0.1],  # cat -> cat
        [0.6, 0.3, 0.1],  # cat -> cat
        [0.2, 0.7, 0.1],  # cat -> dog
        [0.1, 0.9, 0.0],  # dog -> dog
        [0.5, 0.4, 0.1],  # dog -> cat
        [0.6, 0.4, 0.0],  # fox -> cat, with probability 0 on the true class
        [0.3, 0.4, 0.3],  # fox -> dog
    ]
)


@pytest.fixture(scope="module")
def report() -> dict:
    return evaluate(PROBABILITIES, LABELS, CLASSES)


def test_confusion_matrix_rows_are_true_classes(report):
    assert report["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [1, 1, 0]]


def test_accuracy_and_count(report):
    assert report["count"] == 7
    assert report["accuracy"] == pytest.approx(3 / 7)


def test_top_k_covers_every_class_when_there_are_fewer_than_five(report):
    assert report["top_k"] == 3
    assert report["top_k_accuracy"] == 1.0


def test_loss_is_mean_negative_log_probability_of_the_true_class_clipped_at_1e_7(report):
    true_class_probabilities = [0.8, 0.6, 0.2, 0.9, 0.4, 1e-7, 0.3]

    expected = -sum(math.log(p) for p in true_class_probabilities) / 7
    assert report["loss"] == pytest.approx(expected)


def test_per_class_precision_recall_f1_support(report):
    assert report["per_class"] == {
        "cat": {
            "precision": pytest.approx(2 / 4),
            "recall": pytest.approx(2 / 3),
            "f1": pytest.approx(4 / 7),
            "support": 3,
        },
        "dog": {
            "precision": pytest.approx(1 / 3),
            "recall": pytest.approx(1 / 2),
            "f1": pytest.approx(2 / 5),
            "support": 2,
        },
        "fox": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2},
    }


def test_class_never_predicted_has_precision_zero_not_nan(report):
    fox = report["per_class"]["fox"]

    assert not any(math.isnan(fox[k]) for k in ("precision", "recall", "f1"))
    assert fox["precision"] == 0.0


def test_macro_f1_averages_every_class(report):
    assert report["macro_f1"] == pytest.approx((4 / 7 + 2 / 5 + 0.0) / 3)


def test_report_is_plain_json(report):
    assert json.loads(json.dumps(report)) == report


def test_top_k_is_five_with_more_classes():
    classes = [f"c{i}" for i in range(7)]
    # True class ranked 2nd (inside the top 5), then 6th (outside it).
    probabilities = np.array(
        [
            [0.30, 0.25, 0.15, 0.10, 0.08, 0.07, 0.05],
            [0.30, 0.25, 0.15, 0.10, 0.08, 0.07, 0.05],
        ]
    )
    labels = np.array([1, 5])

    report = evaluate(probabilities, labels, classes)

    assert report["top_k"] == 5
    assert report["top_k_accuracy"] == 0.5
    assert report["accuracy"] == 0.0
