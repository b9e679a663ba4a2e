"""The model repository TensorFlow Serving reads: ``<repo>/<model>/<version>/``.

The hand-off between training and serving, and the one place its layout is spelled out.
A version directory appears only by one ``os.rename`` of a fully written, fsynced and
verified staging directory, so the server never sees half a model, and a published
version is never rewritten. ``<repo>/models.config`` lists the models for the server; it is
rendered with the project's own copy of ``ModelServerConfig`` (``protos/service/contract/``),
so the API, which has no tensorflow-serving-api, reads and writes the same repository.

Each version holds ``assets.extra/`` with ``model.onnx``, ``model_card.json``, ``labels.txt``
and ``tf_serving_warmup_requests``, and ``misclassified/``: thumbnails of held-out images the
version got wrong, listed in its ``index.json`` (older versions lack it). Next to the
versions, each model keeps its serving state (``serving_state``): which versions are served
and under which labels. A published version is not served until a label move
(``service.contract.lifecycle``) serves it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import text_format

from service.contract.model_server_config_pb2 import ModelServerConfig
from service.contract.names import check_model_name, is_model_name
from service.contract.serving_state import STABLE, STATE_FILE, ServingState
from service.errors import ModelNotFoundError, StorageUnavailableError, VersionNotFoundError

# Inside each version: TF Serving reads assets.extra/ as files that are not the model.
ASSETS_EXTRA = "assets.extra"
ONNX_FILE = "model.onnx"
MODEL_CARD_FILE = "model_card.json"
LABELS_FILE = "labels.txt"
WARMUP_FILE = "tf_serving_warmup_requests"  # TF Serving's name: it replays these at load
MISCLASSIFIED_DIR = "misclassified"
MISCLASSIFIED_INDEX = "index.json"
MISCLASSIFIED_PER_CLASS = 8  # thumbnails kept per true class: the most confident mistakes
THUMBNAIL_MAX_SIDE = 128
STAGING_PREFIX = ".staging-"
CONFIG_NAME = "models.config"
_CONFIG_TMP_PREFIX = ".models.config.tmp-"
DELETED_PREFIX = ".deleted-"
_LOCK_SUFFIX = ".lock"
_NUMBER = re.compile(r"[0-9]+")
# What rename(2) says when the target version already exists: another publisher won it.
_TAKEN = {errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR}
# Serialises config rewrites between threads of this process; flock covers other processes.
_PROCESS_LOCK = threading.Lock()
T = TypeVar("T")


class ModelRepository:
    """Versioned SavedModels under ``root``, published atomically.

    Args:
        root: the repository directory; created on first write.
        base_path_prefix: where the server sees ``root`` (e.g. ``/models`` inside its
            container); ``None`` writes the local absolute path.
    """

    def __init__(self, root: Path, base_path_prefix: str | None = None) -> None:
        self.root = Path(root).absolute()
        self.base_path_prefix = base_path_prefix
        self.config_path = self.root / CONFIG_NAME

    def model_dir(self, model: str) -> Path:
        """The directory holding every version of ``model``."""
        return self.root / check_model_name(model)

    def version_path(self, model: str, version: int) -> Path:
        """The directory of one version, whether or not it exists."""
        if version < 1:
            raise ValueError(f"versions are positive integers, got {version}")
        return self.model_dir(model) / str(version)

    def versions(self, model: str) -> list[int]:
        """Published versions of ``model``, oldest first; files with numeric names are ignored."""
        model_dir = self.model_dir(model)
        if not model_dir.is_dir():
            return []
        found = (e for e in os.scandir(model_dir) if _NUMBER.fullmatch(e.name) and e.is_dir())
        return sorted(v for v in (int(e.name) for e in found) if v > 0)

    def latest(self, model: str) -> int | None:
        """The newest published version of ``model``, or ``None`` if it has none."""
        versions = self.versions(model)
        return versions[-1] if versions else None

    def models(self) -> list[str]:
        """Names of the model directories in the repository, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.root) if e.is_dir() and is_model_name(e.name))

    def onnx_path(self, model: str, version: int) -> Path:
        """Where a version's ONNX file is, whether or not it exists."""
        return self.version_path(model, version) / ASSETS_EXTRA / ONNX_FILE

    def model_card(self, model: str, version: int) -> dict[str, Any] | None:
        """A version's model card, or None if it has none (or an unreadable one)."""
        return read_model_card(self.version_path(model, version))

    def find_job_version(self, model: str, job_id: str) -> int | None:
        """The version of ``model`` that job ``job_id`` published, if any."""
        for version in self.versions(model):
            card = self.model_card(model, version)
            if card is not None and card.get("job_id") == job_id:
                return version
        return None

    @contextmanager
    def staging(self, model: str) -> Iterator[Path]:
        """Yield a fresh ``<repo>/<model>/.staging-<hex>/`` to write a version into.

        Publish it inside the block. If the block raises, it is removed. For as long as the
        block runs, this process holds a lock on ``.staging-<hex>.lock`` beside it: that is
        how ``clean_stale_staging`` tells a publish in progress from a crash's leftovers.
        """
        model_dir = self.model_dir(model)
        model_dir.mkdir(parents=True, exist_ok=True)
        path = model_dir / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
        with _owner_lock(_lock_path(path)):
            path.mkdir()
            try:
                yield path
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise

    def publish(
        self,
        model: str,
        staging_dir: Path,
        verify: Callable[[Path], None] | None = None,
        stamp: Callable[[Path, int], None] | None = None,
    ) -> int:
        """Make ``staging_dir`` the next version of ``model`` and return that version.

        ``verify(staging_dir)`` runs first; then, holding the repository lock,
        ``stamp(staging_dir, version)`` may record the version number inside (the model
        card does), everything is fsynced and the directory is renamed to that number. If
        anything before the rename raises, the staging directory is removed and no version
        appears. Concurrent publishers, threads or processes, get distinct versions, and
        a number is never reused, even after its version was deleted. The new version is
        not served: a label move serves it.
        """
        model_dir = self.model_dir(model)
        _check_staging(model_dir, Path(staging_dir))
        try:
            if verify is not None:
                verify(staging_dir)
            with self._config_lock():
                state = self._read_state(model)
                floor = state.max_version
                version = _rename_to_next_version(model_dir, Path(staging_dir), stamp, floor)
                _fsync_dir(model_dir)  # the new name must survive a crash, not just the bytes
                state.max_version = max(state.max_version, version)
                self._write_state(model, state)
                self._write_config()
        except BaseException:
            shutil.rmtree(staging_dir, ignore_errors=True)
            raise
        return version

    # -- serving state ------------------------------------------------------------------

    def serving_state(self, model: str) -> ServingState:
        """The serving state of ``model`` (empty for a model that has none yet)."""
        return self._read_state(check_model_name(model))

    def update_state(self, model: str, change: Callable[[ServingState], T]) -> T:
        """Apply ``change`` to ``model``'s serving state under the repository lock, then
        write the state and ``models.config`` atomically. If ``change`` raises, nothing
        is written."""
        check_model_name(model)
        with self._config_lock():
            state = self._read_state(model)
            result = change(state)
            state.expire()
            self._write_state(model, state)
            self._write_config()
        return result

    def require_version(self, model: str, version: int) -> Path:
        """The folder of an existing version (``ModelNotFoundError``/``VersionNotFoundError``)."""
        versions = self.versions(model)
        if version not in versions:
            if not versions and not self.state_path(model).exists():
                raise ModelNotFoundError(f"No model named {model!r} in the model repository")
            raise VersionNotFoundError(f"Model {model!r} has no version {version}")
        return self.version_path(model, version)

    def remove_version(self, model: str, version: int) -> None:
        """Take a version off disk: renamed out of TF Serving's sight first, then deleted.

        The caller has made sure no label serves it and the model server unloaded it.
        """
        path = self.require_version(model, version)
        with self._config_lock():
            state = self._read_state(model)
            if version in state.served:
                raise ValueError(f"version {version} of {model!r} is still served")
            hidden = path.parent / f"{DELETED_PREFIX}{version}-{secrets.token_hex(4)}"
            os.rename(path, hidden)
            _fsync_dir(path.parent)
            state.forget(version)
            self._write_state(model, state)
            self._write_config()
        shutil.rmtree(hidden, ignore_errors=True)

    def state_path(self, model: str) -> Path:
        return self.model_dir(model) / STATE_FILE

    def _read_state(self, model: str) -> ServingState:
        try:
            return ServingState.from_json(self.state_path(model).read_text(encoding="utf-8"))
        except FileNotFoundError:
            pass
        # A model published before serving states existed: it served its latest version.
        versions = self.versions(model)
        if not versions:
            return ServingState()
        return ServingState(labels={STABLE: versions[-1]}, max_version=versions[-1])

    def _write_state(self, model: str, state: ServingState) -> None:
        _atomic_write(self.state_path(model), state.to_json())

    def clean_stale_staging(self) -> list[Path]:
        """Remove what crashed publishes and deletes left behind; return what went.

        A staging directory goes when no process holds its lock (its publisher is gone),
        a ``.deleted-*`` directory always (a delete renames a version out of sight, then
        removes it), and the config and state temp files always (they are only written
        under the repository lock, which this holds). A publish in progress in another
        process is never touched, however long it takes. flock(2) is per host: a
        repository shared by several machines over a network file system needs one
        whose locks span them (NFSv4 does).
        """
        if not self.root.is_dir():
            return []
        removed: list[Path] = []
        for staging in self.root.glob(f"*/{STAGING_PREFIX}*"):
            if _is_real_dir(staging) and _remove_if_abandoned(staging):
                removed.append(staging)
        for lock in self.root.glob(f"*/{STAGING_PREFIX}*{_LOCK_SUFFIX}"):
            if not lock.with_suffix("").exists():
                _remove_if_abandoned(lock.with_suffix(""))
        for deleted in self.root.glob(f"*/{DELETED_PREFIX}*"):
            if _is_real_dir(deleted):
                shutil.rmtree(deleted, ignore_errors=True)
                removed.append(deleted)
        with self._config_lock():
            temps = [*self.root.glob(f"{_CONFIG_TMP_PREFIX}*"), *self.root.glob("*/.*.tmp-*")]
            leftovers = [p for p in temps if p.is_file()]
            for path in leftovers:
                path.unlink(missing_ok=True)
        return sorted(removed + leftovers)

    def write_models_config(self) -> None:
        """Atomically rewrite ``<repo>/models.config`` from every model's serving state."""
        with self._config_lock():
            self._write_config()

    def render_config(self) -> ModelServerConfig:
        """``models.config`` as the serving states say: each model with a served version,
        a ``specific`` policy listing the served versions, and its labels."""
        config = ModelServerConfig()
        config.model_config_list.SetInParent()
        for model in self.models():
            state = self._read_state(model)
            on_disk = set(self.versions(model))
            served = [v for v in state.served if v in on_disk]
            if not served:
                continue  # nothing to load: TF Serving would wait for it at start-up
            entry = config.model_config_list.config.add()
            entry.name = model
            entry.base_path = self._base_path(model)
            entry.model_platform = "tensorflow"
            entry.model_version_policy.specific.versions.extend(served)
            for label, version in sorted(state.labels.items()):
                if version in on_disk:
                    entry.version_labels[label] = version
        return config

    def _write_config(self) -> None:
        # Called under the lock: a config built before it could drop a model that another
        # process published while this one waited.
        _atomic_write(self.config_path, text_format.MessageToString(self.render_config()))

    def _base_path(self, model: str) -> str:
        if self.base_path_prefix is None:
            return str(self.root / model)
        return f"{self.base_path_prefix.rstrip('/')}/{model}"

    @contextmanager
    def _config_lock(self) -> Iterator[None]:
        with _PROCESS_LOCK:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock


