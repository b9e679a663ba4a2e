"""P1 head: the default head's validation accuracy against the best of a few heads.

Two tasks, each through the real ``train()`` on cached features (the frozen base's output
is computed once per run; the same seed gives every run the same split and features):

- digits: scikit-learn's digits 5–9 at 32 px on small_cnn pretrained on digits 0–4;
- shapes: the shapes sample (``service.training.sample_data``) at 96 px on the benchmark's
  MobileNetV2 base (``bench.pretrain_base``).

The default is ``TrainConfig``'s defaults, as a user gets them. The candidates: average
pooling or flatten, each with no hidden layer, or one hidden layer with dropout, plus the
classic flatten + Dense 512. The gap is in accuracy points, positive when the default is
worse; the reported value is the larger of the two tasks' gaps.

    python -m bench.head_gap [--quick]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import quick_main
from bench.pretrain_base import digits_base, pretrained_base, recipe_for
from bench.report import Measured

KEY = "p1_default_head_accuracy_gap"
CANDIDATES: dict[str, dict[str, Any]] = {
    "avg": dict(pooling="avg", dense_units=(), dropout=0.0),
    "avg+256+dropout": dict(pooling="avg", dense_units=(256,), dropout=0.3),
    "flatten": dict(pooling="flatten", dense_units=(), dropout=0.0),
    "flatten+256+dropout": dict(pooling="flatten", dense_units=(256,), dropout=0.3),
    "flatten+512 (classic)": dict(pooling="flatten", dense_units=(512,), dropout=0.0),
}
# Candidates get room to reach their best; the default keeps its own epochs and patience.
CANDIDATE_EPOCHS = {True: 20, False: 40}
SHAPES_PER_CLASS = {True: 150, False: 300}


def _task_data(task: str, root: Path, quick: bool) -> tuple[Path, dict[str, Any], int]:
    """(dataset folder, base info, image size) of one task."""
    from service.training.sample_data import make_digits_dataset, make_shapes_dataset

    if task == "digits":
        data, _ = make_digits_dataset(root / "digits59", (5, 6, 7, 8, 9))
        return data, digits_base(), 32
    per_class = SHAPES_PER_CLASS[quick]
    data = make_shapes_dataset(root / "shapes", images_per_class=per_class, image_size=96)
    return data, pretrained_base(recipe_for(quick)), 96


def _accuracy(data: Path, config: Any, work_dir: Path, settings: Any) -> tuple[float, int]:
    """Validation accuracy of one ``train()``, and how many validation images it counts."""
    from service.training.trainer import train

    result = train(data, config, work_dir, settings)
    accuracy = result.evaluation["accuracy"]
    assert isinstance(accuracy, float)
    return accuracy, int(result.split["validation"])


def _task(task: str, quick: bool) -> dict[str, Any]:
    from service.config import Settings
    from service.contract.train_config import TrainConfig

    with tempfile.TemporaryDirectory(prefix=f"ftserve-bench-heads-{task}-") as tmp:
        root = Path(tmp)
        data, base, size = _task_data(task, root, quick)
        settings = Settings(work_dir=root / "jobs", weights_dir=Path(base["weights_dir"]))
        base_model = "small_cnn" if task == "digits" else "mobilenet_v2"
        common: dict[str, Any] = dict(
            model_name="bench", base_model=base_model, weights=base["weights"], image_size=size
        )
        default, validation = _accuracy(data, TrainConfig(**common), root / "default", settings)
        epochs = CANDIDATE_EPOCHS[quick]
        room: dict[str, Any] = dict(epochs=epochs, early_stopping_patience=max(5, epochs // 4))
        heads = {
            name: _accuracy(data, TrainConfig(**common, **head, **room), root / str(i), settings)[0]
            for i, (name, head) in enumerate(CANDIDATES.items())
        }
    best = max(heads, key=lambda name: heads[name])
    return {
        "default": default,
        "candidates": heads,
        "best": best,
        "gap_points": round(100 * (heads[best] - default), 2),
        # One image more or less right moves an accuracy by this many points.
        "validation_images": validation,
        "points_per_image": round(100 / validation, 2),
        "image_size": size,
        "base_model": base_model,
    }


def measure(quick: bool) -> Measured:
    """Train the default and every candidate head on both tasks; report the worse gap."""
    tasks = {task: _task(task, quick) for task in ("digits", "shapes")}
    measured = Measured(details=tasks)
    measured.values[KEY] = max(t["gap_points"] for t in tasks.values())
    for task, found in tasks.items():
        print(
            f"{task}: default head {found['default']:.3f} on {found['validation_images']} "
            f"validation images (one image = {found['points_per_image']} points); candidates:"
        )
        for name, accuracy in found["candidates"].items():
            print(f"  {name:<24} {accuracy:.3f}")
        print(f"  gap to the best ({found['best']}): {found['gap_points']:+.1f} points")
    return measured


def main() -> None:
    quick_main(__doc__, measure)


if __name__ == "__main__":
    main()
