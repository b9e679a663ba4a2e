"""Reading the model server's configuration files, in TensorFlow Serving's text formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from google.protobuf import text_format
from tensorflow_serving.config.model_server_config_pb2 import ModelConfig, ModelServerConfig

from service.model_server.options import ServerOptions
from service.model_server.server_config_pb2 import BatchingParameters, MonitoringConfig

TENSORFLOW_PLATFORM = "tensorflow"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
M = TypeVar("M", ModelServerConfig, BatchingParameters, MonitoringConfig)


class ConfigError(ValueError):
    """A configuration file that cannot be read or does not make sense."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk the server should have loaded (``model_version_policy``)."""

    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: frozenset[int] = field(default_factory=frozenset)

    def aspired(self, on_disk: list[int]) -> set[int]:
        """The versions to serve, given the versions present (sorted, oldest first)."""
        if self.kind == "all":
            return set(on_disk)
        if self.kind == "specific":
            return set(self.versions) & set(on_disk)
        return set(on_disk[-max(1, self.num_versions) :])


@dataclass(frozen=True)
class ModelSettings:
    """One ``model_config_list.config`` entry, checked."""

    name: str
    base_path: Path
    policy: VersionPolicy
    labels: dict[str, int]


def single_model_config(name: str, base_path: str) -> ModelServerConfig:
    """The config ``--model_name`` and ``--model_base_path`` stand for."""
    config = ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = name
    entry.base_path = base_path
    entry.model_platform = TENSORFLOW_PLATFORM
    return config


def read_model_server_config(path: Path) -> ModelServerConfig:
    return _parse_text(path, ModelServerConfig())


def initial_config(options: ServerOptions) -> ModelServerConfig:
    if options.model_config_file is not None:
        return read_model_server_config(options.model_config_file)
    assert options.model_base_path is not None
    return single_model_config(options.model_name, options.model_base_path)


def model_settings(config: ModelServerConfig) -> dict[str, ModelSettings]:
    """Check ``config`` and return its models by name."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError("custom_model_config is not supported; use model_config_list")
    models: dict[str, ModelSettings] = {}
    for entry in config.model_config_list.config:
        if entry.name in models:
            raise ConfigError(f"model {entry.name!r} is configured twice")
        models[entry.name] = _model(entry)
    return models


def read_batching_parameters(path: Path | None) -> BatchingParameters:
    return BatchingParameters() if path is None else _parse_text(path, BatchingParameters())


def prometheus_path(path: Path | None) -> str | None:
    """Where Prometheus text is served, or ``None`` when monitoring is off."""
    if path is None:
        return None
    monitoring = _parse_text(path, MonitoringConfig())
    if not monitoring.prometheus_config.enable:
        return None
    return monitoring.prometheus_config.path or DEFAULT_PROMETHEUS_PATH


def _model(entry: ModelConfig) -> ModelSettings:
    if not entry.name:
        raise ConfigError("a model config has no name")
    if not entry.base_path:
        raise ConfigError(f"model {entry.name!r} has no base_path")
    platform = entry.model_platform or TENSORFLOW_PLATFORM
    if platform != TENSORFLOW_PLATFORM:
        raise ConfigError(f"model {entry.name!r}: platform {platform!r} is not supported")
    labels = dict(entry.version_labels)
    if any(version < 1 for version in labels.values()):
        raise ConfigError(f"model {entry.name!r}: version labels must name positive versions")
    return ModelSettings(entry.name, Path(entry.base_path), _policy(entry), labels)


def _policy(entry: ModelConfig) -> VersionPolicy:
    policy = entry.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy("all")
    if which == "specific":
        if not policy.specific.versions:
            raise ConfigError(f"model {entry.name!r}: a specific policy needs versions")
        return VersionPolicy("specific", versions=frozenset(policy.specific.versions))
    # TensorFlow Serving's default is the latest single version; num_versions 0 also means 1.
    return VersionPolicy("latest", num_versions=max(1, policy.latest.num_versions))


def _parse_text(path: Path, message: M) -> M:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        # TensorFlow Serving's words (protobuf's text parser logs them); tools grep for them.
        raise ConfigError(
            f"cannot read {path}: Error parsing text-format {message.DESCRIPTOR.full_name}: {exc}"
        ) from exc
    return message
