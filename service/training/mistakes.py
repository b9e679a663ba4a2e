"""Misclassified held-out images: the most confident mistakes, kept as small thumbnails.

After evaluation the trainer ranks the validation images the model got wrong
(``find_mistakes``). The exporter then writes thumbnails of at most
``MISCLASSIFIED_PER_CLASS`` of them per true class, with an ``index.json``, into the staged
version (``write_thumbnails``), so they are published with it: the job's copy of the
dataset is deleted once the job ends. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.contract.repository import (
    MISCLASSIFIED_INDEX,
    MISCLASSIFIED_PER_CLASS,
    THUMBNAIL_MAX_SIDE,
)
from service.ingest.images import (
    HEAD_BYTES,
    BombHeaderError,
    UnreadableHeaderError,
    image_kind,
    read_header,
)

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
JPEG_QUALITY = 85
# Pillow's format names for the kinds ``image_kind`` reports.
_PIL_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "GIF": "GIF", "BMP": "BMP", "WebP": "WEBP"}


@dataclass(frozen=True)
class Mistake:
    """One held-out image the model got wrong."""

    path: Path
    true_index: int
    predicted_index: int
    score: float  # the probability of the predicted (wrong) class


def find_mistakes(
    probabilities: np.ndarray, labels: np.ndarray | Sequence[int], paths: Sequence[str | Path]
) -> tuple[Mistake, ...]:
    """Every image whose top class is not its label, the most confident mistakes first.

    Equal scores keep the validation order, so a run always picks the same images.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    scores = probabilities[np.arange(len(labels)), predicted]
    wrong = np.flatnonzero(predicted != labels)
    ranked = wrong[np.argsort(-scores[wrong], kind="stable")]
    return tuple(
        Mistake(Path(paths[i]), int(labels[i]), int(predicted[i]), round(float(scores[i]), 6))
        for i in ranked
    )


def write_thumbnails(
    mistakes: Sequence[Mistake],
    classes: Sequence[str],
    folder: Path,
    max_pixels: int,
    per_class: int = MISCLASSIFIED_PER_CLASS,
) -> dict[str, Any]:
    """Thumbnails of the first ``per_class`` mistakes of each true class, and their index.

    ``mistakes`` come ranked (``find_mistakes``); the index lists the thumbnails in that
    order as ``0001.jpg``, ``0002.jpg``, ... An image that cannot be made into a thumbnail
    (over ``max_pixels``, unreadable) is skipped and the class's next mistake taken instead.

    Returns:
        What the model card records: the mistakes in all, the thumbnails kept, the bounds.
    """
    folder.mkdir(parents=True, exist_ok=False)
    kept: Counter[int] = Counter()
    items: list[dict[str, Any]] = []
    skipped = 0
    for mistake in mistakes:
        if kept[mistake.true_index] >= per_class:
            continue
        name = f"{len(items) + 1:04d}.jpg"
        why = save_thumbnail(mistake.path, folder / name, max_pixels)
        if why is not None:
            log.info("no thumbnail of misclassified %s: %s", mistake.path.name, why)
            skipped += 1
            continue
        kept[mistake.true_index] += 1
        items.append(_item(name, mistake, classes))
    summary = {
        "total": len(mistakes),
        "thumbnails": len(items),
        "skipped": skipped,
        "limit_per_class": per_class,
        "max_side": THUMBNAIL_MAX_SIDE,
    }
    index = {"format": INDEX_FORMAT, **summary, "items": items}
    (folder / MISCLASSIFIED_INDEX).write_text(json.dumps(index, indent=2) + "\n", "utf-8")
    return summary


def _item(name: str, mistake: Mistake, classes: Sequence[str]) -> dict[str, Any]:
    return {
        "file": name,
        "true_label": classes[mistake.true_index],
        "predicted_label": classes[mistake.predicted_index],
        "score": mistake.score,
    }


class _Refused(Exception):
    """An image this module will not decode; the message says why."""


def save_thumbnail(
    source: Path, target: Path, max_pixels: int, max_side: int = THUMBNAIL_MAX_SIDE
) -> str | None:
    """Write ``source`` as an RGB JPEG whose longest side is at most ``max_side``.

    The header is judged before any pixel is decoded: an image over ``max_pixels`` (or
    Pillow's bomb limit) is never opened for decoding.

    Returns:
        None when written, else why not.
    """
    try:
        kind = _checked_kind(source, max_pixels)
    except _Refused as exc:
        return str(exc)
    try:
        thumbnail = _decode_small(source, _PIL_FORMATS[kind], max_side)
        thumbnail.save(target, format="JPEG", quality=JPEG_QUALITY)
    except Exception as exc:  # Pillow raises assorted types for damaged image data
        target.unlink(missing_ok=True)
        return f"cannot make a thumbnail: {exc}"
    return None


def _checked_kind(source: Path, max_pixels: int) -> str:
    """The kind of image ``source`` is, once its header allows decoding it."""
    try:
        with source.open("rb") as file:
            head = file.read(HEAD_BYTES)
    except OSError as exc:
        raise _Refused(f"cannot read the image: {exc.strerror}") from exc
    kind = image_kind(head)
    if kind is None:
        raise _Refused("not a JPEG, PNG, GIF, BMP or WebP image")
    try:
        header = read_header(source, kind)
    except (BombHeaderError, UnreadableHeaderError) as exc:
        raise _Refused(str(exc)) from exc
    if header.pixels > max_pixels:
        raise _Refused(
            f"{kind} is {header.width}x{header.height}, over the {max_pixels}-pixel limit"
        )
    return kind


def _decode_small(source: Path, pil_format: str, max_side: int) -> Image.Image:
    # The header was judged against the operator's limit already; Pillow's own warning
    # threshold may lie below it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source, formats=[pil_format]) as image:
            # A JPEG decodes straight at a reduced scale: a large photo is never whole in memory.
            image.draft("RGB", (max_side, max_side))
            # No EXIF rotation: the thumbnail shows the pixels the model was given.
            rgb = _to_rgb(image)
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    # Palette and grey images with transparency go through RGBA: converting them straight
    # to RGB makes Pillow warn. The alpha channel is dropped, as the model's decoder does.
    if image.mode not in ("RGB", "L", "RGBA"):
        image = image.convert("RGBA")
    return image.convert("RGB")
