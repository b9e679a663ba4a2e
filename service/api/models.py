"""What the API says about models: the repository on disk and the model server's view.

The repository is ``service.contract.repository``'s, the same module the worker publishes
with; the model server is asked through the model client.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
from starlette.concurrency import run_in_threadpool

from service.api.schemas import ModelDetail, ModelSummary, ServingStatus, VersionView
from service.contract.names import check_model_name
from service.contract.repository import ModelRepository, onnx_file, read_model_card
from service.errors import FtserveError, ModelNotFoundError
from service.model_client.client import PredictClient

_STATUS_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_NOT_SERVED = ServingStatus(
    state="UNKNOWN",
    error_code="NOT_FOUND",
    error_message="The model server does not report this version",
)


def list_models(repository: ModelRepository) -> list[ModelSummary]:
    """Every model with at least one version, and its versions oldest first."""
    found = {name: repository.versions(name) for name in repository.models()}
    return [
        ModelSummary(name=name, versions=versions) for name, versions in found.items() if versions
    ]


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


def version_dir(repository: ModelRepository, model: str, version: int) -> Path:
    """The folder of one version. Raises ``ModelNotFoundError`` if it does not exist."""
    if version not in model_versions(repository, model):
        raise ModelNotFoundError(f"Model {model!r} has no version {version}")
    return repository.version_path(model, version)


def onnx_path(repository: ModelRepository, model: str, version: int) -> Path:
    """A version's ONNX file (``ModelNotFoundError`` if the version or its file is missing)."""
    path = onnx_file(version_dir(repository, model, version))
    if path is None:
        raise ModelNotFoundError(f"Version {version} of model {model!r} has no ONNX file")
    return path


async def describe_model(
    repository: ModelRepository, client: PredictClient, model: str
) -> ModelDetail:
    """The versions of ``model`` on disk, each with its serving status and model card.

    The model server is asked once; if it cannot answer, each version says so instead of
    the whole description failing.
    """
    versions = await run_in_threadpool(model_versions, repository, model)
    paths = {version: repository.version_path(model, version) for version in versions}
    status_of = await _serving_statuses(client, model)
    cards = await run_in_threadpool(lambda: {v: read_model_card(p) for v, p in paths.items()})
    views = [
        VersionView(
            version=version,
            status=status_of(version),
            model_card=cards[version],
            onnx_url=f"/models/{model}/versions/{version}/onnx" if onnx_file(path) else None,
        )
        for version, path in paths.items()
    ]
    return ModelDetail(name=model, versions=views)


async def _serving_statuses(client: PredictClient, model: str) -> Callable[[int], ServingStatus]:
    try:
        reported = {status.version: status for status in await client.model_status(model)}
    except ModelNotFoundError:
        reported = {}
    except FtserveError as exc:  # down, too slow, or answering nonsense
        unknown = ServingStatus(
            state="UNKNOWN", error_code="UNAVAILABLE", error_message=exc.message
        )
        return lambda _version: unknown

    def status_of(version: int) -> ServingStatus:
        status = reported.get(version)
        if status is None:
            return _NOT_SERVED
        return ServingStatus(
            state=status.state,
            error_code=_STATUS_CODE_NAMES.get(status.error_code, str(status.error_code)),
            error_message=status.error_message,
        )

    return status_of
