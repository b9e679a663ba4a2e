"""Choosing the head on cached feature maps: candidates, the search itself, persistence."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from service.contract.train_config import TrainConfig
from service.errors import InvalidConfigError
from service.training.heads import (
    HEAD_CHOICE,
    HIDDEN_UNITS,
    MAX_FLATTEN_FEATURES,
    MAX_FLATTEN_HIDDEN_WEIGHTS,
    FeatureSplit,
    HeadChoice,
    SearchSetup,
    candidate_heads,
    known_choice,
    load_choice,
    pool_features,
    save_choice,
    search_heads,
    searches_head,
)
from service.training.model import HeadSpec
from service.training.pipeline import PipelineOptions

CLASSES = 4


def _config(**overrides) -> TrainConfig:
    values = {"pooling": "auto", "dense_units": None, **overrides}  # the search is opt-in
    return TrainConfig(model_name="heads", base_model="small_cnn", weights="none", **values)


def _setup(tmp_path, num_classes: int = CLASSES, **overrides) -> SearchSetup:
    options = PipelineOptions(
        image_size=8,
        batch_size=16,
        num_classes=num_classes,
        seed=0,
        cache_memory_bytes=1 << 30,
        cache_dir=tmp_path / "cache",
    )
    values = dict(options=options, learning_rate=1e-2, dropout=0.0, seed=0, epochs=8)
    values.update(overrides)
    return SearchSetup(**values)


def _position_problem(count: int, rng: np.random.Generator) -> FeatureSplit:
    """Class k lights up cell k of a 2x2 map, every channel alike: the averages are equal."""
    labels = rng.integers(0, CLASSES, count)
    maps = rng.normal(0.0, 0.05, (count, 2, 2, 3)).astype(np.float32)
    rows, cols = np.divmod(labels, 2)
    maps[np.arange(count), rows, cols, :] += 1.0
    return FeatureSplit(maps, labels)


def _translation_problem(count: int, columns: range, rng: np.random.Generator) -> FeatureSplit:
    """Class k lights up channel k somewhere in ``columns`` of a 6x6 map: only what, not where."""
    labels = rng.integers(0, CLASSES, count)
    maps = rng.normal(0.0, 0.05, (count, 6, 6, CLASSES)).astype(np.float32)
    rows = rng.integers(0, 6, count)
    cols = rng.choice(list(columns), count)
    maps[np.arange(count), rows, cols, labels] += 36.0  # an average of 1 over the map
    return FeatureSplit(maps, labels)


def _by_name(choice: HeadChoice) -> dict[str, float]:
    return {trial.spec.name: trial.val_accuracy for trial in choice.trials}


def test_auto_config_tries_both_poolings_with_and_without_a_hidden_layer():
    candidates = candidate_heads(_config(), (4, 4, 128))

    assert [spec.name for spec in candidates.specs] == [
        "avg",
        f"avg+{HIDDEN_UNITS}",
        "flatten",
        f"flatten+{HIDDEN_UNITS}",
    ]
    assert candidates.need_maps and candidates.skipped == ()
    assert searches_head(_config())


@pytest.mark.parametrize(
    ("map_shape", "flatten_units"),
    [
        ((4, 4, 128), 256),  # small_cnn at 32 px: 2,048 values, 0.5 M weights at 256 units
        ((3, 3, 1280), 64),  # MobileNetV2 at 96 px: 11,520 values
        ((7, 7, 1280), 16),  # MobileNetV2 at 224 px: 62,720 values, 1 M weights at 16
    ],
)
def test_a_hidden_layer_on_large_flattened_maps_is_narrowed(map_shape, flatten_units):
    specs = candidate_heads(_config(), map_shape).specs

    assert [spec.name for spec in specs] == [
        "avg",
        f"avg+{HIDDEN_UNITS}",
        "flatten",
        f"flatten+{flatten_units}",
    ]
    values = int(np.prod(map_shape))
    assert values * flatten_units <= MAX_FLATTEN_HIDDEN_WEIGHTS or flatten_units == 16
    assert flatten_units == HIDDEN_UNITS or values * flatten_units * 2 > MAX_FLATTEN_HIDDEN_WEIGHTS


def test_what_the_config_fixes_is_not_searched():
    only_pooling = candidate_heads(_config(dense_units=(64,)), (4, 4, 8))
    only_units = candidate_heads(_config(pooling="avg"), (4, 4, 8))

    assert [spec.name for spec in only_pooling.specs] == ["avg+64", "flatten+64"]
    assert [spec.name for spec in only_units.specs] == ["avg", f"avg+{HIDDEN_UNITS}"]
    assert not only_units.need_maps  # averages are all an avg-pooled head needs
    assert not searches_head(_config(pooling="flatten", dense_units=()))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("pooling", "max", "pooling: Input should be 'auto', 'avg' or 'flatten'"),
        ("dense_units", [64, 0], "dense_units.1: Input should be greater than or equal to 1"),
    ],
)
def test_an_unknown_head_is_rejected_before_any_work(field, value, message):
    with pytest.raises(InvalidConfigError) as caught:
        TrainConfig.parse({"model_name": "m", field: value})

    assert caught.value.status == 422
    assert message in caught.value.message


def test_a_fixed_head_needs_no_search_and_says_so(tmp_path):
    known = known_choice(_config(pooling="flatten", dense_units=(512,)), tmp_path)

    assert known is not None
    choice, weights = known
    assert weights is None
    assert choice.describe() == {
        "chosen": "flatten+512",
        "pooling": "flatten",
        "dense_units": [512],
        "searched": False,
        "selection": "fixed by the config",
        "candidates": [],
        "skipped": [],
        "search_epochs": 0,
        "search_seconds": 0.0,
    }
    assert known_choice(_config(), tmp_path) is None  # auto: a search is due


def test_flattening_a_huge_map_is_skipped_with_the_reason():
    side = int(np.sqrt(MAX_FLATTEN_FEATURES // 2048)) + 1
    candidates = candidate_heads(_config(), (side, side, 2048))

    assert [spec.pooling for spec in candidates.specs] == ["avg", "avg"]
    assert not candidates.need_maps
    assert candidates.skipped == (
        f"flatten: {side * side * 2048} features per image, over the {MAX_FLATTEN_FEATURES} limit",
    )


def test_pooled_features_match_the_layers_the_model_uses():
    maps = np.random.default_rng(0).normal(size=(5, 3, 3, 4)).astype(np.float32)

    np.testing.assert_allclose(pool_features(maps, "avg"), maps.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(pool_features(maps, "flatten"), maps.reshape(5, 36))
    np.testing.assert_array_equal(
        pool_features(maps, "avg", chunk=2), pool_features(maps, "avg", chunk=5)
    )


def test_search_picks_flatten_when_the_position_is_the_class(tmp_path):
    rng = np.random.default_rng(0)
    train, val = _position_problem(160, rng), _position_problem(80, rng)
    candidates = candidate_heads(_config(dense_units=()), train.maps.shape[1:])

    choice, weights = search_heads(candidates, train, val, _setup(tmp_path))

    accuracy = _by_name(choice)
    assert accuracy["flatten"] >= 0.95
    assert accuracy["avg"] <= 0.5  # the averages carry no class signal
    assert choice.spec == HeadSpec("flatten")
    # The winner's trained weights come back: kernel [12, 4] and bias of the logits.
    assert [w.shape for w in weights] == [(12, CLASSES), (CLASSES,)]


def test_search_picks_avg_when_the_class_can_be_anywhere(tmp_path):
    # Training shows each class only in the left half, validation only in the right half:
    # a flattened head never learns weights for the positions it is tested on.
    rng = np.random.default_rng(1)
    train = _translation_problem(160, range(0, 3), rng)
    val = _translation_problem(80, range(3, 6), rng)
    candidates = candidate_heads(_config(dense_units=()), train.maps.shape[1:])

    choice, _ = search_heads(candidates, train, val, _setup(tmp_path))

    accuracy = _by_name(choice)
    assert accuracy["avg"] >= 0.95
    assert accuracy["flatten"] <= 0.6
    assert choice.spec == HeadSpec("avg")


def test_the_search_stops_once_the_leader_has_settled(tmp_path):
    rng = np.random.default_rng(6)
    train, val = _position_problem(160, rng), _position_problem(80, rng)
    candidates = candidate_heads(_config(), train.maps.shape[1:])

    choice, _ = search_heads(candidates, train, val, _setup(tmp_path, epochs=60, patience=3))

    # Flattened heads learn this at once; the average-pooled ones never will, however long.
    assert choice.spec.pooling == "flatten"
    assert choice.epochs < 60
    assert all(1 <= trial.best_epoch <= choice.epochs for trial in choice.trials)
    assert choice.winner_loss == min(t.val_loss for t in choice.trials if t.spec == choice.spec)


def test_the_search_is_deterministic_given_the_seed(tmp_path):
    rng = np.random.default_rng(2)
    train, val = _position_problem(64, rng), _position_problem(32, rng)
    candidates = candidate_heads(_config(), train.maps.shape[1:])

    first, first_weights = search_heads(candidates, train, val, _setup(tmp_path, epochs=3))
    keras.utils.set_random_seed(99)  # whatever ran in between does not matter
    second, second_weights = search_heads(candidates, train, val, _setup(tmp_path, epochs=3))

    assert first.trials == second.trials and first.epochs == second.epochs
    for a, b in zip(first_weights, second_weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_ties_on_accuracy_go_to_the_lower_loss_then_the_earlier_candidate(tmp_path):
    rng = np.random.default_rng(3)
    train, val = _position_problem(96, rng), _position_problem(48, rng)
    candidates = candidate_heads(_config(), train.maps.shape[1:])

    choice, _ = search_heads(candidates, train, val, _setup(tmp_path))

    ranked = sorted(
        range(len(choice.trials)),
        key=lambda i: (-choice.trials[i].val_accuracy, choice.trials[i].val_loss, i),
    )
    assert choice.spec == choice.trials[ranked[0]].spec


def test_a_saved_choice_round_trips_with_its_weights(tmp_path):
    rng = np.random.default_rng(4)
    train, val = _position_problem(48, rng), _position_problem(24, rng)
    candidates = candidate_heads(_config(), train.maps.shape[1:])
    choice, weights = search_heads(candidates, train, val, _setup(tmp_path, epochs=2))

    save_choice(tmp_path, choice, weights)
    loaded = load_choice(tmp_path)

    assert loaded is not None
    assert loaded[0].describe() == choice.describe()
    assert json.loads((tmp_path / HEAD_CHOICE).read_text()) == choice.describe()
    for a, b in zip(loaded[1], weights, strict=True):
        np.testing.assert_array_equal(a, b)
    # A saved choice wins over the config: a resumed job never searches again.
    known = known_choice(_config(), tmp_path)
    assert known is not None and known[0].spec == choice.spec


def test_sample_weights_reach_the_candidates(tmp_path):
    # Classes 2 and 3 weigh nothing: a head trained with these weights never learns them.
    rng = np.random.default_rng(5)
    train, val = _position_problem(160, rng), _position_problem(80, rng)
    weights = (train.labels < 2).astype(np.float32)
    candidates = candidate_heads(_config(pooling="flatten", dense_units=()), (2, 2, 3))

    plain, _ = search_heads(candidates, train, val, _setup(tmp_path))
    weighted, _ = search_heads(
        candidates, FeatureSplit(train.maps, train.labels, weights), val, _setup(tmp_path)
    )

    assert plain.trials[0].val_accuracy >= 0.95
    assert weighted.trials[0].val_accuracy <= np.mean(val.labels < 2) + 0.05
