"""What the API says about models: the repository, the serving states, the model server's view.

The repository is ``service.contract.repository``'s, the same module the worker publishes
with; label moves and deletes go through ``service.contract.lifecycle``, as the worker's do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from starlette.concurrency import run_in_threadpool

from service.api.schemas import ModelDetail, ModelSummary, VersionView
from service.contract.names import check_model_name
from service.contract.repository import (
    ASSETS_EXTRA,
    MODEL_CARD_FILE,
    ModelRepository,
    onnx_file,
    read_model_card,
)
from service.contract.serving_state import ServingState
from service.errors import FtserveError, ModelNotFoundError, VersionNotFoundError
from service.model_client.client import PredictClient, VersionStatus

# What GET /models/{name} shows of a version's evaluation (the card has the whole report).
METRIC_KEYS = ("accuracy", "top_k_accuracy", "loss", "macro_f1", "count")
_STATUS_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def list_models(repository: ModelRepository) -> list[ModelSummary]:
    """Every model with at least one version: its versions oldest first, and its labels."""
    found = []
    for name in repository.models():
        versions = repository.versions(name)
        if versions:
            labels = repository.serving_state(name).labels
            found.append(ModelSummary(name=name, versions=versions, labels=labels))
    return found


def model_versions(repository: ModelRepository, model: str) -> list[int]:
    """The versions of ``model``, oldest first.

    Raises:
        InvalidModelNameError: not a model name.
        ModelNotFoundError: no version of it on disk.
    """
    versions = repository.versions(check_model_name(model))
    if not versions:
        raise ModelNotFoundError(f"No model named {model!r} in the model repository")
    return versions


def onnx_path(repository: ModelRepository, model: str, version: int) -> Path:
    """A version's ONNX file (``ModelNotFoundError`` if the version or its file is missing)."""
    if version not in model_versions(repository, model):
        raise VersionNotFoundError(f"Model {model!r} has no version {version}")
    path = onnx_file(repository.version_path(model, version))
    if path is None:
        raise ModelNotFoundError(f"Version {version} of model {model!r} has no ONNX file")
    return path


def model_card_path(repository: ModelRepository, model: str, version: int) -> Path:
    """A version's model card file (``ModelNotFoundError`` if the version or its card is
    missing)."""
    if version not in model_versions(repository, model):
        raise VersionNotFoundError(f"Model {model!r} has no version {version}")
    path = repository.version_path(model, version) / ASSETS_EXTRA / MODEL_CARD_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"Version {version} of model {model!r} has no model card")
    return path


async def describe_model(
    repository: ModelRepository, client: PredictClient, model: str
) -> ModelDetail:
    """The versions of ``model`` on disk, each with its serving state, labels and model card.

    The model server is asked once; if it cannot answer, each version says UNKNOWN instead
    of the whole description failing.
    """

    def read() -> tuple[ServingState, dict[int, dict[str, Any] | None], dict[int, bool]]:
        versions = model_versions(repository, model)
        state = repository.serving_state(model)
        paths = {v: repository.version_path(model, v) for v in versions}
        cards = {v: read_model_card(path) for v, path in paths.items()}
        has_onnx = {v: onnx_file(path) is not None for v, path in paths.items()}
        return state, cards, has_onnx

    state, cards, has_onnx = await run_in_threadpool(read)
    reported, unreachable = await _serving_statuses(client, model)
    served = set(state.served)
    views = []
    for version, card in cards.items():
        status = reported.get(version)
        views.append(
            VersionView(
                version=version,
                served=version in served,
                state=_state(status, unreachable),
                error=_error(status, unreachable),
                labels=state.labels_of(version),
                created_at=(card or {}).get("created"),
                metrics=_metrics(card),
                promotion=(card or {}).get("promotion"),
                onnx_url=f"/models/{model}/versions/{version}/onnx" if has_onnx[version] else None,
                card_url=f"/models/{model}/versions/{version}/model_card" if card else None,
            )
        )
    return ModelDetail(name=model, labels=dict(sorted(state.labels.items())), versions=views)


async def _serving_statuses(
    client: PredictClient, model: str
) -> tuple[dict[int, VersionStatus], str | None]:
    """The model server's statuses by version, or why it could not be asked."""
    try:
        return {status.version: status for status in await client.model_status(model)}, None
    except ModelNotFoundError:
        return {}, None
    except FtserveError as exc:  # down, too slow, or answering nonsense
        return {}, exc.message


def _state(status: VersionStatus | None, unreachable: str | None) -> str:
    if unreachable is not None:
        return "UNKNOWN"
    return "NOT_LOADED" if status is None else status.state


def _error(status: VersionStatus | None, unreachable: str | None) -> str | None:
    if unreachable is not None:
        return unreachable
    if status is None or not status.error_code:
        return None
    code = _STATUS_CODE_NAMES.get(status.error_code, str(status.error_code))
    return f"{code}: {status.error_message}"


def _metrics(card: dict[str, Any] | None) -> dict[str, Any]:
    evaluation = (card or {}).get("evaluation") or {}
    return {key: evaluation[key] for key in METRIC_KEYS if key in evaluation}
