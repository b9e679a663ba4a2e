"""The one train -> export -> publish step, shared by the worker and ``ftserve train``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.publish import PublishedVersion, publish_result
from service.config import Settings
from service.contract.repository import ModelRepository
from service.contract.train_config import TrainConfig
from service.training.trainer import Hooks, TrainingResult, train

# What a job's result keeps from the training summary (the model card has the same keys).
RESULT_FIELDS = ("classes", "evaluation", "dataset", "fine_tune")


@dataclass(frozen=True)
class Finetuned:
    """A trained model and the version it was published as."""

    training: TrainingResult
    published: PublishedVersion

    def summary(self) -> dict[str, Any]:
        """The training summary with the published version's facts added."""
        return {**self.training.summary(), **self.published.summary()}

    def job_result(self) -> dict[str, Any]:
        """What a job's result holds: the version, the evaluation and the timings."""
        summary = self.training.summary()
        return {
            "model": self.published.model,
            **self.published.summary(),
            **{key: summary[key] for key in RESULT_FIELDS},
            "timings": summary["timings"],
        }


def finetune(
    data: Path,
    config: TrainConfig,
    work_dir: Path,
    settings: Settings,
    repository: ModelRepository,
    *,
    hooks: Hooks | None = None,
    job_id: str | None = None,
    before_publish: Callable[[TrainingResult], None] | None = None,
) -> Finetuned:
    """Train ``config.model_name`` on ``data``, then export and publish its next version.

    Args:
        data: a dataset folder or archive.
        config: the validated training options.
        work_dir: the run's folder (extracted data, caches, checkpoints for resuming).
        settings: operator limits and folders.
        repository: where the version is published.
        hooks: progress reporting and cancellation during training.
        job_id: recorded in the model card, so a retried job finds its version.
        before_publish: runs between training and publishing; raising there (a cancelled
            job, say) publishes nothing.
    """
    result = train(data, config, work_dir, settings, hooks)
    if before_publish is not None:
        before_publish(result)
    published = publish_result(result, repository, job_id=job_id)
    return Finetuned(result, published)


def published_result(repository: ModelRepository, model: str, version: int) -> dict[str, Any]:
    """A job's result rebuilt from a version's model card (the job published it earlier)."""
    path = repository.version_path(model, version)
    card = repository.model_card(model, version) or {}
    return {
        "model": model,
        "version": version,
        "saved_model_path": str(path),
        "onnx_path": str(repository.onnx_path(model, version)),
        **{key: card.get(key) for key in RESULT_FIELDS},
    }
