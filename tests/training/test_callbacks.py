"""KeepBest remembers the best fine-tuning epoch across a crash."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from service.training.callbacks import KeepBest


def tiny_model() -> keras.Model:
    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Dense(1)(inputs))


def test_the_best_weights_survive_a_restart(tmp_path: Path):
    path = tmp_path / "best.npz"
    model = tiny_model()
    baseline = model.get_weights()
    keep = KeepBest(1.0, baseline, path)
    keep.set_model(model)
    model.set_weights([np.full_like(w, 7.0) for w in baseline])
    keep.on_epoch_end(0, {"val_loss": 0.5})  # better than phase 1: kept, and saved
    model.set_weights([np.full_like(w, 9.0) for w in baseline])
    keep.on_epoch_end(1, {"val_loss": 0.8})  # worse: ignored

    # The worker dies here; the next one builds a fresh KeepBest on the same folder.
    resumed = KeepBest(1.0, baseline, path)
    assert (resumed.best, resumed.improved) == (0.5, True)
    restored = tiny_model()
    resumed.set_model(restored)
    resumed.on_train_end()
    assert all((w == 7.0).all() for w in restored.get_weights())


def test_without_an_improvement_nothing_is_written(tmp_path: Path):
    path = tmp_path / "best.npz"
    model = tiny_model()
    keep = KeepBest(0.1, model.get_weights(), path)
    keep.set_model(model)
    keep.on_epoch_end(0, {"val_loss": 0.5})
    assert not path.exists()
    assert keep.improved is False
