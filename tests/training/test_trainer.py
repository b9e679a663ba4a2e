from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from service.contract.train_config import AugmentationConfig, TrainConfig
from service.errors import InvalidConfigError, TrainingCancelledError, WeightsUnavailableError
from service.training.callbacks import KeepBest
from service.training.data import sample_weights
from service.training.runtime import Runtime
from service.training.trainer import (
    PHASE1_WEIGHTS,
    Hooks,
    load_weight_arrays,
    train,
)


def _config(**overrides) -> TrainConfig:
    values = dict(
        model_name="shapes",
        base_model="small_cnn",
        weights="none",
        epochs=2,
        batch_size=8,
        early_stopping_patience=5,
        seed=1,
    )
    values.update(overrides)
    return TrainConfig(**values)


def _base_weights(result) -> list[np.ndarray]:
    return [np.array(w) for w in result.classifier.base.get_weights()]


def _initial_base(settings, config):
    from service.training.backbones import build_base, get_backbone, resolve_weights

    backbone = get_backbone(config.base_model)
    size = config.image_size or backbone.default_size
    weights = resolve_weights(backbone, config.weights, size, settings)
    return [np.array(w) for w in build_base(backbone, size, weights).get_weights()]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"augmentation": AugmentationConfig()}, {"feature_cache": False}],
    ids=["cached-features", "augmented-full-graph", "full-graph"],
)
def test_head_phase_leaves_the_frozen_base_unchanged(shapes_dir, tmp_path, with_weights, overrides):
    config = _config(weights="shapes.weights.h5", **overrides)
    before = _initial_base(with_weights, config)

    result = train(shapes_dir, config, tmp_path / "job", with_weights)

    after = _base_weights(result)
    assert len(before) == len(after) > 0
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)
    assert result.used_feature_cache == (overrides == {})
    assert [h["phase"] for h in result.history] == ["head", "head"]


def test_fine_tuning_trains_top_layers_but_keeps_batchnorm_statistics(
    shapes_dir, tmp_path, with_weights
):
    config = _config(
        weights="shapes.weights.h5",
        epochs=1,
        fine_tune_at="block3_conv1",
        fine_tune_epochs=2,
        fine_tune_learning_rate=1e-2,
        # A linear head that one epoch leaves short of its best: fine-tuning improves on
        # it, so its weights are the ones kept (a searched head could leave it nothing to do).
        pooling="avg",
        dense_units=(),
    )
    initial = {w.path: w.numpy() for w in _initial_base_model(with_weights, config).weights}

    result = train(shapes_dir, config, tmp_path / "job", with_weights)

    final = {w.path: w.numpy() for w in result.classifier.base.weights}
    bn = [p for p in initial if "_bn" in p]
    assert len(bn) == 6 * 4  # gamma, beta, moving mean and variance of 6 BatchNorm layers
    for path in bn:
        np.testing.assert_array_equal(initial[path], final[path], err_msg=path)
    for path in initial:
        if "block1_" in path or "block2_" in path:
            np.testing.assert_array_equal(initial[path], final[path], err_msg=path)
    changed = [p for p in initial if "block3_conv" in p]
    assert changed and all(not np.array_equal(initial[p], final[p]) for p in changed)
    assert result.fine_tune["unfrozen_layers"] == 2
    assert result.fine_tune["first_layer"] == "block3_conv1"
    assert {h["phase"] for h in result.history} >= {"head", "fine_tune"}


def _initial_base_model(settings, config):
    from service.training.backbones import build_base, get_backbone, resolve_weights

    backbone = get_backbone(config.base_model)
    size = config.image_size or backbone.default_size
    return build_base(backbone, size, resolve_weights(backbone, config.weights, size, settings))


