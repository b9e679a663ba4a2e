from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from service.training.dataset import scan_dataset
from service.training.preprocessing import decode_and_resize
from service.training.pretrain import pretrain_base, save_base_weights


def load_images(paths, image_size: int) -> np.ndarray:
    return np.stack([decode_and_resize(tf.io.read_file(str(p)), image_size).numpy() for p in paths])


@pytest.fixture(scope="session")
def pretrained_small_cnn(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small_cnn base trained end to end on the shapes (BatchNorm statistics included)."""
    from service.config import Settings

    index = scan_dataset(shapes_dir, Settings())
    images = load_images(index.paths, 32)
    base = pretrain_base(
        "small_cnn", images, np.asarray(index.labels), epochs=12, batch_size=16, seed=0
    )
    return save_base_weights(base, tmp_path_factory.mktemp("pretrained") / "shapes.weights.h5")


@pytest.fixture
def with_weights(settings, pretrained_small_cnn):
    """Settings whose weights folder holds ``shapes.weights.h5``."""
    settings.weights_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(pretrained_small_cnn, settings.weights_dir / pretrained_small_cnn.name)
    return settings
