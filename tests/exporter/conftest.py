"""A small trained model shared by the exporter tests (trained once per session)."""

from __future__ import annotations

import pytest

from service.config import Settings
from service.training.options import TrainConfig
from service.training.sample_data import make_shapes_dataset
from service.training.trainer import TrainingResult, train

IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def result(tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    root = tmp_path_factory.mktemp("export-train")
    data = make_shapes_dataset(root / "shapes", images_per_class=8, image_size=IMAGE_SIZE, seed=0)
    settings = Settings(
        data_root=root / "data",
        work_dir=root / "jobs",
        model_repo=root / "models",
        weights_dir=root / "weights",
        weights_download=False,
    )
    config = TrainConfig(
        model_name="shapes", base_model="small_cnn", weights="none", epochs=1, batch_size=8
    )
    return train(data, config, settings.work_dir / "job", settings)
