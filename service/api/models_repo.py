"""What the API says about models: the repository on disk and the model server's view.

The repository layout is ``exporter.repository``'s, read here without importing it (it
imports TensorFlow Serving's protos): ``<repo>/<model>/<version>/`` with positive integer
versions (``.staging-*`` folders are publishes in progress), and ``assets.extra/`` holding
``model_card.json`` and ``model.onnx``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from starlette.concurrency import run_in_threadpool

from service.api.schemas import ModelDetail, ServingStatus, VersionView
from service.errors import FtserveError, InvalidModelNameError, ModelNotFoundError
from service.serving.client import PredictClient
from service.training.options import MODEL_NAME_PATTERN

_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
_VERSION = re.compile(r"[0-9]+")
ASSETS = "assets.extra"
MODEL_CARD = "model_card.json"
ONNX = "model.onnx"
_STATUS_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_NOT_SERVED = ServingStatus(
    state="UNKNOWN",
    error_code="NOT_FOUND",
    error_message="The model server does not report this version",
)


def check_model_name(name: str) -> str:
    """``name`` if it is a valid model name (which also rules out path tricks)."""
    # fullmatch: the pattern's "$" alone would accept a trailing newline.
    if not _MODEL_NAME.fullmatch(name):
        raise InvalidModelNameError(
            f"Invalid model name {name!r}: use 1 to 63 characters from a-z, 0-9, '_' and '-',"
            " starting with a letter or digit"
        )
    return name


class ModelRepositoryView:
    """Models and versions on disk under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def models(self) -> dict[str, list[int]]:
        """Every model with at least one version, and its versions oldest first."""
        if not self.root.is_dir():
            return {}
        names = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and _valid(e.name))
        found = {name: self._versions(self.root / name) for name in names}
        return {name: versions for name, versions in found.items() if versions}

    def versions(self, model: str) -> list[int]:
        """The versions of ``model``, oldest first.

        Raises:
            InvalidModelNameError: not a model name.
            ModelNotFoundError: no version of it on disk.
        """
        versions = self._versions(self.root / check_model_name(model))
        if not versions:
            raise ModelNotFoundError(f"No model named {model!r} in the model repository")
        return versions

    def version_path(self, model: str, version: int) -> Path:
        """The folder of one version. Raises ``ModelNotFoundError`` if it does not exist."""
        if version not in self.versions(model):
            raise ModelNotFoundError(f"Model {model!r} has no version {version}")
        return self.root / model / str(version)

    def version_paths(self, model: str) -> dict[int, Path]:
        """Each version of ``model`` and its folder (errors as ``versions``)."""
        return {version: self.root / model / str(version) for version in self.versions(model)}

    @staticmethod
    def _versions(model_dir: Path) -> list[int]:
        if not model_dir.is_dir():
            return []
        entries = (e for e in os.scandir(model_dir) if _VERSION.fullmatch(e.name) and e.is_dir())
        return sorted(v for v in (int(e.name) for e in entries) if v > 0)


def read_model_card(version_dir: Path) -> dict[str, Any] | None:
    """A version's model card, or None if it has none (or an unreadable one)."""
    try:
        card = json.loads((version_dir / ASSETS / MODEL_CARD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return card if isinstance(card, dict) else None


def onnx_file(version_dir: Path) -> Path | None:
    """A version's ONNX file, or None if it has none."""
    path = version_dir / ASSETS / ONNX
    return path if path.is_file() else None


def _valid(name: str) -> bool:
    return _MODEL_NAME.fullmatch(name) is not None


async def describe_model(
    repository: ModelRepositoryView, client: PredictClient, model: str
) -> ModelDetail:
    """The versions of ``model`` on disk, each with its serving status and model card.

    The model server is asked once; if it cannot answer, each version says so instead of
    the whole description failing.
    """
    paths = await run_in_threadpool(repository.version_paths, model)
    status_of = await _serving_statuses(client, model)
    cards = await run_in_threadpool(lambda: {v: read_model_card(p) for v, p in paths.items()})
    versions = [
        VersionView(
            version=version,
            status=status_of(version),
            model_card=cards[version],
            onnx_url=f"/models/{model}/versions/{version}/onnx" if onnx_file(path) else None,
        )
        for version, path in paths.items()
    ]
    return ModelDetail(name=model, versions=versions)


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
