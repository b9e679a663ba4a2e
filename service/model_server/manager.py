"""Which versions are loaded, and how requests find one: TensorFlow Serving's manager.

A poll looks at each model's base path, works out the versions its policy wants, loads
and warms up the new ones, and only then unloads the ones no longer wanted, so a model
never goes dark during a swap (TensorFlow Serving's availability-preserving policy). A
version that fails to load is reported as END with its error and the old one keeps serving.
A request holds its version until it finishes: unloading waits for requests in flight.
A new config may only label versions that are AVAILABLE already, TensorFlow Serving's rule;
``--allow_version_labels_for_unavailable_models`` relaxes it for labels that do not move.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import grpc
from tensorflow_serving.apis import model_pb2

from service.model_server.batching import BatchingOptions
from service.model_server.config import ConfigError, ModelSettings, read_batching_parameters
from service.model_server.options import DEFAULT_MAX_IMAGE_PIXELS
from service.model_server.servable import (
    FunctionServable,
    LoadError,
    Servable,
    has_saved_model,
    read_meta_graph,
)
from service.model_server.session_servable import SessionServable
from service.model_server.status import (
    ServingError,
    failed_precondition,
    invalid_argument,
    not_found,
    unavailable,
)

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"[0-9]+")
# A version's own batching parameters, TensorFlow Serving's file name.
BATCHING_PARAMS_FILE = "batching_params.pbtxt"


class State(IntEnum):
    """``ModelVersionStatus.State``, with the same numbers."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass
class VersionRecord:
    version: int
    state: State = State.START
    error: ServingError | None = None
    servable: Servable | None = None
    in_flight: int = 0
    fingerprint: tuple[object, ...] = ()


@dataclass
class ModelRecord:
    settings: ModelSettings
    versions: dict[int, VersionRecord] = field(default_factory=dict)


Loader = Callable[[str, int, Path], Servable]


def load_servable(
    name: str,
    version: int,
    path: Path,
    warmup: bool = True,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    per_model_batching: bool = False,
) -> Servable:
    """Open a version, read its own batching parameters if asked to, and warm it up.

    With ``per_model_batching`` (``--enable_per_model_batching_parameters``), a version
    batches with the ``batching_params.pbtxt`` in its folder, and a version without one
    is not batched, as in TensorFlow Serving; a file that does not parse fails the load.
    """
    servable = open_servable(name, version, path, max_image_pixels)
    if per_model_batching and (path / BATCHING_PARAMS_FILE).is_file():
        try:
            params = read_batching_parameters(path / BATCHING_PARAMS_FILE)
            servable.own_batching = BatchingOptions.from_proto(params)
        except (ConfigError, ValueError) as exc:
            raise LoadError(f"cannot use {path / BATCHING_PARAMS_FILE}: {exc}") from exc
    if warmup:
        servable.warm_up()
    return servable