def test_fine_tuning_that_does_not_improve_keeps_the_phase1_weights(
    shapes_dir, tmp_path, with_weights
):
    # Phase 1 converges to a near-zero loss; a huge learning rate then wrecks the base,
    # so no fine-tuning epoch can beat it.
    config = _config(
        weights="shapes.weights.h5",
        epochs=20,
        learning_rate=1e-2,
        fine_tune_layers=6,
        fine_tune_epochs=2,
        fine_tune_learning_rate=1.0,
    )
    job = tmp_path / "job"

    result = train(shapes_dir, config, job, with_weights)

    assert result.fine_tune["improved"] is False
    assert result.fine_tune["best_val_loss"] == result.fine_tune["phase1_val_loss"]
    phase1 = load_weight_arrays(job / PHASE1_WEIGHTS)
    for kept, saved in zip(result.classifier.model.get_weights(), phase1, strict=True):
        np.testing.assert_array_equal(kept, saved)


def test_cached_features_reach_the_same_accuracy_as_the_full_graph(
    shapes_dir, tmp_path, with_weights
):
    config = _config(weights="shapes.weights.h5", epochs=6, learning_rate=3e-3)

    fast = train(shapes_dir, config, tmp_path / "fast", with_weights)
    full = train(
        shapes_dir,
        config.model_copy(update={"feature_cache": False}),
        tmp_path / "full",
        with_weights,
    )

    assert fast.used_feature_cache and not full.used_feature_cache
    assert fast.evaluation["accuracy"] >= 0.8
    assert abs(fast.evaluation["accuracy"] - full.evaluation["accuracy"]) <= 0.1
    assert abs(fast.evaluation["loss"] - full.evaluation["loss"]) <= 0.05


def test_cancellation_stops_within_one_batch(shapes_dir, tmp_path, settings):
    calls = {"checks": 0, "cancel_at": 3}

    def should_cancel() -> bool:
        calls["checks"] += 1
        return calls["checks"] >= calls["cancel_at"]

    with pytest.raises(TrainingCancelledError, match="cancelled"):
        train(
            shapes_dir,
            _config(epochs=5, feature_cache=False),
            tmp_path / "job",
            settings,
            Hooks(should_cancel=should_cancel),
        )
    assert calls["checks"] == calls["cancel_at"]


