"""A tiny SavedModel, a model folder of its versions, and helpers for ``ModelManager`` tests.

The manager tests drive a real ``ModelManager`` one ``poll()`` at a time; the fixtures here
(re-exported by ``conftest.py``) give each test a fresh folder, loader and manager.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2

from service.model_server.config import ModelSettings, VersionPolicy
from service.model_server.core import model_spec
from service.model_server.manager import ModelManager, State, load_servable
from service.model_server.servable import Servable
from service.model_server.status import ServingError

MODEL = "m"
K = 3.0
TIMEOUT = 10.0  # seconds a thread gets to reach the next step; never reached when all is well


class TinyModel(tf.Module):
    """``y = x * k`` for ``x`` float32 [-1, 2]."""

    def __init__(self) -> None:
        super().__init__()
        self.k = tf.Variable(K)

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * self.k}


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-saved-model") / "model"
    module = TinyModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


class Repo:
    """One model's base path, with versions copied from the tiny SavedModel."""

    def __init__(self, base: Path, source: Path) -> None:
        self.base = base
        self.source = source
        base.mkdir(parents=True, exist_ok=True)

    def add(self, *versions: int) -> None:
        for version in versions:
            shutil.copytree(self.source, self.base / str(version))

    def add_broken(self, version: int) -> None:
        """A version whose graph file is garbage."""
        self.add(version)
        (self.base / str(version) / "saved_model.pb").write_bytes(b"not a saved model")

    def replace_with_good_copy(self, version: int) -> None:
        self.remove(version)
        self.add(version)

    def remove(self, version: int) -> None:
        shutil.rmtree(self.base / str(version))


class CountingLoader:
    """The real loader, counting its calls per version."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, int]] = Counter()

    def __call__(self, name: str, version: int, path: Path) -> Servable:
        self.calls[(name, version)] += 1
        return load_servable(name, version, path)


@pytest.fixture
def repo(tmp_path: Path, saved_model: Path) -> Repo:
    return Repo(tmp_path / MODEL, saved_model)


@pytest.fixture
def loader() -> CountingLoader:
    return CountingLoader()


@pytest.fixture
def manager(loader: CountingLoader) -> Iterator[ModelManager]:
    manager = ModelManager(loader, unload_wait_seconds=30.0)
    yield manager
    manager.unload_all()


def settings(
    base: Path,
    policy: VersionPolicy | None = None,
    labels: dict[str, int] | None = None,
    name: str = MODEL,
) -> ModelSettings:
    return ModelSettings(name, base, policy or VersionPolicy(), labels or {})


def configure(manager: ModelManager, *models: ModelSettings) -> None:
    manager.set_config({model.name: model for model in models})


def spec(
    name: str = MODEL, version: int | None = None, label: str | None = None
) -> model_pb2.ModelSpec:
    return model_spec(name, version, label)


def served(manager: ModelManager, model_spec: model_pb2.ModelSpec) -> int:
    """The version a request for ``model_spec`` gets."""
    with manager.acquire(model_spec) as servable:
        return servable.version


def refused(manager: ModelManager, model_spec: model_pb2.ModelSpec) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ServingError) as info, manager.acquire(model_spec):
        pass
    return info.value.code, info.value.message


def states(manager: ModelManager, name: str = MODEL) -> dict[int, State]:
    return {record.version: record.state for record in manager.status(name, None)}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


class PollThread(threading.Thread):
    """``manager.poll()`` in the background, keeping any exception for the test."""

    def __init__(self, manager: ModelManager) -> None:
        super().__init__(daemon=True)
        self.manager = manager
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.manager.poll()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.join(TIMEOUT)
        assert not self.is_alive(), "poll() did not finish"
        assert self.error is None


def not_found(request: str) -> tuple[grpc.StatusCode, str]:
    return grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}"
