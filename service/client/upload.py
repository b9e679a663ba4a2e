"""What ``ftserve jobs submit`` sends: the dataset as one archive, and the training config.

A folder is zipped to a temporary file first, file by file (never whole in memory), with
its class folders at the archive's root and hidden files and folders left out; an archive
is sent as it is. The API checks everything else (see ``service.ingest``).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.client.common import InputError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_NO_FILES = "Dataset folder {folder} holds no files (hidden ones are left out)"


def check_dataset(data: Path) -> None:
    """Refuse at once what cannot be uploaded: a missing path, a file that is no archive, a
    folder with nothing to send.

    Raises:
        InputError: ``data`` is missing, neither a folder nor an archive, unreadable, or a
            folder without a visible file.
    """
    if data.is_dir():
        if next(_visible_files(data), None) is None:
            raise InputError(_NO_FILES.format(folder=data))
        return
    if not data.exists():
        raise InputError(f"Dataset {data} does not exist")
    if not data.is_file() or not data.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise InputError(
            f"Dataset {data} is neither a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)})"
        )
    if not os.access(data, os.R_OK):
        raise InputError(f"Dataset {data} cannot be read")


@contextmanager
def dataset_archive(data: Path) -> Iterator[Path]:
    """The archive to upload for ``data``: itself, or a zip of the folder (removed after).

    Raises:
        InputError: as ``check_dataset``, or a folder that holds no file.
    """
    check_dataset(data)
    if not data.is_dir():
        yield data
        return
    with tempfile.TemporaryDirectory(prefix="ftserve-upload-") as scratch:
        archive = Path(scratch) / f"{data.resolve().name or 'dataset'}.zip"
        zip_folder(data, archive)
        yield archive


def zip_folder(folder: Path, archive: Path) -> int:
    """Zip the visible files under ``folder`` into ``archive``, paths relative to ``folder``;
    how many files went in.

    Images are compressed already: stored, not deflated, which is as small and much faster.
    """
    count = 0
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        for path in _visible_files(folder):
            try:
                zipped.write(path, path.relative_to(folder).as_posix())
            except OSError as exc:
                raise InputError(f"Cannot read {path}: {exc.strerror or exc}") from exc
            count += 1
    if not count:
        raise InputError(_NO_FILES.format(folder=folder))
    return count


def _visible_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder`` in a stable order, none hidden and none under a hidden folder."""
    for root, dirs, files in os.walk(folder, onerror=_walk_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root, name)


def _walk_error(exc: OSError) -> None:
    raise InputError(f"Cannot read {exc.filename}: {exc.strerror or exc}") from exc


def read_config(value: str | None, model_name: str | None) -> dict[str, Any]:
    """The training config: ``value`` is a JSON object or a JSON file's path; a given
    ``model_name`` wins over the config's.

    Raises:
        InputError: unreadable, not JSON, not an object, or no model name anywhere.
    """
    config = {} if value is None else _config_object(value)
    if model_name is not None:
        config["model_name"] = model_name
    if not config.get("model_name"):
        raise InputError("Name the model: --model-name NAME, or model_name in --config")
    return config


def _config_object(value: str) -> dict[str, Any]:
    inline = value.lstrip().startswith(("{", "["))
    where = "--config" if inline else f"Config file {value}"
    if inline:
        text = value
    else:
        try:
            text = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise InputError(f"Cannot read config file {value}: {reason}") from exc
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InputError(f"{where} must hold a JSON object")
    return config
