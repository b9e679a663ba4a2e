"""A real-sized pretrained base for the benchmarks, built once, offline, and cached.

ImageNet weights cannot be fetched here, so MobileNetV2 (Keras Applications; pretrained at
64 px, used at 96 px) is trained from scratch on a source task we can generate: drawn
shapes on textured backgrounds (``bench.synthetic.PRETRAIN_SHAPES``). The transfer task
the benchmarks time is a different one: other shapes (``TRANSFER_SHAPES``). The weights go
to ``var/bench-cache/`` (``FTSERVE_BENCH_CACHE`` overrides) under a name that carries a
hash of the recipe, so a changed recipe builds a new base and an unchanged one is reused.
The file is an ordinary ``.weights.h5`` for the backbone: ftserve's ``weights`` option
takes it by name with the cache as the weights folder. ``--quick`` runs pretrain a smaller
base of their own (``QUICK_RECIPE``).

    python -m bench.pretrain_base [--quick]   build (or find) the bases and print them
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.report import Measured
from bench.synthetic import PRETRAIN_SHAPES, TEXTURED

ROOT = Path(__file__).resolve().parents[1]
_RECIPE_VERSION = 1  # bump when the generator or the training loop changes meaning


@dataclass(frozen=True)
class Recipe:
    base_model: str = "mobilenet_v2"
    # Pretrained at 64 px (2.25x cheaper a step than 96 px), used at 96 px: the base is
    # fully convolutional, and MobileNetV2 from scratch needs thousands of steps.
    image_size: int = 64
    shapes: tuple[str, ...] = PRETRAIN_SHAPES
    textured: float = TEXTURED
    per_class: int = 500
    holdout_per_class: int = 40
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3
    # Keras' MobileNetV2 averages BatchNormalization statistics with momentum 0.99: over a
    # few hundred steps they never settle. 0.9 lets them follow a short pretraining.
    bn_momentum: float = 0.9
    seed: int = 0

    def key(self) -> str:
        """A short hash of everything that shapes the weights."""
        text = json.dumps({**asdict(self), "version": _RECIPE_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def file_name(self) -> str:
        return f"{self.base_model}-{self.image_size}px-{self.key()}.weights.h5"


RECIPE = Recipe()
# ``--quick``: a smaller pretraining (about 4 minutes instead of 12 on 2 CPUs), cached apart,
# so that a quick run on a fresh checkout ends within 10 minutes. Its base is weaker: quick
# numbers compare with other quick runs, not with full ones.
QUICK_RECIPE = Recipe(per_class=300, epochs=18)


def recipe_for(quick: bool) -> Recipe:
    """The pretraining a run of that size uses."""
    return QUICK_RECIPE if quick else RECIPE


def cache_dir() -> Path:
    """Where pretrained bases are kept between runs (git-ignored)."""
    return Path(os.environ.get("FTSERVE_BENCH_CACHE") or ROOT / "var" / "bench-cache")


def pretrained_base(recipe: Recipe = RECIPE, folder: Path | None = None) -> dict[str, Any]:
    """Find the recipe's base in the cache, or train and cache it (a few minutes).

    Returns:
        ``weights_dir`` and ``weights`` (the folder and file name a TrainConfig takes),
        the recipe, the seconds pretraining took (0 when cached) and the source task's
        held-out accuracy.
    """
    return _cached(recipe.file_name(), folder, lambda path: _pretrain(recipe, path))


def digits_base(folder: Path | None = None) -> dict[str, Any]:
    """small_cnn trained on scikit-learn's digits 0–4 at 32 px: the base of the digits task."""
    return _cached(f"small_cnn-32px-digits04-v{_RECIPE_VERSION}.weights.h5", folder, _digits)


