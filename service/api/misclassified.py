"""A version's misclassified validation images: the index the worker wrote, and each thumbnail.

The worker keeps them in ``assets.extra/misclassified/`` of the version it publishes
(``service.training.mistakes``); the API only reads them. A file is served only when the
index names it and the name is a plain file name, so no request reaches another file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from service.api.models import model_versions
from service.contract.repository import (
    MISCLASSIFIED_INDEX,
    MISCLASSIFIED_PER_CLASS,
    ModelRepository,
    misclassified_dir,
    read_model_card,
)
from service.errors import NotFoundError, VersionNotFoundError

# What the worker names its thumbnails (0001.jpg, ...); anything else is never served.
THUMBNAIL_NAME = re.compile(r"[0-9]{1,6}\.jpg")
# A version's files never change: a browser may keep a thumbnail for as long as it likes.
CACHE_CONTROL = "private, max-age=31536000, immutable"


class MisclassifiedItem(BaseModel):
    file: str = Field(description="The thumbnail's file name.", examples=["0001.jpg"])
    url: str = Field(description="Where to get the thumbnail (a JPEG).")
    true_label: str
    predicted_label: str
    score: float = Field(description="The probability the model gave the predicted label.")


class MisclassifiedList(BaseModel):
    """Thumbnails of held-out images a version got wrong, most confident mistakes first."""

    model: str
    version: int
    limit_per_class: int = Field(description="At most this many thumbnails per true class.")
    total_misclassified: int = Field(
        description="Mistakes over the whole validation split, kept as thumbnails or not."
    )
    items: list[MisclassifiedItem]


def list_misclassified(repository: ModelRepository, model: str, version: int) -> MisclassifiedList:
    """The thumbnails of ``version``'s mistakes; none for a version made before they were kept.

    Raises:
        InvalidModelNameError, ModelNotFoundError, VersionNotFoundError.
    """
    version_dir = _version_dir(repository, model, version)
    index = _read_index(version_dir)
    folder = misclassified_dir(version_dir)
    base = f"/models/{model}/versions/{version}/misclassified"
    items = [
        MisclassifiedItem(url=f"{base}/{item['file']}", **item)
        for item in _valid_items(index.get("items"))
        if (folder / item["file"]).is_file()
    ]
    items.sort(key=lambda item: -item.score)
    return MisclassifiedList(
        model=model,
        version=version,
        limit_per_class=_count(index.get("limit_per_class"), MISCLASSIFIED_PER_CLASS),
        total_misclassified=_count(index.get("total"), _card_mistakes(version_dir)),
        items=items,
    )


def thumbnail_bytes(repository: ModelRepository, model: str, version: int, file: str) -> bytes:
    """The JPEG bytes of one thumbnail the version's index names.

    Raises:
        InvalidModelNameError, ModelNotFoundError, VersionNotFoundError.
        NotFoundError: the index names no such file (or it is gone).
    """
    version_dir = _version_dir(repository, model, version)
    missing = NotFoundError(
        f"Version {version} of model {model!r} has no misclassified image {file[:64]!r}"
    )
    # The name is checked before it reaches the file system: only the index's plain names.
    if not THUMBNAIL_NAME.fullmatch(file):
        raise missing
    names = {item["file"] for item in _valid_items(_read_index(version_dir).get("items"))}
    if file not in names:
        raise missing
    try:
        return (misclassified_dir(version_dir) / file).read_bytes()
    except OSError as exc:  # deleted with its version meanwhile
        raise missing from exc


def _version_dir(repository: ModelRepository, model: str, version: int) -> Path:
    if version not in model_versions(repository, model):
        raise VersionNotFoundError(f"Model {model!r} has no version {version}")
    return repository.version_path(model, version)


def _read_index(version_dir: Path) -> dict[str, Any]:
    """The version's ``index.json``, or {} when it has none (or an unreadable one)."""
    path = misclassified_dir(version_dir) / MISCLASSIFIED_INDEX
    try:
        index = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return index if isinstance(index, dict) else {}


def _valid_items(raw: object) -> list[dict[str, Any]]:
    """The index's well-formed entries, reduced to the fields the API shows."""
    entries = raw if isinstance(raw, list) else []
    return [item for item in map(_valid_item, entries) if item is not None]


def _valid_item(entry: object) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        return None
    item = {key: entry.get(key) for key in ("file", "true_label", "predicted_label", "score")}
    file, score = item["file"], item["score"]
    if not (isinstance(file, str) and THUMBNAIL_NAME.fullmatch(file)):
        return None
    if not (isinstance(item["true_label"], str) and isinstance(item["predicted_label"], str)):
        return None
    if not (isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 1):
        return None
    return {**item, "score": float(score)}


def _count(value: object, default: int) -> int:
    """``value`` when it is a count (a non-negative int), else ``default``."""
    if isinstance(value, int) and _is_count(value):
        return value
    return default


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _card_mistakes(version_dir: Path) -> int:
    """Mistakes on the validation split as the model card's confusion matrix counts them."""
    evaluation = (read_model_card(version_dir) or {}).get("evaluation")
    matrix = evaluation.get("confusion_matrix") if isinstance(evaluation, dict) else None
    if not isinstance(matrix, list) or not all(
        isinstance(row, list) and len(row) == len(matrix) and all(map(_is_count, row))
        for row in matrix
    ):
        return 0  # an older card, or no matrix at all
    return sum(map(sum, matrix)) - sum(row[i] for i, row in enumerate(matrix))
