"""Dataset ingest: find the class folders, check every image once, split, fingerprint.

The layout is Keras' ``image_dataset_from_directory`` one: ``<class>/<image>``, with images
also allowed in sub-folders of a class and one extra top-level folder around the classes
(what zipping a folder produces). Class indices follow the sorted class names.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.config import Settings
from service.errors import DatasetError
from service.ingest.archive import extract_archive
from service.ingest.images import BombHeaderError, UnreadableHeaderError, image_kind, read_header

DATASET_DIR = "dataset"
_PARTIAL_PREFIX = ".dataset-partial-"
JUNK_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
JUNK_DIRS = frozenset({"__MACOSX"})


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass(frozen=True)
class DatasetIndex:
    """The usable images of a dataset, with what was left out and why."""

    root: Path
    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    skipped: tuple[SkippedFile, ...] = ()
    fingerprint: str = ""
    class_counts: dict[str, int] = field(default_factory=dict)


def open_dataset(source: Path, work_dir: Path, settings: Settings) -> DatasetIndex:
    """Index a dataset folder or archive (extracted safely into ``work_dir``)."""
    if source.is_file():
        source = extracted(source, work_dir, settings)
    elif not source.is_dir():
        raise DatasetError(f"dataset {source} is neither a folder nor an archive")
    return scan_dataset(source, settings)


def extracted(archive: Path, work_dir: Path, settings: Settings) -> Path:
    """``<work_dir>/dataset``: the archive extracted once per job, whatever came before.

    Extraction goes into a scratch folder that is renamed when complete, so a job retried
    after its worker died (kill -9, OOM, a rolling deploy) reuses a finished extraction
    and redoes an interrupted one; it never finds half a dataset in its place.
    """
    done = work_dir / DATASET_DIR
    if done.is_dir() and not done.is_symlink():
        return done
    for leftover in work_dir.glob(f"{_PARTIAL_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)  # an extraction its worker never finished
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = work_dir / f"{_PARTIAL_PREFIX}{secrets.token_hex(4)}"
    extract_archive(archive, scratch, settings)
    os.rename(scratch, done)
    return done


def scan_dataset(root: Path, settings: Settings) -> DatasetIndex:
    """Decode every candidate image once; keep the good ones, list the rest."""
    class_root = find_class_root(root)
    class_dirs = sorted(
        p for p in class_root.iterdir() if p.is_dir() and not p.is_symlink() and not _is_junk(p)
    )
    for folder in class_dirs:
        if any(ord(c) < 32 or ord(c) == 127 for c in folder.name):
            # The class names become labels.txt, one per line: a newline would add classes.
            raise DatasetError(f"class folder {folder.name!r} has a control character in its name")
    label_of = {d.name: i for i, d in enumerate(class_dirs)}
    paths: list[Path] = []
    labels: list[int] = []
    skipped: list[SkippedFile] = []
    digest = hashlib.sha256()
    for path in _visible_files(class_root):
        relative = path.relative_to(class_root).as_posix()
        reason, content_hash = _check_file(path, relative, label_of, settings.image_max_pixels)
        if reason is not None:
            skipped.append(SkippedFile(relative, reason))
            continue
        paths.append(path)
        labels.append(label_of[path.relative_to(class_root).parts[0]])
        digest.update(f"{relative}\0{content_hash}\n".encode())
    classes = tuple(d.name for d in class_dirs)
    counts = Counter(labels)
    class_counts = {name: counts.get(i, 0) for i, name in enumerate(classes)}
    _require_usable(class_counts, settings.min_images_per_class)
    return DatasetIndex(
        class_root,
        classes,
        tuple(paths),
        tuple(labels),
        tuple(skipped),
        digest.hexdigest(),
        class_counts,
    )


def find_class_root(root: Path) -> Path:
    """Step into a lone wrapper folder (``dataset/<class>/...``) when there is one."""
    entries = [p for p in root.iterdir() if not _is_junk(p)]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        inner = [p for p in entries[0].iterdir() if not _is_junk(p)]
        if inner and all(p.is_dir() for p in inner):
            return entries[0]
    return root


def stratified_split(
    labels: tuple[int, ...] | list[int], validation_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded per-class split; every class with 2+ images gets a validation image."""
    rng = np.random.default_rng(seed)
    label_array = np.asarray(labels)
    train: list[int] = []
    val: list[int] = []
    for label in np.unique(label_array):
        members = rng.permutation(np.flatnonzero(label_array == label))
        n_val = (
            0
            if len(members) < 2
            else min(len(members) - 1, max(1, round(len(members) * validation_split)))
        )
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return rng.permutation(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, np.int64))


def _visible_files(class_root: Path) -> Iterator[Path]:
    for path in sorted(class_root.rglob("*")):
        relative = path.relative_to(class_root)
        if any(_is_junk_name(part) for part in relative.parts):
            continue
        if path.is_file() or path.is_symlink():
            yield path


def _check_file(
    path: Path, relative: str, label_of: dict[str, int], max_pixels: int
) -> tuple[str | None, str]:
    if "/" not in relative:
        return "not inside a class folder", ""
    if path.is_symlink() or relative.split("/", 1)[0] not in label_of:
        return "symbolic links are not followed", ""
    data = path.read_bytes()
    return validate_image(data, max_pixels), hashlib.sha256(data).hexdigest()


def validate_image(data: bytes, max_pixels: int) -> str | None:
    """Why these bytes cannot be a training image, or None when they can.

    The full decode uses the same function as the input pipeline, so an image that
    passes here cannot fail mid-epoch.
    """
    kind = image_kind(data)
    if kind is None:
        return "not a JPEG, PNG, GIF, BMP or WebP image"
    try:
        _, width, height = read_header(data, kind)
    except BombHeaderError:
        return f"{kind} is over the decompression-bomb pixel limit"
    except UnreadableHeaderError as exc:
        return str(exc)
    if width * height > max_pixels:
        return f"{kind} is {width}x{height}, over the {max_pixels}-pixel limit"
    from service.training.preprocessing import decode_error

    error = decode_error(data)
    return None if error is None else f"cannot decode {kind}: {error}"


def _require_usable(class_counts: dict[str, int], min_per_class: int) -> None:
    if len(class_counts) < 2:
        found = ", ".join(repr(c) for c in class_counts) or "none"
        raise DatasetError(
            f"a dataset needs at least 2 class folders, found {len(class_counts)}: {found}"
        )
    small = [f"{name!r} ({n})" for name, n in class_counts.items() if n < min_per_class]
    if small:
        raise DatasetError(
            f"every class needs at least {min_per_class} usable images; too few in: "
            + ", ".join(small)
        )


def _is_junk(path: Path) -> bool:
    return _is_junk_name(path.name)


def _is_junk_name(name: str) -> bool:
    return name.startswith(".") or name in JUNK_FILES or name in JUNK_DIRS
