"""The one train -> export -> publish -> label step, shared by the worker and ``ftserve train``.

After training, the new version and the current ``stable`` one are judged on the job's
held-out images (``promotion``); the decision goes into the model card before the version
appears, and then the version is served under ``stable`` (promoted) or ``canary`` (held)
through ``Lifecycle``: added, loaded by the model server, then labelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from exporter.publish import PublishedVersion, publish_result
from service.config import Settings
from service.contract.lifecycle import Lifecycle
from service.contract.repository import ModelRepository, ensure_writable
from service.contract.train_config import TrainConfig
from service.finetune.promotion import HeldOut, assess, target_label
from service.model_client.client import PredictClient
from service.training.trainer import Hooks, TrainingResult, train

# What a job's result keeps from the training summary (the model card has the same keys).
RESULT_FIELDS = ("classes", "evaluation", "dataset", "fine_tune")


@dataclass(frozen=True)
class Finetuned:
    """A trained model, the version it was published as, and the labels it got."""

    training: TrainingResult
    published: PublishedVersion
    promotion: dict[str, Any]
    labels: dict[str, int]

    def summary(self) -> dict[str, Any]:
        """The training summary with the published version's facts added."""
        return {
            **self.training.summary(),
            **self.published.summary(),
            "promotion": self.promotion,
            "labels": self.labels,
        }

    def job_result(self) -> dict[str, Any]:
        """What a job's result holds: the version, its evaluation, promotion and timings."""
        summary = self.training.summary()
        return {
            "model": self.published.model,
            **self.published.summary(),
            **{key: summary[key] for key in RESULT_FIELDS},
            "promotion": self.promotion,
            "labels": self.labels,
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
    last_check: Callable[[], None] | None = None,
) -> Finetuned:
    """Train ``config.model_name`` on ``data``, publish its next version and label it.

    Args:
        data: a dataset folder or archive.
        config: the validated training options.
        work_dir: the run's folder (extracted data, caches, checkpoints for resuming).
        settings: operator limits and folders; ``model_server`` is waited for on labels.
        repository: where the version is published.
        hooks: progress reporting and cancellation during training.
        job_id: recorded in the model card, so a retried job finds its version.
        before_publish: runs between training and publishing; raising there (a cancelled
            job, say) publishes nothing.
        last_check: runs under the repository lock just before the version's rename; the
            last moment a cancellation can stop the publish.
    """
    ensure_writable(work_dir, "job folder")
    ensure_writable(repository.root, "model repository")
    result = train(data, config, work_dir, settings, hooks)
    if before_publish is not None:
        before_publish(result)
    held_out = HeldOut.of(result)
    judge = partial(assess, held_out=held_out, config=config, repository=repository)
    published = publish_result(
        result,
        repository,
        job_id=job_id,
        assess=judge,
        last_check=last_check,
        max_image_pixels=settings.image_max_pixels,
    )
    card = repository.model_card(published.model, published.version) or {}
    promotion = card["promotion"]
    labels = label_version(repository, published.model, published.version, promotion, settings)
    return Finetuned(result, published, promotion, labels)


def label_version(
    repository: ModelRepository,
    model: str,
    version: int,
    promotion: dict[str, Any],
    settings: Settings,
) -> dict[str, int]:
    """Serve a published version under the label its decision gives; the model's labels.

    With a model server configured (``FTSERVE_MODEL_SERVER``; ``ftserve serve`` and the
    manifests set it), the label moves only once the server has loaded the version.
    """
    label = target_label(promotion)

    async def move() -> dict[str, int]:
        client = None
        if settings.model_server:
            client = PredictClient(settings.model_server, settings.predict_timeout_seconds)
        try:
            lifecycle = Lifecycle(repository, client, settings.label_move_timeout_seconds)
            state = await lifecycle.set_label(model, label, version)
        finally:
            if client is not None:
                await client.close()
        return dict(sorted(state.labels.items()))

    return asyncio.run(move())


def published_result(
    repository: ModelRepository, model: str, version: int, settings: Settings
) -> dict[str, Any]:
    """A job's result rebuilt from a version it published earlier, its label (re)applied."""
    path = repository.version_path(model, version)
    card = repository.model_card(model, version) or {}
    promotion = card.get("promotion") or {"decision": "held", "reason": "no decision recorded"}
    state = repository.serving_state(model)
    labels = dict(sorted(state.labels.items()))
    if version not in state.served:  # the attempt that published it stopped before labelling
        labels = label_version(repository, model, version, promotion, settings)
    return {
        "model": model,
        "version": version,
        "saved_model_path": str(path),
        "onnx_path": str(repository.onnx_path(model, version)),
        **{key: card.get(key) for key in RESULT_FIELDS},
        "promotion": promotion,
        "labels": labels,
    }
