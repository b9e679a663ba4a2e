"""P2: the share of each training step spent waiting for input, in both phases.

The real pipeline (``service.training.pipeline``) and the real classifier
(``service.training.model``) on the P1 transfer task (MobileNetV2 at 96 px, the benchmark's
pretrained base), stepped the way Keras ``fit`` steps: ``model.train_function`` takes the
next batch inside the compiled step. Waiting is what the real input pipeline adds over an
ideal one: the same steps on one batch held in memory and repeated (same shapes, so the
same compiled step). Real and ideal take turns round by round, so drifting load hits both
alike. Share = (real − ideal) / real, over all rounds.

(Timing Python's ``next()`` on the iterator around ``train_on_batch`` instead charges the
eager iterator's own ~0.3 ms a call to the input, which ``fit`` does not pay.)

- phase 1: the head on cached base features (``array_dataset``); a round is
  ``PHASE1_PASSES`` passes over the features, since one pass lasts milliseconds;
- phase 2: the model with the top of the base unfrozen, on decoded images; a round is an
  epoch. As in the trainer, its batches come from the decoded examples the feature pass
  read (``decoded_dataset``): the feature pass filled their cache, so no epoch decodes.

The reported value is the larger of the two phases' shares.

    python -m bench.input_wait [--quick]
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import quick_main
from bench.pretrain_base import pretrained_base, recipe_for
from bench.report import Measured
from bench.synthetic import TRANSFER_SHAPES, make_dataset

KEY = "p2_input_wait_share"
SIZES = {
    True: {"per_class": 80, "head_rounds": 10, "fine_tune_epochs": 4},
    False: {"per_class": 150, "head_rounds": 20, "fine_tune_epochs": 6},
}
FINE_TUNE_LAYERS = 20
PHASE1_PASSES = 10


def timed_rounds(model: Any, dataset: Any, rounds: int, steps: int) -> list[dict[str, float]]:
    """Per round: seconds of ``steps`` train steps on ``dataset``, and on an ideal input.

    Each step is what ``fit`` runs (``model.train_function``: the next batch is taken
    inside the compiled step), without callbacks. The ideal input is the dataset's first
    batch, cached and repeated: the element spec is the real one's, so both run the same
    compiled step. Taking that batch reads the real dataset only partly, which leaves its
    own cache empty: its first epoch still decodes. Real and ideal take turns, the order
    swapping every round.
    """
    ideal = dataset.take(1).cache().repeat()
    model.make_train_function()
    _steps(model, ideal, 2)  # traces the step and fills the ideal cache
    found = []
    for round_ in range(rounds):
        order = ("real", "ideal") if round_ % 2 == 0 else ("ideal", "real")
        times = {
            name: _steps(model, ideal, steps)
            if name == "ideal"
            else _steps(model, dataset, steps, drain=True)
            for name in order
        }
        found.append({"real_s": times["real"], "ideal_s": times["ideal"], "steps": steps})
    return found


def _steps(model: Any, dataset: Any, steps: int, drain: bool = False) -> float:
    """Seconds for a fresh iterator over ``dataset`` and ``steps`` train steps on it.

    With ``drain`` the iterator is then read to its end, untimed: a cache is kept only
    once its input has ended, which ``fit``'s read-ahead reaches while it validates.
    """
    started = time.perf_counter()
    iterator = iter(dataset)
    for _ in range(steps):
        model.train_function(iterator)
    seconds = time.perf_counter() - started
    if drain:
        for _ in iterator:
            pass
    return seconds


def _share(epochs: list[dict[str, float]]) -> float:
    real = sum(e["real_s"] for e in epochs)
    return max(0.0, real - sum(e["ideal_s"] for e in epochs)) / real


def _compile(model: Any, learning_rate: float) -> None:
    import keras

    # As the trainer compiles: Adam, categorical cross-entropy, accuracy.
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def _setup(data: Path, weights_dir: Path, weights: str, work_dir: Path) -> dict[str, Any]:
    import numpy as np

    from service.config import Settings
    from service.contract.train_config import TrainConfig
    from service.training.backbones import build_base, get_backbone, resolve_weights
    from service.training.dataset import scan_dataset, stratified_split
    from service.training.model import build_classifier
    from service.training.pipeline import PipelineOptions

    settings = Settings(work_dir=work_dir, weights_dir=weights_dir)
    config = TrainConfig(
        model_name="bench", base_model="mobilenet_v2", weights=weights, image_size=96, seed=0
    )
    index = scan_dataset(data, settings)
    train_idx, _ = stratified_split(index.labels, config.validation_split, config.seed)
    backbone = get_backbone(config.base_model)
    base = build_base(backbone, 96, resolve_weights(backbone, weights, 96, settings))
    classifier = build_classifier(backbone, base, len(index.classes), 96, config)
    options = PipelineOptions(
        image_size=96,
        batch_size=config.batch_size,
        num_classes=len(index.classes),
        seed=config.seed,
        cache_memory_bytes=settings.cache_memory_bytes,
        cache_dir=work_dir / "cache",
    )
    paths = [str(index.paths[i]) for i in train_idx]
    labels = np.asarray(index.labels)[train_idx]
    return {
        "config": config,
        "classifier": classifier,
        "options": options,
        "paths": paths,
        "labels": labels,
    }


def _phase1(s: dict[str, Any], rounds: int) -> list[dict[str, float]]:
    import numpy as np

    from service.training.pipeline import array_dataset, batched, decoded_dataset, feature_store

    clf, options = s["classifier"], s["options"]
    s["decoded"] = decoded_dataset(s["paths"], s["labels"], None, options, name="train")
    images = batched(s["decoded"], options, training=False)
    store = feature_store(len(s["paths"]), tuple(clf.features.output.shape[1:]), options)
    offset = 0
    for batch in images:  # the feature pass, as the trainer runs it
        out = np.asarray(clf.features.predict_on_batch(batch[0]), dtype=np.float32)
        store[offset : offset + len(out)] = out
        offset += len(out)
    dataset = array_dataset(store, s["labels"], None, options, training=True)
    _compile(clf.head, s["config"].learning_rate)
    steps = math.ceil(len(s["paths"]) / options.batch_size) * PHASE1_PASSES
    return timed_rounds(clf.head, dataset.repeat(PHASE1_PASSES), rounds, steps)


def _phase2(s: dict[str, Any], epochs: int) -> list[dict[str, float]]:
    from service.training.model import unfreeze_from
    from service.training.pipeline import batched

    clf, options = s["classifier"], s["options"]
    unfreeze_from(clf.base, max(0, len(clf.base.layers) - FINE_TUNE_LAYERS))
    _compile(clf.model, s["config"].fine_tune_learning_rate)
    dataset = batched(s["decoded"], options, training=True)  # filled by the feature pass
    steps = math.ceil(len(s["paths"]) / options.batch_size)
    return timed_rounds(clf.model, dataset, epochs, steps)


def measure(quick: bool) -> Measured:
    """Time real vs ideal input in both phases; report the larger share."""
    sizes = SIZES[quick]
    base = pretrained_base(recipe_for(quick))
    with tempfile.TemporaryDirectory(prefix="ftserve-bench-p2-") as tmp:
        root = Path(tmp)
        data = make_dataset(root / "data", TRANSFER_SHAPES, sizes["per_class"], 96, seed=11)
        setup = _setup(data, Path(base["weights_dir"]), base["weights"], root / "work")
        phases = {
            "phase1_cached_features": _phase1(setup, sizes["head_rounds"]),
            "phase2_images": _phase2(setup, sizes["fine_tune_epochs"]),
        }
    measured = Measured()
    shares = {name: _share(epochs) for name, epochs in phases.items()}
    measured.values[KEY] = max(shares.values())
    for name, epochs in phases.items():
        measured.details[name] = {
            "share": round(shares[name], 4),
            "per_round_share": [round(_share([e]), 4) for e in epochs],
            "ms_per_step_real_input": round(1000 * _mean(epochs, "real_s"), 3),
            "ms_per_step_ideal_input": round(1000 * _mean(epochs, "ideal_s"), 3),
            "steps_per_round": epochs[0]["steps"],
            "rounds_s_real_ideal": [
                (round(e["real_s"], 3), round(e["ideal_s"], 3)) for e in epochs
            ],
        }
        print(f"{name}: input wait {100 * shares[name]:.1f}% of fit time; {measured.details[name]}")
    return measured


def _mean(epochs: list[dict[str, float]], key: str) -> float:
    steps = sum(e["steps"] for e in epochs)
    return sum(e[key] for e in epochs) / steps if steps else math.nan


def main() -> None:
    quick_main(__doc__, measure)


if __name__ == "__main__":
    main()
