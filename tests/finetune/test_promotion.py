"""The champion/challenger rule, case by case."""

from __future__ import annotations

import pytest

from service.contract.train_config import TrainConfig
from service.finetune.promotion import HELD, PROMOTED, decide, target_label


def config(**options: object) -> TrainConfig:
    return TrainConfig.parse({"model_name": "m", **options})


def metrics(accuracy: float, version: int | None = None) -> dict:
    return {"version": version, "accuracy": accuracy, "log_loss": 0.5, "macro_f1": accuracy}


def test_the_first_version_is_promoted():
    assert decide(config(), metrics(0.4), None, None, False) == (
        PROMOTED,
        "the first version of the model",
    )


def test_the_first_version_is_held_below_min_accuracy():
    decision, reason = decide(config(min_accuracy=0.9), metrics(0.5), None, None, False)
    assert decision == HELD
    assert reason == "accuracy 0.5000 is below min_accuracy 0.9000"


@pytest.mark.parametrize(
    ("candidate", "tolerance", "expected"),
    [(0.90, 0.0, PROMOTED), (0.91, 0.0, PROMOTED), (0.89, 0.0, HELD), (0.85, 0.05, PROMOTED)],
)
def test_auto_compares_accuracy_with_the_tolerance(candidate, tolerance, expected):
    decision, reason = decide(
        config(promote_tolerance=tolerance), metrics(candidate), metrics(0.9, 1), 1, True
    )
    assert decision == expected, reason
    assert "on the same held-out images" in reason


def test_different_classes_skip_the_comparison_and_hold():
    decision, reason = decide(config(), metrics(1.0), None, 3, False)
    assert decision == HELD
    assert reason.startswith("the classes differ from stable version 3's")


@pytest.mark.parametrize(("policy", "expected"), [("always", PROMOTED), ("never", HELD)])
def test_always_and_never_skip_the_comparison(policy: str, expected: str):
    decision, reason = decide(
        config(promote=policy, min_accuracy=0.99), metrics(0.1), metrics(0.9, 1), 1, True
    )
    assert (decision, reason) == (expected, f"promote is {policy!r}")


def test_the_label_follows_the_decision():
    assert target_label({"decision": PROMOTED}) == "stable"
    assert target_label({"decision": HELD}) == "canary"
