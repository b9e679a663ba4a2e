"""P1: time to the same validation accuracy on a real-sized base, ftserve's recipe vs classic.

Base: MobileNetV2 at 96 px pretrained on one task (``bench.pretrain_base``), frozen.
Transfer task: six other shapes (``bench.synthetic.TRANSFER_SHAPES``), drawn afresh.

ours:    ftserve's default recipe through the real ``train()``: the frozen base's
         features are computed once and cached, the default head trains on the cache.
classic: flatten → Dense(512, relu) → Dense(C), the images going through the frozen base
         every epoch (``feature_cache=False``; decoded images are cached, as in ours).

Same data, split, base and seed. The clock starts when ``train()`` starts, so ingest,
decoding and the feature pass count. Classic stops at the end of its first epoch at the
target; ours is charged its whole ``train()`` (every head it tries, the final evaluation):
the time until the model is in hand. Target: the lower of the two best validation
accuracies, minus ``MARGIN``.

    python -m bench.training_speed [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench import quick_main
from bench.pretrain_base import pretrained_base, recipe_for
from bench.report import Measured
from bench.synthetic import TRANSFER_SHAPES, make_dataset

KEY = "p1_time_to_accuracy_ratio"
MARGIN = 0.01
SIZES = {
    True: {"per_class": 80, "classic_epochs": 15},
    False: {"per_class": 200, "classic_epochs": 30},
}


def _timed_train(data: Path, config: Any, work_dir: Path, settings: Any) -> dict[str, Any]:
    """One ``train()`` with its per-epoch curve: (seconds since start, val_accuracy)."""
    from service.training.callbacks import Progress
    from service.training.trainer import Hooks, train

    curve: list[tuple[float, float]] = []
    started = time.perf_counter()

    def on_progress(p: Progress) -> None:
        if p.epoch_end and "val_accuracy" in p.metrics:
            curve.append((time.perf_counter() - started, p.metrics["val_accuracy"]))

    result = train(data, config, work_dir, settings, Hooks(progress=on_progress))
    return {
        "curve": curve,
        "total_s": time.perf_counter() - started,
        "final_accuracy": _accuracy(result.evaluation),
        "timings": dict(result.timings),
    }


def _accuracy(evaluation: dict[str, object]) -> float:
    accuracy = evaluation["accuracy"]
    assert isinstance(accuracy, float)
    return accuracy


def _per_epoch(curve: list[tuple[float, float]]) -> float:
    """Seconds per epoch past the first (which also decodes, or follows the feature pass)."""
    if len(curve) < 2:
        return float("nan")
    return (curve[-1][0] - curve[0][0]) / (len(curve) - 1)


def _configs(weights: str, classic_epochs: int) -> dict[str, Any]:
    from service.contract.train_config import TrainConfig

    common: dict[str, Any] = dict(
        model_name="bench", base_model="mobilenet_v2", weights=weights, image_size=96, seed=0
    )
    classic: dict[str, Any] = dict(
        pooling="flatten",
        dense_units=(512,),
        dropout=0.0,
        feature_cache=False,
        epochs=classic_epochs,
        early_stopping_patience=classic_epochs,
    )
    # ours leaves everything else at TrainConfig's defaults: the recipe a user gets.
    return {"ours": TrainConfig(**common), "classic": TrainConfig(**common, **classic)}


def _run(quick: bool) -> dict[str, Any]:
    from service.config import Settings

    base = pretrained_base(recipe_for(quick))
    sizes = SIZES[quick]
    with tempfile.TemporaryDirectory(prefix="ftserve-bench-p1-") as tmp:
        root = Path(tmp)
        data = make_dataset(root / "transfer", TRANSFER_SHAPES, sizes["per_class"], 96, seed=7)
        settings = Settings(work_dir=root / "jobs", weights_dir=Path(base["weights_dir"]))
        runs = {
            name: _timed_train(data, config, root / name, settings)
            for name, config in _configs(base["weights"], sizes["classic_epochs"]).items()
        }
    return {"base": base, "images": len(TRANSFER_SHAPES) * sizes["per_class"], "runs": runs}


def _first_at(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, accuracy in curve if accuracy >= target), None)


def _summarise(found: dict[str, Any]) -> Measured:
    ours, classic = found["runs"]["ours"], found["runs"]["classic"]
    best_classic = max(a for _, a in classic["curve"])
    target = round(min(ours["final_accuracy"], best_classic) - MARGIN, 4)
    classic_s = _first_at(classic["curve"], target)
    ours_s = ours["total_s"] if ours["final_accuracy"] >= target else None
    measured = Measured()
    if classic_s is None or ours_s is None:
        measured.missing(KEY, f"a recipe never reached the target {target}")
    else:
        measured.values[KEY] = classic_s / ours_s
    measured.details = {
        "base": {
            k: found["base"][k] for k in ("recipe", "pretrain_seconds", "source_accuracy", "cached")
        },
        "transfer_images": found["images"],
        "target_accuracy": target,
        "ours": _describe(ours, ours_s, target),
        "classic": _describe(classic, classic_s, target),
        "per_epoch_ratio": _per_epoch(classic["curve"]) / _per_epoch(ours["curve"]),
        "fixed_costs_s": {
            "ingest_ours": ours["timings"].get("ingest"),
            "feature_pass_ours": ours["timings"].get("features"),
            "ingest_classic": classic["timings"].get("ingest"),
            # The first classic epoch also decodes every image and traces the model.
            "first_epoch_extra_classic": round(
                classic["curve"][0][0] - _per_epoch(classic["curve"]), 3
            ),
        },
    }
    return measured


def _describe(run: dict[str, Any], to_target: float | None, target: float) -> dict[str, Any]:
    return {
        "seconds_to_target": to_target,
        # When a reported epoch first reached the target (for ours: not yet the model in hand).
        "first_epoch_at_target_s": _first_at(run["curve"], target),
        "train_total_s": round(run["total_s"], 2),
        "seconds_per_epoch": round(_per_epoch(run["curve"]), 4),
        "epochs": len(run["curve"]),
        "best_val_accuracy": max(a for _, a in run["curve"]),
        "final_val_accuracy": run["final_accuracy"],
        "timings": run["timings"],
    }


def measure(quick: bool) -> Measured:
    """Pretrain (or reuse) the base, then time both recipes on the transfer task."""
    measured = _summarise(_run(quick))
    _print(measured)
    return measured


def _print(measured: Measured) -> None:
    d = measured.details
    base = d["base"]
    print(
        f"base: mobilenet_v2 96px pretrained on {len(base['recipe']['shapes'])} other shapes "
        f"({base['pretrain_seconds']} s{', cached' if base['cached'] else ''}; source accuracy "
        f"{base['source_accuracy']:.3f}); transfer: {d['transfer_images']} images; "
        f"target {d['target_accuracy']:.3f}"
    )
    print(f"{'recipe':<8} {'s to target':>12} {'s/epoch':>9} {'epochs':>7} {'best acc':>9}")
    for name in ("ours", "classic"):
        r = d[name]
        shown = "never" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.2f}"
        print(
            f"{name:<8} {shown:>12} {r['seconds_per_epoch']:>9.3f} {r['epochs']:>7} "
            f"{r['best_val_accuracy']:>9.3f}"
        )
    print(f"ours' train() timings (s): {d['ours']['timings']}")
    value = measured.values.get(KEY)
    print(
        f"classic / ours: time to target {'n/a' if value is None else f'{value:.2f}x'}, "
        f"per epoch {d['per_epoch_ratio']:.1f}x; fixed costs (s) {d['fixed_costs_s']}"
    )


def main() -> None:
    quick_main(__doc__, measure)


if __name__ == "__main__":
    main()