def ensure_writable(folder: Path, what: str) -> None:
    """Fail now with ``StorageUnavailableError`` if ``folder`` cannot take a new file.

    A job checks its folders before training, not after an hour of it.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{secrets.token_hex(4)}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        raise StorageUnavailableError(
            f"the {what} ({folder}) is not writable: {exc.strerror}"
        ) from exc


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` by rename, so a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def read_model_card(version_dir: Path) -> dict[str, Any] | None:
    """The model card in ``version_dir``, or None if it has none (or an unreadable one)."""
    try:
        card = json.loads((version_dir / ASSETS_EXTRA / MODEL_CARD_FILE).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return card if isinstance(card, dict) else None


def onnx_file(version_dir: Path) -> Path | None:
    """The ONNX file of the version in ``version_dir``, or None if it has none."""
    path = version_dir / ASSETS_EXTRA / ONNX_FILE
    return path if path.is_file() else None


def misclassified_dir(version_dir: Path) -> Path:
    """Where the version in ``version_dir`` keeps its misclassified thumbnails and index."""
    return version_dir / ASSETS_EXTRA / MISCLASSIFIED_DIR


def _lock_path(staging: Path) -> Path:
    return staging.with_name(staging.name + _LOCK_SUFFIX)


@contextmanager
def _owner_lock(path: Path) -> Iterator[None]:
    """Create and hold an exclusive flock on ``path``; remove it on the way out."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # a cleaner removed the file between our open and our lock: again
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _remove_if_abandoned(staging: Path) -> bool:
    """Remove ``staging`` and its lock file if no process holds the lock; say whether."""
    lock = _lock_path(staging)
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        fd = None  # its publisher never took a lock, or finished just now
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live publish
        if fd is None and not staging.exists():
            return False
        shutil.rmtree(staging, ignore_errors=True)
        lock.unlink(missing_ok=True)
        return True
    finally:
        if fd is not None:
            os.close(fd)


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _check_staging(model_dir: Path, staging_dir: Path) -> None:
    if (
        staging_dir.absolute().parent != model_dir
        or not staging_dir.name.startswith(STAGING_PREFIX)
        or not _is_real_dir(staging_dir)
    ):
        raise ValueError(f"{staging_dir} is not a staging directory of {model_dir}")
    # rename(2) silently replaces an empty target directory, so an empty staging directory
    # could replace a version another publisher just claimed: refuse it.
    if not any(staging_dir.iterdir()):
        raise ValueError(f"{staging_dir} is empty: nothing to publish")


def _rename_to_next_version(
    model_dir: Path, staging_dir: Path, stamp: Callable[[Path, int], None] | None, floor: int
) -> int:
    candidate = max(_highest_number(model_dir), floor) + 1
    while True:
        if stamp is not None:
            stamp(staging_dir, candidate)
        _fsync_tree(staging_dir)
        try:
            os.rename(staging_dir, model_dir / str(candidate))
            return candidate
        except OSError as exc:
            if exc.errno not in _TAKEN:
                raise
        # Someone published between our scan and our rename: look again, never overwrite.
        candidate = max(candidate, _highest_number(model_dir)) + 1


def _highest_number(model_dir: Path) -> int:
    # Any numeric name counts, files included, so a version never lands on one.
    return max((int(e.name) for e in os.scandir(model_dir) if _NUMBER.fullmatch(e.name)), default=0)


def _fsync_tree(top: Path) -> None:
    # Children before parents, so each directory is synced after the entries it names.
    for dirpath, _, filenames in os.walk(top, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
