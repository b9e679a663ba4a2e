"""The exporter tests share the session's trained model (see tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.training.trainer import TrainingResult


@pytest.fixture(scope="session")
def result(shapes_training: tuple[Path, TrainingResult]) -> TrainingResult:
    return shapes_training[1]
