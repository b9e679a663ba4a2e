"""Export a finished training run and publish it as the next version in the repository."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from exporter.card import CARD_FILE
from exporter.export import (
    ASSETS_EXTRA,
    WARMUP_IMAGES,
    ExportReport,
    export_model,
    validation_image_bytes,
    verify_export,
)
from exporter.repository import ModelRepository
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
    result: TrainingResult, repository: ModelRepository, model_name: str | None = None
) -> PublishedVersion:
    """Export ``result`` into a staging folder, check it answers like the trained model,
    then publish it as the model's next version.

    Nothing numeric appears in the repository unless every check passed.
    """
    name = model_name or result.config.model_name
    samples = validation_image_bytes(result, WARMUP_IMAGES)
    checked: dict[str, float] = {}

    def verify(staging: Path) -> None:
        checked["diff"] = verify_export(staging, result.classifier.model, samples)

    with repository.staging(name) as staging:
        report: ExportReport = export_model(result, name, staging)
        version = repository.publish(name, staging, verify=verify, stamp=_stamp_version)
    path = repository.version_path(name, version)
    return PublishedVersion(
        name,
        version,
        path,
        path / ASSETS_EXTRA / report.onnx_path.name,
        report.onnx_max_abs_diff,
        checked["diff"],
    )


def _stamp_version(staging: Path, version: int) -> None:
    # The number is only known under the repository lock, just before the rename.
    card_path = staging / ASSETS_EXTRA / CARD_FILE
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["version"] = version
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