def open_servable(
    name: str, version: int, path: Path, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Servable:
    """Load a version so that it serves as it would in TensorFlow Serving.

    A SavedModel with a TF2 object graph runs its restored functions; one without (written
    by TF1's ``SavedModelBuilder`` or an Estimator) runs in a TF1 session, TensorFlow
    Serving's own way to serve every model. A TF2 export that ``tf.saved_model.load``
    cannot rebuild fails to load rather than fall back: its session graph may lack what the
    functions restore (Keras batch-norm statistics), and would fail every request instead.
    """
    meta_graph = read_meta_graph(path)
    if not meta_graph.HasField("object_graph_def"):
        return SessionServable(name, version, path, meta_graph, max_image_pixels)
    return FunctionServable(name, version, path, meta_graph, max_image_pixels)


def versions_on_disk(base_path: Path) -> list[int]:
    """Numeric subdirectories that hold a SavedModel graph, oldest first."""
    return sorted(version_dirs(base_path))


def version_dirs(base_path: Path) -> dict[int, Path]:
    """Each version under ``base_path`` and the folder it loads from.

    A folder's name is read as a number, as TensorFlow Serving reads it, so ``00000123`` is
    version 123 and loads from ``00000123``. ``.staging-*`` folders are not numbers, and a
    numeric folder still being copied has no graph file yet, so neither is a version.
    When two folders name one version (``123`` and ``0123``) TensorFlow Serving keeps
    whichever its directory listing gives last and warns. A listing has no order, so here
    the names are sorted: the plain ``123`` sorts after every zero-padded spelling and wins,
    the folder TensorFlow Serving's ``specific`` policy looks up first.
    """
    try:
        entries = sorted(os.scandir(base_path), key=lambda e: e.name)
    except OSError:
        return {}
    found: dict[int, Path] = {}
    for entry in entries:
        if not (_NUMBER.fullmatch(entry.name) and entry.is_dir()):
            continue
        version, path = int(entry.name), Path(entry.path)
        if version <= 0 or not has_saved_model(path):
            continue
        if version in found:
            log.warning(
                "Duplicate version directories detected. Version %d will be loaded from %s,"
                " %s will be ignored.",
                version,
                path,
                found[version],
            )
        found[version] = path
    return found


class ModelManager:
    """Loads, serves and unloads model versions; thread-safe."""

    def __init__(
        self,
        loader: Loader,
        unload_wait_seconds: float = 60.0,
        *,
        allow_version_labels_for_unavailable_models: bool = False,
    ) -> None:
        """Manage no models yet; ``set_config`` names them.

        Args:
            loader: Loads one version from its folder; whatever it raises ends the version.
            unload_wait_seconds: How long an unload waits for requests still using it.
            allow_version_labels_for_unavailable_models: TensorFlow Serving's flag: a
                config may give a new label to a version that is not AVAILABLE yet.
        """
        self._loader = loader
        self._unload_wait = unload_wait_seconds
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._lock = threading.Condition()
        self._poll_lock = threading.Lock()
        self._models: dict[str, ModelRecord] = {}
        self._removed: list[str] = []
        self.ready = False  # set after the first poll: every configured model was tried

    def set_config(self, models: dict[str, ModelSettings]) -> None:
        """Serve exactly ``models`` from the next poll on.

        Raises:
            ServingError: FAILED_PRECONDITION when a version label names a version that is
                not AVAILABLE now; the current models and labels then stay as they are.
        """
        with self._lock:
            self._check_labels(models)
            for name, settings in models.items():
                record = self._models.get(name)
                if record is None:
                    self._models[name] = ModelRecord(settings)
                else:
                    record.settings = settings
            self._removed = [name for name in self._models if name not in models]

    def poll(self) -> None:
        """Bring loaded versions in line with the disk and the config (blocking)."""
        with self._poll_lock:
            with self._lock:
                removed, self._removed = self._removed, []
                models = [(name, r.settings) for name, r in self._models.items()]
            for name in removed:
                self._retire_model(name)
            for name, settings in models:
                if name not in removed:
                    self._poll_model(name, settings)
            self.ready = True

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    @contextmanager
    def acquire(self, spec: model_pb2.ModelSpec) -> Iterator[Servable]:
        """Resolve ``spec`` to an available version and hold it while the block runs."""
        with self._lock:
            record = self._resolve(spec)
            record.in_flight += 1
            servable = record.servable
        assert servable is not None
        try:
            yield servable
        finally:
            with self._lock:
                record.in_flight -= 1
                if record.in_flight == 0:
                    self._lock.notify_all()

    def status(self, name: str, version: int | None) -> list[VersionRecord]:
        """Copies of the version records of ``name`` (one version, or all, newest last)."""
        with self._lock:
            model = self._models.get(name)
            records = {} if model is None else model.versions
            if version is not None:
                if version not in records:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [_copy(records[version])]
            if not records:
                raise not_found(f"Could not find any versions of model {name}")
            return [_copy(records[v]) for v in sorted(records)]

    def unload_all(self) -> None:
        with self._poll_lock:
            for name in self.model_names():
                self._retire_model(name)

    # -- labels -------------------------------------------------------------------------

    def _check_labels(self, models: dict[str, ModelSettings]) -> None:
        """Refuse the whole config if one label names a version that cannot answer now.

        TensorFlow Serving's ``UpdateModelVersionLabelMap`` runs before the config's models
        are added, so a label can only name a version that an earlier config loaded.
        The caller holds the lock.
        """
        for name, settings in models.items():
            for label, version in settings.labels.items():
                if not self._may_label(name, label, version):
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {name},"
                        " which is not currently available for inference"
                    )

    def _may_label(self, name: str, label: str, version: int) -> bool:
        model = self._models.get(name)
        record = None if model is None else model.versions.get(version)
        if record is not None and record.state == State.AVAILABLE:
            return True
        if not self._allow_unavailable_labels:
            return False
        # Even with the flag a label may not move off the version it names now: its
        # requests would fail until the new version loaded. A new label has none to break.
        return self._current_labels(name).get(label, version) == version

    def _current_labels(self, name: str) -> dict[str, int]:
        model = self._models.get(name)
        # A model the last config dropped lost its labels, even before a poll retires it.
        if model is None or name in self._removed:
            return {}
        return model.settings.labels

    # -- resolution ---------------------------------------------------------------------

    def _resolve(self, spec: model_pb2.ModelSpec) -> VersionRecord:
        model = self._models.get(spec.name)
        choice = spec.WhichOneof("version_choice")
        version: int | None = None
        if choice == "version":
            version = spec.version.value
        elif choice == "version_label" and spec.version_label:
            if model is None or spec.version_label not in model.settings.labels:
                raise invalid_argument(f"Unrecognized servable version label: {spec.version_label}")
            version = model.settings.labels[spec.version_label]
        request = f"Specific({spec.name}, {version})" if version else f"Latest({spec.name})"
        if model is None:
            if not self.ready:
                raise unavailable(f"The server is starting; servable {request} is not loaded yet")
            raise not_found(f"Servable not found for request: {request}")
        available = {v: r for v, r in model.versions.items() if r.state == State.AVAILABLE}
        if version:
            if version in available:
                return available[version]
        elif available:
            return available[max(available)]
        if self._loading(model, version):
            raise unavailable(f"Servable {request} is loading; no version is available yet")
        raise not_found(f"Servable not found for request: {request}")

    def _loading(self, model: ModelRecord, version: int | None) -> bool:
        if not self.ready and not model.versions:
            return True
        pending = {State.START, State.LOADING}
        return any(
            r.state in pending and (version is None or v == version)
            for v, r in model.versions.items()
        )

    # -- loading and unloading ----------------------------------------------------------

    def _poll_model(self, name: str, settings: ModelSettings) -> None:
        folders = version_dirs(settings.base_path)
        aspired = settings.policy.aspired(sorted(folders))
        for version in sorted(aspired):
            path = folders[version]
            if self._needs_load(name, version, _fingerprint(path)):
                self._load(name, version, path)
        with self._lock:
            versions = self._models[name].versions
            any_available = any(
                versions[v].state == State.AVAILABLE for v in aspired if v in versions
            )
            # Keep the old version until a wanted one serves, unless none is wanted at all.
            retire = [
                r
                for v, r in versions.items()
                if v not in aspired
                and r.state == State.AVAILABLE
                and (any_available or not aspired)
            ]
        for record in retire:
            self._unload(name, record)

    def _needs_load(self, name: str, version: int, fingerprint: tuple[object, ...]) -> bool:
        with self._lock:
            record = self._models[name].versions.get(version)
            if record is None:
                return True
            # An unloaded version may come back; a failed one only once its files changed.
            return record.state == State.END and (
                record.error is None or record.fingerprint != fingerprint
            )

    def _load(self, name: str, version: int, path: Path) -> None:
        fingerprint = _fingerprint(path)
        record = VersionRecord(version, State.LOADING, fingerprint=fingerprint)
        with self._lock:
            self._models[name].versions[version] = record
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        try:
            servable = self._loader(name, version, path)
        except Exception as exc:  # whatever went wrong, the version must end, not hang
            error = _load_error(exc)
            log.error(
                "Loading servable version {name: %s version: %d} failed: %s",
                name,
                version,
                error.message,
            )
            with self._lock:
                record.state, record.error = State.END, error
            return
        with self._lock:
            record.servable, record.state = servable, State.AVAILABLE
        log.info("Successfully loaded servable version {name: %s version: %d}", name, version)

    def _unload(self, name: str, record: VersionRecord) -> None:
        with self._lock:
            record.state = State.UNLOADING  # no new request can acquire it from here on
            finished = self._lock.wait_for(lambda: record.in_flight == 0, self._unload_wait)
            if not finished:
                log.warning(
                    "Unloading {name: %s version: %d} with %d requests still running",
                    name,
                    record.version,
                    record.in_flight,
                )
            record.servable, record.state = None, State.END
        log.info("Unloaded servable version {name: %s version: %d}", name, record.version)

    def _retire_model(self, name: str) -> None:
        with self._lock:
            model = self._models.get(name)
            live = (
                []
                if model is None
                else [r for r in model.versions.values() if r.state == State.AVAILABLE]
            )
        for record in live:
            self._unload(name, record)
        with self._lock:
            self._models.pop(name, None)


def _fingerprint(path: Path) -> tuple[object, ...]:
    """Changes whenever any file of the version is written, replaced or copied over.

    ctime and inode are in: copy tools preserve sizes and mtimes, but cannot set those.
    """
    entries: list[tuple[object, ...]] = []
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            file = os.path.join(dirpath, name)
            try:
                info = os.stat(file)
            except OSError:
                continue
            relative = os.path.relpath(file, path)
            entries.append(
                (relative, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
            )
    return tuple(sorted(entries))


def _load_error(exc: Exception) -> ServingError:
    cause = exc.__cause__
    if isinstance(exc, LoadError) and isinstance(cause, ServingError):
        return ServingError(cause.code, str(exc))
    if isinstance(exc, LoadError):
        return ServingError(grpc.StatusCode.UNKNOWN, str(exc))
    return ServingError(grpc.StatusCode.UNKNOWN, f"loading failed: {type(exc).__name__}: {exc}")


def _copy(record: VersionRecord) -> VersionRecord:
    return VersionRecord(record.version, record.state, record.error, None, record.in_flight)
