"""The head search inside a training run: recorded, built, resumed, exported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf

from exporter.export import decode_batch, export_model
from service.contract.repository import ASSETS_EXTRA, MODEL_CARD_FILE
from service.contract.train_config import TrainConfig
from service.errors import TrainingCancelledError
from service.training import heads
from service.training.heads import HEAD_CHOICE, HIDDEN_UNITS
from service.training.trainer import PHASE1_STATE, Hooks, TrainingResult, train
from tests.support.trained import train_shapes


def _config(**overrides) -> TrainConfig:
    values = dict(
        model_name="heads",
        base_model="small_cnn",
        weights="none",
        epochs=2,
        batch_size=8,
        seed=1,
        pooling="auto",  # the search is opt-in
        dense_units=None,
    )
    values.update(overrides)
    return TrainConfig(**values)


def _best(candidates: list[dict]) -> str:
    ranked = sorted(
        range(len(candidates)),
        key=lambda i: (-candidates[i]["val_accuracy"], candidates[i]["val_loss"], i),
    )
    return candidates[ranked[0]]["name"]


def _head_layers(result: TrainingResult) -> list[str]:
    return [layer.name for layer in result.classifier.head.layers]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainingResult]:
    """The session model's recipe with the head left to the search."""
    return train_shapes(tmp_path_factory.mktemp("searched"), pooling="auto", dense_units=None)


def test_an_auto_run_searches_and_builds_the_winner(searched: tuple[Path, TrainingResult]):
    data, result = searched
    head = result.head

    names = [c["name"] for c in head["candidates"]]
    assert names == ["avg", f"avg+{HIDDEN_UNITS}", "flatten", f"flatten+{HIDDEN_UNITS}"]
    assert head["searched"] is True and head["chosen"] == _best(head["candidates"])
    assert all(0.0 <= c["val_accuracy"] <= 1.0 for c in head["candidates"])
    assert all(1 <= c["best_epoch"] <= head["search_epochs"] for c in head["candidates"])
    spec = result.classifier.head_spec
    assert spec.name == head["chosen"]
    assert result.classifier.features.get_layer(f"{spec.pooling}_pool") is not None
    assert ("dense_1" in _head_layers(result)) == bool(spec.dense_units)
    assert result.summary()["head"] == head
    # Phase 1 went on from the winner and ended no worse than the search left it.
    winner = next(c for c in head["candidates"] if c["name"] == head["chosen"])
    assert result.evaluation["loss"] <= winner["val_loss"] + 1e-3
    saved = json.loads((data.parent / "jobs" / "job" / HEAD_CHOICE).read_text())
    assert saved == head


def test_a_fixed_head_is_built_as_configured_without_a_search(shapes_dir, tmp_path, settings):
    config = _config(epochs=1, pooling="avg", dense_units=())

    result = train(shapes_dir, config, tmp_path / "job", settings)

    assert result.head["searched"] is False and result.head["chosen"] == "avg"
    assert result.head["candidates"] == []
    assert _head_layers(result) == ["features", "dropout", "logits", "probabilities"]
    assert not (tmp_path / "job" / HEAD_CHOICE).exists()
    assert "head_search" not in result.timings


def test_a_resumed_job_keeps_the_saved_choice_without_searching(
    shapes_dir, tmp_path, settings, monkeypatch
):
    job = tmp_path / "job"

    # The first attempt stops right after the search, in phase 1, as a crash would.
    def stop_after_the_search() -> bool:
        return (job / HEAD_CHOICE).is_file()

    with pytest.raises(TrainingCancelledError):
        train(shapes_dir, _config(), job, settings, Hooks(should_cancel=stop_after_the_search))
    saved = json.loads((job / HEAD_CHOICE).read_text())
    assert not (job / PHASE1_STATE).exists()

    def no_second_search(*args, **kwargs):
        raise AssertionError("a resumed job searched for its head again")

    monkeypatch.setattr(heads, "search_heads", no_second_search)
    result = train(shapes_dir, _config(), job, settings)

    assert result.head == saved
    assert result.classifier.head_spec.name == saved["chosen"]
    assert [h["phase"] for h in result.history] == ["head", "head"]


def test_a_flatten_head_serves_through_serving_default_and_onnx(shapes_dir, tmp_path, settings):
    # 16 px: the flattened input size (2 x 2 x 128) follows from the image size.
    size = 16
    config = _config(epochs=1, image_size=size, pooling="flatten")
    result = train(shapes_dir, config, tmp_path / "job", settings)
    assert result.classifier.head_spec.pooling == "flatten"
    assert result.classifier.features.output.shape == (None, 2 * 2 * 128)

    report = export_model(result, "flat", tmp_path / "version")

    card = json.loads((report.saved_model_path / ASSETS_EXTRA / MODEL_CARD_FILE).read_text())
    assert card["head"] == result.head
    assert [c["name"] for c in card["head"]["candidates"]] == ["flatten", f"flatten+{HIDDEN_UNITS}"]
    images = [path.read_bytes() for path in sorted(shapes_dir.rglob("*.*"))[::6]]
    pixels = decode_batch(images, size)
    expected = np.asarray(result.classifier.model(pixels, training=False))
    serve = tf.saved_model.load(str(report.saved_model_path)).signatures["serving_default"]
    served = serve(image_bytes=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    session = ort.InferenceSession(str(report.onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [size, size, 3]
    (from_onnx,) = session.run(["probabilities"], {"images": pixels})
    np.testing.assert_allclose(from_onnx, expected, atol=1e-4)
