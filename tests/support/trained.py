"""Heavy fixtures: one small model trained once per test session, and its exported version.

A pytest plugin (the root conftest loads it); TensorFlow is imported only inside the
fixtures, so tests that never ask for a model never pay for it. Where TensorFlow is not
installed (the API's own test environment), ``template`` is trained and published by a
subprocess of the Python that has it (``tests.support.servers.tf_python``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from service.config import Settings
from service.training.sample_data import make_shapes_dataset
from tests.support.servers import ROOT, has_tensorflow, tf_python

if TYPE_CHECKING:
    from service.training.trainer import TrainingResult

MODEL = "shapes"


@dataclass(frozen=True)
class Template:
    """One exported version to copy into repositories, and images of each class."""

    version_dir: Path
    images: list[tuple[str, bytes]]  # (class, encoded image), every class present

    def image(self, index: int = 0) -> bytes:
        return self.images[index % len(self.images)][1]


def train_shapes(root: Path, **overrides: object) -> tuple[Path, TrainingResult]:
    """Train the session's model under ``root``: its dataset folder and training result
    (``overrides`` change its training config)."""
    from service.contract.train_config import TrainConfig
    from service.training.trainer import train

    data = make_shapes_dataset(root / "shapes", images_per_class=8, image_size=32, seed=5)
    settings = Settings(
        data_root=root / "data",
        work_dir=root / "jobs",
        model_repo=root / "models",
        weights_dir=root / "weights",
        weights_download=False,
    )
    config = TrainConfig.model_validate(
        {
            "model_name": MODEL,
            "base_model": "small_cnn",
            "weights": "none",
            "epochs": 2,
            "batch_size": 8,
            **overrides,
        }
    )
    return data, train(data, config, settings.work_dir / "job", settings)


def publish_template(data: Path, result: TrainingResult, repo: Path) -> Template:
    """Publish ``result`` into ``repo`` and pick images of every class from ``data``."""
    from exporter.publish import publish_result
    from service.contract.repository import ModelRepository

    published = publish_result(result, ModelRepository(repo))
    return Template(published.path, template_images(data))


def template_images(data: Path) -> list[tuple[str, bytes]]:
    return [(path.parent.name, path.read_bytes()) for path in sorted(data.glob("*/*"))[::3]]


@pytest.fixture(scope="session")
def shapes_training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainingResult]:
    """One small model trained once per session: its dataset folder and the training result."""
    return train_shapes(tmp_path_factory.mktemp("shapes-training"))


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Template:
    """That model published as a version, to copy into repositories, with sample images."""
    repo = tmp_path_factory.mktemp("template") / "template-repo"
    if has_tensorflow():
        data, result = request.getfixturevalue("shapes_training")
        return publish_template(data, result, repo)
    root = tmp_path_factory.mktemp("template-training")
    done = subprocess.run(
        [tf_python(), "-m", "tests.support.trained", str(root), str(repo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return Template(Path(found["version_dir"]), template_images(Path(found["data"])))


def main(argv: list[str]) -> int:
    """``python -m tests.support.trained ROOT REPO``: train, publish, print JSON paths."""
    root, repo = Path(argv[0]), Path(argv[1])
    data, result = train_shapes(root)
    template = publish_template(data, result, repo)
    print(json.dumps({"version_dir": str(template.version_dir), "data": str(data)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
