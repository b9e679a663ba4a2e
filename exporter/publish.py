"""Export a finished training run and publish it as the next version in the repository."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from exporter.export import (
    WARMUP_IMAGES,
    export_model,
    validation_image_bytes,
    verify_export,
)
from exporter.image_guard import DEFAULT_MAX_PIXELS
from service.contract.repository import ASSETS_EXTRA, MODEL_CARD_FILE, ModelRepository
from service.training.trainer import TrainingResult


@dataclass(frozen=True)
class PublishedVersion:
    model: str
    version: int
    path: Path
    onnx_path: Path
    onnx_max_abs_diff: float
    serving_max_abs_diff: float

    def summary(self) -> dict[str, object]:
        return {
            "version": self.version,
            "saved_model_path": str(self.path),
            "onnx_path": str(self.onnx_path),
            "onnx_max_abs_diff": self.onnx_max_abs_diff,
            "serving_max_abs_diff": self.serving_max_abs_diff,
        }


def publish_result(
    result: TrainingResult,
    repository: ModelRepository,
    model_name: str | None = None,
    job_id: str | None = None,
    assess: Callable[[Path], dict[str, Any]] | None = None,
    last_check: Callable[[], None] | None = None,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
) -> PublishedVersion:
    """Export ``result`` into a staging folder, check it answers like the trained model,
    then publish it as the model's next version.

    Nothing numeric appears in the repository unless every check passed. ``job_id`` is
    written into the model card before the rename, so a job that is retried after a crash
    can tell whether its version already exists (``ModelRepository.find_job_version``).
    ``assess(staging)`` runs on the verified export before the rename; what it returns is
    added to the model card (the promotion decision is). ``last_check()`` runs under the
    repository lock right before the rename; raising there (a job cancelled at the last
    moment) publishes nothing. ``max_image_pixels`` is the limit the exported
    ``serving_default`` enforces on each image's header.
    """
    name = model_name or result.config.model_name
    samples = validation_image_bytes(result, WARMUP_IMAGES)
    checked: dict[str, float] = {}
    extra: dict[str, Any] = {}

    def verify(staging: Path) -> None:
        checked["diff"] = verify_export(staging, result.classifier.model, samples)
        if assess is not None:
            extra.update(assess(staging))

    with repository.staging(name) as staging:
        report = export_model(result, name, staging, max_image_pixels=max_image_pixels)
        stamp = partial(_stamp_card, job_id=job_id, extra=extra, last_check=last_check)
        version = repository.publish(name, staging, verify=verify, stamp=stamp)
    path = repository.version_path(name, version)
    return PublishedVersion(
        name,
        version,
        path,
        path / ASSETS_EXTRA / report.onnx_path.name,
        report.onnx_max_abs_diff,
        checked["diff"],
    )


def _stamp_card(
    staging: Path,
    version: int,
    job_id: str | None,
    extra: dict[str, Any],
    last_check: Callable[[], None] | None,
) -> None:
    # The number is only known under the repository lock, just before the rename.
    if last_check is not None:
        last_check()
    card_path = staging / ASSETS_EXTRA / MODEL_CARD_FILE
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card.update(extra)
    card["version"] = version
    card["job_id"] = job_id
    promotion = card.get("promotion")
    if isinstance(promotion, dict) and isinstance(promotion.get("candidate"), dict):
        promotion["candidate"]["version"] = version  # the candidate is this very version
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
