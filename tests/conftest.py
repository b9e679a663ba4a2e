"""Shared fixtures: small generated datasets and settings that never touch the network."""

from __future__ import annotations

import os
from pathlib import Path

# Quiet TensorFlow's C++ start-up logging before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from dataclasses import dataclass

import pytest

from exporter.publish import publish_result
from exporter.repository import ModelRepository
from service.config import Settings
from service.training.options import TrainConfig
from service.training.sample_data import make_shapes_dataset
from service.training.trainer import TrainingResult, train


@pytest.fixture(autouse=True)
def _empty_keras_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test may find (or fetch) ImageNet weights from the user's real Keras cache."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_root=tmp_path / "data",
        work_dir=tmp_path / "jobs",
        model_repo=tmp_path / "models",
        weights_dir=tmp_path / "weights",
        weights_download=False,
    )


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 16 images of 32x32 drawn shapes (PNG and JPEG)."""
    root = tmp_path_factory.mktemp("shapes") / "shapes"
    return make_shapes_dataset(root, images_per_class=16, image_size=32, seed=3)


@dataclass(frozen=True)
class Template:
    """One exported version to copy into repositories, and images of each class."""

    version_dir: Path
    images: list[tuple[str, bytes]]  # (class, encoded image), every class present

    def image(self, index: int = 0) -> bytes:
        return self.images[index % len(self.images)][1]


@pytest.fixture(scope="session")
def shapes_training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainingResult]:
    """One small model trained once per session: its dataset folder and the training result."""
    root = tmp_path_factory.mktemp("shapes-training")
    data = make_shapes_dataset(root / "shapes", images_per_class=8, image_size=32, seed=5)
    settings = Settings(
        data_root=root / "data",
        work_dir=root / "jobs",
        model_repo=root / "models",
        weights_dir=root / "weights",
        weights_download=False,
    )
    config = TrainConfig(
        model_name="shapes", base_model="small_cnn", weights="none", epochs=2, batch_size=8
    )
    return data, train(data, config, settings.work_dir / "job", settings)


@pytest.fixture(scope="session")
def template(
    tmp_path_factory: pytest.TempPathFactory, shapes_training: tuple[Path, TrainingResult]
) -> Template:
    """That model published as a version, to copy into repositories, with sample images."""
    data, result = shapes_training
    repository = ModelRepository(tmp_path_factory.mktemp("template") / "template-repo")
    published = publish_result(result, repository)
    images = [(path.parent.name, path.read_bytes()) for path in sorted(data.glob("*/*"))[::3]]
    return Template(published.path, images)
