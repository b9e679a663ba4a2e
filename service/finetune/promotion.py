"""Champion/challenger: should a new version replace the `stable` one?

Both are judged the same way: their exported SavedModels' ``serving_default`` signature,
on the same held-out images of the new job (the encoded files, decoded inside each model
exactly as a request would be). A candidate that is not promoted is still published and
served under ``canary``. Mislabelled uploads make the held-out split wrong as well, so the
comparison cannot catch them; ``min_accuracy`` can.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from service.contract.repository import ASSETS_EXTRA, LABELS_FILE, ModelRepository
from service.contract.serving_state import CANARY, STABLE
from service.contract.signatures import BYTES_INPUT, PROBABILITIES, SERVING_DEFAULT
from service.contract.train_config import TrainConfig
from service.training.evaluation import evaluate
from service.training.trainer import TrainingResult

PROMOTED = "promoted"
HELD = "held"
_BATCH = 32


@dataclass(frozen=True)
class HeldOut:
    """The new job's held-out images (encoded) and their class indices."""

    images: list[bytes]
    labels: np.ndarray
    classes: tuple[str, ...]

    @classmethod
    def of(cls, result: TrainingResult) -> HeldOut:
        label_of = dict(zip(result.dataset.paths, result.dataset.labels, strict=True))
        paths = result.validation_paths
        images = [path.read_bytes() for path in paths]
        labels = np.asarray([label_of[path] for path in paths], dtype=np.int64)
        return cls(images, labels, result.classes)


def version_metrics(version_dir: Path, held_out: HeldOut) -> dict[str, float]:
    """Accuracy, log loss and macro F1 of the SavedModel in ``version_dir`` on ``held_out``."""
    loaded = tf.saved_model.load(str(version_dir))
    serve = loaded.signatures[SERVING_DEFAULT]
    batches = []
    for start in range(0, len(held_out.images), _BATCH):
        chunk = tf.constant(held_out.images[start : start + _BATCH], dtype=tf.string)
        batches.append(serve(**{BYTES_INPUT: chunk})[PROBABILITIES].numpy())
    report = evaluate(np.concatenate(batches), held_out.labels, held_out.classes)
    return {
        "accuracy": round(float(report["accuracy"]), 6),  # type: ignore[arg-type]
        "log_loss": round(float(report["loss"]), 6),  # type: ignore[arg-type]
        "macro_f1": round(float(report["macro_f1"]), 6),  # type: ignore[arg-type]
    }


def version_classes(version_dir: Path) -> tuple[str, ...]:
    text = (version_dir / ASSETS_EXTRA / LABELS_FILE).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def assess(
    candidate_dir: Path,
    held_out: HeldOut,
    config: TrainConfig,
    repository: ModelRepository,
) -> dict[str, Any]:
    """The promotion decision for the export in ``candidate_dir``, as the model card keeps it.

    ``candidate.version`` is filled in when the version number is known (at publish).
    """
    model = config.model_name
    candidate = {"version": None, **version_metrics(candidate_dir, held_out)}
    stable_version = repository.serving_state(model).labels.get(STABLE)
    stable_dir = None
    if stable_version is not None and stable_version in repository.versions(model):
        stable_dir = repository.version_path(model, stable_version)
    stable: dict[str, Any] | None = None
    comparable = False
    if stable_dir is not None and config.promote == "auto":
        comparable = version_classes(stable_dir) == held_out.classes
        if comparable:
            stable = {"version": stable_version, **version_metrics(stable_dir, held_out)}
    decision, reason = decide(config, candidate, stable, stable_version, comparable)
    return {
        "promotion": {
            "decision": decision,
            "reason": reason,
            "candidate": candidate,
            "stable": stable,
        }
    }


def decide(
    config: TrainConfig,
    candidate: dict[str, Any],
    stable: dict[str, Any] | None,
    stable_version: int | None,
    comparable: bool,
) -> tuple[str, str]:
    """(``promoted`` | ``held``, why) under the job's ``promote`` policy."""
    if config.promote == "always":
        return PROMOTED, "promote is 'always'"
    if config.promote == "never":
        return HELD, "promote is 'never'"
    accuracy = candidate["accuracy"]
    if config.min_accuracy is not None and accuracy < config.min_accuracy:
        return HELD, f"accuracy {accuracy:.4f} is below min_accuracy {config.min_accuracy:.4f}"
    if stable_version is None:
        return PROMOTED, "the first version of the model"
    if not comparable or stable is None:
        return HELD, (
            f"the classes differ from stable version {stable_version}'s, so the comparison"
            " was skipped; move the label by hand or train with promote 'always'"
        )
    floor = stable["accuracy"] - config.promote_tolerance
    verdict = f"accuracy {accuracy:.4f} vs stable's {stable['accuracy']:.4f}"
    if config.promote_tolerance:
        verdict += f" - tolerance {config.promote_tolerance:.4f}"
    if accuracy >= floor:
        return PROMOTED, f"{verdict}: not worse on the same held-out images"
    return HELD, f"{verdict}: worse on the same held-out images"


def target_label(promotion: dict[str, Any]) -> str:
    """The label a published version gets from its decision: ``stable`` or ``canary``."""
    return STABLE if promotion.get("decision") == PROMOTED else CANARY
