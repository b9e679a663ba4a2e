"""The per-job training configuration: what a user may set, validated before any work.

The API validates it before queueing a job, the worker and ``ftserve train`` before
training; it is plain pydantic so that every tier can import it.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.contract.names import MODEL_NAME_PATTERN
from service.contract.validation import describe_errors
from service.errors import InvalidConfigError, WeightsUnavailableError


@dataclass(frozen=True)
class BackboneInfo:
    """What a user needs to know about a backbone before choosing it.

    ``preprocessing`` names how the backbone's weights expect pixels: ``tf`` scales to
    [-1, 1], ``caffe`` is BGR minus the ImageNet mean, ``unit`` scales to [0, 1], ``none``
    means the base normalises 0–255 pixels itself.
    """

    name: str
    default_image_size: int
    min_image_size: int
    preprocessing: str
    imagenet_weights: bool


# The backbones service.training.backbones builds, described here so that every tier can
# check a job before it is queued and list the choices without TensorFlow (a test keeps
# this table equal to the training tier's registry).
BACKBONE_TABLE = (
    # name, default image size, minimum image size, preprocessing, ImageNet weights
    BackboneInfo("mobilenet_v2", 224, 32, "tf", True),
    BackboneInfo("mobilenet_v3_small", 224, 32, "none", True),
    BackboneInfo("mobilenet_v3_large", 224, 32, "none", True),
    BackboneInfo("efficientnet_b0", 224, 32, "none", True),
    BackboneInfo("efficientnet_v2_b0", 224, 32, "none", True),
    BackboneInfo("resnet50", 224, 32, "caffe", True),
    BackboneInfo("vgg16", 224, 32, "caffe", True),
    BackboneInfo("small_cnn", 32, 8, "unit", False),
)
BASE_MODELS = tuple(backbone.name for backbone in BACKBONE_TABLE)
DEFAULT_BASE_MODEL = "mobilenet_v2"
BUILTIN_WEIGHTS = ("imagenet", "none")

ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]


class AugmentationConfig(BaseModel):
    """Random transforms applied inside the model, so they run on the accelerator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flip: Literal["horizontal", "vertical", "horizontal_and_vertical", "none"] = "horizontal"
    rotation: float = Field(default=0.05, ge=0.0, le=0.5)
    zoom: float = Field(default=0.1, ge=0.0, lt=1.0)
    contrast: float = Field(default=0.1, ge=0.0, lt=1.0)


class TrainConfig(BaseModel):
    """Everything one fine-tuning job may choose. Unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: ModelName
    base_model: str = DEFAULT_BASE_MODEL
    weights: str = "imagenet"
    image_size: int | None = Field(default=None, ge=8, le=1024)

    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    early_stopping_patience: int = Field(default=3, ge=0)

    # The head: "auto" pooling and null dense_units are chosen on validation, on the cached
    # features (each of avg/flatten, with and without one hidden layer); set both to fix it
    # (e.g. "avg" and [] for the plain linear head).
    pooling: Literal["auto", "avg", "flatten"] = "auto"
    dense_units: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    augmentation: AugmentationConfig | None = None
    # Compute the frozen base's features once and train the head on them (phase 1, no
    # augmentation). Same result as the full graph; off only to measure the difference.
    feature_cache: bool = True

    fine_tune_layers: int = Field(default=0, ge=0)
    fine_tune_at: int | str | None = None
    fine_tune_epochs: int = Field(default=5, ge=0, le=1000)
    fine_tune_learning_rate: float = Field(default=1e-5, gt=0.0, le=1.0)

    validation_split: float = Field(default=0.2, gt=0.0, lt=0.9)
    class_weight: Literal["none", "balanced"] = "none"
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    seed: int = Field(default=1337, ge=0)
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"

    # Champion/challenger: after training, the new version and the current `stable` one are
    # evaluated on this job's held-out images. "auto" promotes the new one to `stable` when
    # its accuracy is at least stable's minus promote_tolerance (and min_accuracy, if set);
    # otherwise it is served under `canary`. "always" and "never" skip the comparison.
    promote: Literal["auto", "always", "never"] = "auto"
    min_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    promote_tolerance: float = Field(default=0.0, ge=0.0, le=1.0)
    xla: Literal["auto", "on", "off"] = "auto"

    @field_validator("base_model")
    @classmethod
    def _known_base_model(cls, name: str) -> str:
        if name not in BASE_MODELS:
            close = difflib.get_close_matches(name, BASE_MODELS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"unknown base_model {name!r}; {hint}choose one of: {', '.join(BASE_MODELS)}"
            )
        return name

    @model_validator(mode="after")
    def _one_way_to_pick_layers(self) -> TrainConfig:
        if self.fine_tune_layers and self.fine_tune_at is not None:
            raise ValueError("set fine_tune_layers or fine_tune_at, not both")
        return self

    @property
    def fine_tunes(self) -> bool:
        """Whether a second phase unfreezes part of the base."""
        wants_layers = self.fine_tune_layers > 0 or self.fine_tune_at is not None
        return wants_layers and self.fine_tune_epochs > 0

    @classmethod
    def parse(cls, data: dict[str, object]) -> TrainConfig:
        """Validate user input, turning pydantic's error into our 422."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            message = describe_errors(exc.errors(), "training config", whole="config")
            raise InvalidConfigError(message) from exc

    @classmethod
    def from_file(cls, path: Path, **overrides: object) -> TrainConfig:
        """Read a JSON config file; explicit overrides (e.g. CLI flags) win."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidConfigError(f"config file {path} must hold a JSON object")
        return cls.parse({**data, **overrides})


def weights_file(name: str, weights_dir: Path) -> Path:
    """The weights file a job's ``weights`` names (neither ``imagenet`` nor ``none``).

    Raises:
        InvalidConfigError: the name is a path, not a file name in the weights folder.
        WeightsUnavailableError: no such file in the weights folder.
    """
    if Path(name).name != name or name in ("", ".", ".."):
        raise InvalidConfigError(
            f"weights must be 'imagenet', 'none' or a file name in the weights folder, "
            f"not a path: {name!r}"
        )
    path = weights_dir / name
    if not path.is_file():
        found = sorted(p.name for p in weights_dir.glob("*") if p.is_file())
        holds = f"it holds {', '.join(found)}" if found else "it holds no file"
        raise WeightsUnavailableError(f"weights file {name!r} not found: expected {path}; {holds}")
    return path


def check_weights(config: TrainConfig, weights_dir: Path) -> None:
    """Fail now, not after queueing, when ``config.weights`` names no weights file."""
    if config.weights not in BUILTIN_WEIGHTS:
        weights_file(config.weights, weights_dir)