def _cached(name: str, folder: Path | None, build: Callable[[Path], dict]) -> dict[str, Any]:
    folder = folder or cache_dir()
    path = folder / name
    card = path.with_name(name.removesuffix(".weights.h5") + ".json")
    if path.is_file() and card.is_file():
        info = json.loads(card.read_text())
        return {**info, "cached": True, "weights_dir": str(folder), "weights": name}
    print(f"pretraining {name} (once; cached in {folder})", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = build(path)
    card.write_text(json.dumps(info, indent=2) + "\n")
    print(f"pretrained in {info['pretrain_seconds']:.0f} s: {info}", flush=True)
    return {**info, "cached": False, "weights_dir": str(folder), "weights": name}


def _save(base: Any, path: Path) -> None:
    partial = path.with_name(f".partial-{os.getpid()}-{path.name}")
    base.save_weights(partial)
    partial.replace(path)  # a reader never sees half a file


def _pretrain(recipe: Recipe, path: Path) -> dict[str, Any]:
    import keras

    from bench.synthetic import make_arrays
    from service.training.backbones import (
        BackbonePreprocessing,
        ResolvedWeights,
        build_base,
        get_backbone,
    )

    started = time.perf_counter()
    size, shapes = recipe.image_size, recipe.shapes
    images, labels = make_arrays(shapes, recipe.per_class, size, recipe.seed, recipe.textured)
    held = make_arrays(shapes, recipe.holdout_per_class, size, recipe.seed + 1, recipe.textured)
    keras.utils.set_random_seed(recipe.seed)
    backbone = get_backbone(recipe.base_model)
    base = build_base(backbone, size, ResolvedWeights("none"))
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = recipe.bn_momentum
    inputs = keras.Input((size, size, 3))
    x = BackbonePreprocessing(backbone.preprocessing)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(base(x))
    model = keras.Model(inputs, keras.layers.Dense(len(shapes), activation="softmax")(x))
    model.compile(
        keras.optimizers.Adam(recipe.learning_rate),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    started_fit = time.perf_counter()
    report = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: print(
            f"  epoch {epoch + 1}/{recipe.epochs}: accuracy {logs['accuracy']:.3f}, "
            f"{time.perf_counter() - started_fit:.0f} s",
            flush=True,
        )
    )
    model.fit(
        images,
        labels,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        verbose=0,
        callbacks=[report],
    )
    accuracy = model.evaluate(*held, verbose=0, return_dict=True)["accuracy"]
    _save(base, path)
    return {
        "recipe": {**asdict(recipe), "key": recipe.key()},
        "pretrain_seconds": round(time.perf_counter() - started, 1),
        "source_accuracy": round(float(accuracy), 4),
        "source_images": len(labels),
    }


def _digits(path: Path) -> dict[str, Any]:
    import numpy as np
    from sklearn.datasets import load_digits

    from service.training.pretrain import pretrain_base

    started = time.perf_counter()
    data = load_digits()
    keep = data.target <= 4
    # The 8x8 digits, scaled to 0-255 and resized to 32 px the way the pipeline resizes.
    images = _resize(data.images[keep] * (255 / 16), 32)
    base = pretrain_base("small_cnn", images, np.asarray(data.target[keep]), epochs=8, seed=0)
    _save(base, path)
    return {
        "recipe": "small_cnn, 32 px, digits 0-4, 8 epochs, seed 0",
        "pretrain_seconds": round(time.perf_counter() - started, 1),
    }


def _resize(gray: Any, size: int) -> Any:
    import numpy as np
    import tensorflow as tf

    rgb = np.repeat(gray[..., None].round().astype(np.uint8), 3, axis=-1)
    resized = tf.image.resize(rgb, (size, size), method="bilinear", antialias=True)
    return np.clip(resized.numpy(), 0, 255).astype(np.float32)


def measure(quick: bool) -> Measured:
    """The suite's first step: both bases, built or found, with what pretraining cost."""
    found = {"mobilenet_v2": pretrained_base(recipe_for(quick)), "small_cnn_digits": digits_base()}
    for name, info in found.items():
        state = "cached" if info["cached"] else "built now"
        print(
            f"base {name}: {info['weights']} ({state}; pretraining took "
            f"{info['pretrain_seconds']} s)"
        )
    return Measured(details=found)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick run's smaller base")
    args = parser.parse_args()
    print(json.dumps(measure(quick=args.quick).details, indent=2))


if __name__ == "__main__":
    main()