def test_progress_reports_phases_epochs_steps_and_eta(shapes_dir, tmp_path, settings):
    seen = []

    result = train(
        shapes_dir, _config(epochs=2), tmp_path / "job", settings, Hooks(progress=seen.append)
    )

    # The head search reports progress, but none of its epochs as the model's.
    assert {p.phase for p in seen} == {"features", "head_search", "head"}
    ends = [p for p in seen if p.epoch_end]
    assert [(p.epoch, p.epochs) for p in ends] == [(1, 2), (2, 2)]
    steps = -(-result.split["train"] // 8)
    assert all(p.steps == steps for p in ends)
    assert ends[-1].eta_seconds == 0
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(ends[-1].metrics)


def test_a_resumed_job_skips_the_finished_head_phase(shapes_dir, tmp_path, settings):
    job = tmp_path / "job"
    first = train(shapes_dir, _config(), job, settings)

    second = train(shapes_dir, _config(), job, settings)

    # Nothing was trained again; the history is the first attempt's, each epoch once.
    assert second.history == first.history
    assert [e["epoch"] for e in second.history] == list(range(1, len(first.history) + 1))
    for a, b in zip(
        first.classifier.model.get_weights(), second.classifier.model.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert second.evaluation == first.evaluation


def test_missing_imagenet_weights_fail_before_the_data_is_read(tmp_path, settings):
    with pytest.raises(WeightsUnavailableError, match="mobilenet_v2_weights_tf_dim_ordering"):
        train(
            tmp_path / "no-such-dataset",
            _config(base_model="mobilenet_v2", weights="imagenet"),
            tmp_path / "job",
            settings,
        )


def test_unknown_fine_tune_layer_is_rejected_before_training(shapes_dir, tmp_path, settings):
    seen = []
    with pytest.raises(InvalidConfigError, match="names no layer of small_cnn: 'nope'"):
        train(
            shapes_dir,
            _config(fine_tune_at="nope"),
            tmp_path / "job",
            settings,
            Hooks(progress=seen.append),
        )
    assert seen == []


def test_mixed_precision_keeps_probabilities_in_float32(shapes_dir, tmp_path, settings):
    result = train(
        shapes_dir, _config(epochs=1, precision="mixed_float16"), tmp_path / "job", settings
    )

    assert result.runtime["precision"] == "mixed_float16"
    assert result.classifier.base.layers[1].compute_dtype == "float16"
    probabilities = result.classifier.model(np.zeros((2, 32, 32, 3), np.float32))
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, rtol=1e-5)
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("strategy_type", ["one_device", "mirrored"])
def test_training_runs_under_a_distribution_strategy(shapes_dir, tmp_path, settings, strategy_type):
    strategy = (
        tf.distribute.OneDeviceStrategy("/cpu:0")
        if strategy_type == "one_device"
        else tf.distribute.MirroredStrategy(["/cpu:0"])
    )
    runtime = Runtime(gpus=0, precision="float32", jit_compile=False, strategy=strategy)

    result = train(
        shapes_dir,
        _config(epochs=1, fine_tune_layers=2, fine_tune_epochs=1),
        tmp_path / "job",
        settings,
        runtime=runtime,
    )

    assert result.runtime["strategy"] == type(strategy).__name__
    assert result.evaluation["count"] == result.split["validation"]


def test_classic_recipe_head_is_flatten_dense_512(shapes_dir, tmp_path, settings):
    config = _config(
        epochs=1,
        pooling="flatten",
        dense_units=(512,),
        dropout=0.0,
        class_weight="balanced",
        label_smoothing=0.1,
    )

    result = train(shapes_dir, config, tmp_path / "job", settings)

    head = result.classifier.head
    assert [layer.name for layer in head.layers] == [
        "features",
        "dense_1",
        "logits",
        "probabilities",
    ]
    assert head.get_layer("dense_1").units == 512
    assert result.classifier.features.output.shape == (None, 4 * 4 * 128)


def test_evaluation_covers_every_validation_image(shapes_dir, tmp_path, settings):
    result = train(shapes_dir, _config(epochs=1), tmp_path / "job", settings)

    evaluation = result.evaluation
    assert result.split == {"train": 39, "validation": 9}
    assert evaluation["count"] == 9
    assert np.sum(evaluation["confusion_matrix"]) == 9
    assert [row["support"] for row in evaluation["per_class"].values()] == [3, 3, 3]
    summary = result.summary()
    assert summary["classes"] == ["circle", "square", "triangle"]
    assert summary["dataset"]["fingerprint"] == result.dataset.fingerprint


def test_balanced_class_weights_even_out_the_classes():
    labels = np.array([0] * 8 + [1] * 2)

    weights = sample_weights(labels, 2, _config(class_weight="balanced"))

    np.testing.assert_allclose(weights[:8], 0.625)
    np.testing.assert_allclose(weights[8:], 2.5)
    assert sample_weights(labels, 2, _config()) is None


def test_keep_best_restores_the_baseline_when_no_epoch_beats_it():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    baseline = [np.ones_like(w) for w in model.get_weights()]
    keep = KeepBest(baseline=0.5, baseline_weights=baseline)
    keep.set_model(model)

    keep.on_epoch_end(0, {"val_loss": 0.7})
    keep.on_epoch_end(1, {"val_loss": 0.5})
    keep.on_train_end()

    assert keep.improved is False and keep.best == 0.5
    for restored, expected in zip(model.get_weights(), baseline, strict=True):
        np.testing.assert_array_equal(restored, expected)


def test_keep_best_keeps_the_best_epoch_when_one_beats_the_baseline():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    keep = KeepBest(baseline=0.5, baseline_weights=[np.zeros_like(w) for w in model.get_weights()])
    keep.set_model(model)
    best = [np.array(w) for w in model.get_weights()]

    keep.on_epoch_end(0, {"val_loss": 0.3})
    model.set_weights([w + 1 for w in best])
    keep.on_epoch_end(1, {"val_loss": 0.4})
    keep.on_train_end()

    assert keep.improved is True and keep.best == 0.3
    for restored, expected in zip(model.get_weights(), best, strict=True):
        np.testing.assert_array_equal(restored, expected)
