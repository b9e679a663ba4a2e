"""``ftserve train``: a whole fine-tuning run on this machine, with a progress line."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from service.config import get_settings
from service.contract.repository import ModelRepository
from service.contract.train_config import TrainConfig

if TYPE_CHECKING:
    from service.training.callbacks import Progress
    from service.training.trainer import TrainingResult

_FLAG_FIELDS = (
    "base_model",
    "weights",
    "image_size",
    "epochs",
    "fine_tune_layers",
    "fine_tune_epochs",
    "batch_size",
    "learning_rate",
    "fine_tune_at",
    "fine_tune_learning_rate",
)


def run_train(args: argparse.Namespace) -> int:
    """Train, export and publish as ``args`` say; print the report (or ``--json``).

    Returns:
        The exit status: 0. Errors propagate as ``FtserveError`` for ``main`` to print.
    """
    settings = get_settings()
    config = _config(args)  # before importing TensorFlow: a bad config fails in a blink
    from service.finetune.run import finetune
    from service.training.trainer import Hooks

    created = args.output is None or not args.output.exists()
    work_dir = (
        args.output or settings.work_dir / f"{config.model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    bar = ProgressLine(sys.stderr)
    started = time.perf_counter()
    repository = ModelRepository((args.model_repo or settings.model_repo).resolve())
    try:
        done = finetune(
            args.data,
            config,
            work_dir,
            settings,
            repository,
            hooks=Hooks(progress=bar),
            before_publish=lambda result: _save_model(result, work_dir),
        )
    except BaseException:
        # A failed run leaves nothing behind it did not find, unless training finished:
        # then the saved Keras model is kept even if publishing failed.
        if created and not (work_dir / "model.keras").exists():
            shutil.rmtree(work_dir, ignore_errors=True)
        raise
    finally:
        bar.close()
    summary = done.summary()
    summary["timings"] = {**done.training.timings, "total": round(time.perf_counter() - started, 3)}
    summary["work_dir"] = str(work_dir)
    (work_dir / "result.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary))
    else:
        _print_report(summary)
    return 0


def _config(args: argparse.Namespace) -> TrainConfig:
    overrides = {"model_name": args.model_name}
    overrides.update({f: getattr(args, f) for f in _FLAG_FIELDS if getattr(args, f) is not None})
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig.parse(overrides)


def _save_model(result: TrainingResult, work_dir: Path) -> None:
    result.classifier.model.save(work_dir / "model.keras")
    (work_dir / "labels.txt").write_text("\n".join(result.classes) + "\n")


def _print_report(summary: dict) -> None:
    evaluation = summary["evaluation"]
    print(
        f"model        {summary['model_name']} ({summary['base_model']}, "
        f"{summary['image_size']}px, weights {summary['weights']['source']})"
    )
    print(f"classes      {', '.join(summary['classes'])}")
    split = summary["dataset"]["split"]
    print(
        f"images       {split['train']} train, {split['validation']} validation, "
        f"{len(summary['dataset']['skipped'])} skipped"
    )
    print(
        f"accuracy     {evaluation['accuracy']:.4f}   top-{evaluation['top_k']} "
        f"{evaluation['top_k_accuracy']:.4f}   loss {evaluation['loss']:.4f}   "
        f"macro F1 {evaluation['macro_f1']:.4f}"
    )
    for name, row in evaluation["per_class"].items():
        print(
            f"  {name:<20} precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
            f"f1 {row['f1']:.3f}  n={row['support']}"
        )
    print("confusion    rows: true class, columns: predicted class")
    for line in confusion_table(summary["classes"], evaluation["confusion_matrix"]):
        print(f"  {line}")
    if summary["fine_tune"]:
        ft = summary["fine_tune"]
        print(
            f"fine-tune    {ft['unfrozen_layers']} layers from {ft['first_layer']}, "
            f"val loss {ft['phase1_val_loss']} -> {ft['best_val_loss']} "
            f"({'kept' if ft['improved'] else 'phase-1 weights kept'})"
        )
    print(f"saved        {summary['work_dir']}/model.keras")
    print(
        f"published    version {summary['version']} at {summary['saved_model_path']} "
        f"(ONNX max abs diff {summary['onnx_max_abs_diff']:.2e})"
    )
    promotion = summary["promotion"]
    labels = " ".join(f"{k}={v}" for k, v in summary["labels"].items())
    print(f"promotion    {promotion['decision']}: {promotion['reason']} (labels {labels})")
    print(f"time         {summary['timings']['total']:.1f}s")


def confusion_table(classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> list[str]:
    """The confusion matrix as aligned text: a header of predicted classes, then one row per
    true class, its name first. Each column is as wide as its name or its largest count."""
    first = max(len(name) for name in classes)
    widths = [
        max(len(name), *(len(str(row[j])) for row in matrix)) for j, name in enumerate(classes)
    ]

    def line(first_cell: str, cells: Sequence[object]) -> str:
        right = "".join(f"  {cell!s:>{w}}" for cell, w in zip(cells, widths, strict=True))
        return f"{first_cell:<{first}}{right}"

    return [line("", classes), *(line(n, row) for n, row in zip(classes, matrix, strict=True))]


class ProgressLine:
    """One self-rewriting status line on a terminal; whole lines elsewhere (logs, CI)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._width = 0

    def __call__(self, p: Progress) -> None:
        if not self.tty and not p.epoch_end:
            return
        done = int(20 * p.step / max(p.steps, 1))
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in p.metrics.items())
        eta = "" if p.eta_seconds is None else f"  eta {p.eta_seconds:.0f}s"
        line = (
            f"{p.phase:<9} epoch {p.epoch}/{p.epochs} [{'#' * done}{'.' * (20 - done)}] "
            f"{p.step}/{p.steps}{eta}  {metrics}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
