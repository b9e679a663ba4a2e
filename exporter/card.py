"""The model card: what a version is, how it was made and how well it did, as JSON-ready data.

It records the run's lineage (backbone, weights and their hash, every hyperparameter, the
dataset fingerprint), the head and how it was chosen, its validation results, the ONNX
parity measured at export, the library versions that produced it and the signatures as the
saved SavedModel declares them.
"""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnx
import onnxruntime
import tensorflow as tf
import tf2onnx

from exporter.onnx_export import ONNX_OPSET, PARITY_TOLERANCE
from service.contract.repository import ONNX_FILE
from service.contract.signatures import SERVING_DEFAULT, SERVING_TENSOR
from service.training.backbones import get_backbone
from service.training.trainer import TrainingResult

CARD_FORMAT = 1


def library_versions() -> dict[str, str]:
    """Versions of the libraries that trained, exported and checked the model."""
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tf2onnx": tf2onnx.__version__,
    }


def _tensor_spec(spec: tf.TensorSpec) -> dict[str, Any]:
    # -1 marks a free dimension, as TF Serving's signature metadata writes it.
    shape = [-1 if dim is None else dim for dim in spec.shape.as_list()]
    return {"dtype": spec.dtype.name, "shape": shape}


def signature_specs(saved_model_path: Path) -> dict[str, dict[str, Any]]:
    """Inputs and outputs (name → dtype, shape) of each serving signature, as saved."""
    loaded = tf.saved_model.load(str(saved_model_path))
    specs = {}
    for name in (SERVING_DEFAULT, SERVING_TENSOR):
        function = loaded.signatures[name]
        _, inputs = function.structured_input_signature
        specs[name] = {
            "inputs": {key: _tensor_spec(spec) for key, spec in sorted(inputs.items())},
            "outputs": {
                key: _tensor_spec(spec) for key, spec in sorted(function.structured_outputs.items())
            },
        }
    return specs


def build_model_card(
    result: TrainingResult,
    model_name: str,
    version: int | None,
    saved_model_path: Path,
    onnx_max_abs_diff: float,
    parity_images: int,
    misclassified: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything worth knowing about one exported version.

    Args:
        result: the training run the version comes from.
        model_name: the name it is served under.
        version: its version number, when already known.
        saved_model_path: the written SavedModel, whose signatures the card describes.
        onnx_max_abs_diff: the ONNX parity measured at export.
        parity_images: how many images that parity was measured on.
        misclassified: the held-out images it got wrong and the thumbnails kept of them
            (``service.training.mistakes.write_thumbnails``).
    """
    summary = result.summary()
    return {
        "card_format": CARD_FORMAT,
        "name": model_name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "classes": list(result.classes),
        "backbone": result.config.base_model,
        "weights": summary["weights"],
        "image_size": result.image_size,
        "preprocessing": get_backbone(result.config.base_model).preprocessing,
        "hyperparameters": summary["config"],
        # The head built; when the config left it to "auto", every candidate tried and how
        # each did on the validation split.
        "head": summary["head"],
        "dataset": summary["dataset"],
        "training": {
            key: summary[key]
            for key in ("runtime", "used_feature_cache", "history", "fine_tune", "timings")
        },
        "evaluation": summary["evaluation"],
        "misclassified": misclassified,
        "onnx": {
            "file": ONNX_FILE,
            "opset": ONNX_OPSET,
            "dtype": "float32",
            "max_abs_diff": onnx_max_abs_diff,
            "tolerance": PARITY_TOLERANCE,
            "images": parity_images,
        },
        "libraries": library_versions(),
        "signatures": signature_specs(saved_model_path),
    }
