"""The model server's command line, with TensorFlow Serving's flag names and defaults.

``tensorflow_model_server`` accepts ``--flag=value``; argparse also takes ``--flag value``.
Boolean flags take ``true``/``false`` (or nothing, meaning true), as TensorFlow's flag parser
does. Flags TensorFlow Serving has but this server does not need are accepted and ignored,
so a command line written for one runs the other.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# TensorFlow Serving builds its gRPC server with the largest message size int32 allows.
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
# Accepted for compatibility; they tune TensorFlow Serving internals this server lacks.
_IGNORED = (
    "rest_api_num_threads",
    "num_load_threads",
    "num_unload_threads",
    "max_num_load_retries",
    "load_retry_interval_micros",
    "tensorflow_session_parallelism",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "platform_config_file",
    "saved_model_tags",
    "grpc_max_threads",
    "num_request_iterations_for_warmup",
)


@dataclass(frozen=True)
class ServerOptions:
    port: int = 8500
    rest_api_port: int = 0
    rest_api_timeout_in_ms: int = 30000
    host: str = "0.0.0.0"
    model_config_file: Path | None = None
    model_config_file_poll_wait_seconds: int = 0
    model_name: str = "default"
    model_base_path: str | None = None
    file_system_poll_wait_seconds: int = 1
    enable_batching: bool = False
    batching_parameters_file: Path | None = None
    monitoring_config_file: Path | None = None
    enable_model_warmup: bool = True
    grpc_max_message_bytes: int = GRPC_MAX_MESSAGE_BYTES
    grpc_channel_arguments: str = ""
    enable_grpc_healthcheck_service: bool = False
    # Lets a config label a version that is not loaded yet, unless that moves the label.
    allow_version_labels_for_unavailable_models: bool = False
    # Seconds a SIGTERM waits for requests in flight before the server exits anyway.
    shutdown_grace_seconds: float = 30.0


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add TensorFlow Serving's flags to ``parser``."""
    defaults = ServerOptions()
    flags = parser.add_argument_group("TensorFlow Serving flags")
    flags.add_argument("--port", type=int, default=defaults.port, help="gRPC port")
    flags.add_argument(
        "--rest_api_port", type=int, default=defaults.rest_api_port, help="REST port (0: off)"
    )
    flags.add_argument(
        "--rest_api_timeout_in_ms", type=int, default=defaults.rest_api_timeout_in_ms
    )
    flags.add_argument("--host", default=defaults.host, help="address to bind (ftserve only)")
    flags.add_argument("--model_config_file", type=Path, help="ModelServerConfig in text format")
    flags.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=int,
        default=defaults.model_config_file_poll_wait_seconds,
        help="re-read --model_config_file this often (0: never)",
    )
    flags.add_argument("--model_name", default=defaults.model_name)
    flags.add_argument("--model_base_path", help="serve the versions under this folder")
    flags.add_argument(
        "--file_system_poll_wait_seconds",
        type=int,
        default=defaults.file_system_poll_wait_seconds,
        help="look for new versions this often",
    )
    _bool_flag(flags, "--enable_batching", defaults.enable_batching)
    flags.add_argument("--batching_parameters_file", type=Path)
    flags.add_argument("--monitoring_config_file", type=Path)
    _bool_flag(flags, "--enable_model_warmup", defaults.enable_model_warmup)
    flags.add_argument(
        "--grpc_max_message_bytes", type=int, default=defaults.grpc_max_message_bytes
    )
    flags.add_argument("--grpc_channel_arguments", default=defaults.grpc_channel_arguments)
    _bool_flag(flags, "--enable_grpc_healthcheck_service", defaults.enable_grpc_healthcheck_service)
    _bool_flag(
        flags,
        "--allow_version_labels_for_unavailable_models",
        defaults.allow_version_labels_for_unavailable_models,
    )
    flags.add_argument(
        "--shutdown_grace_seconds", type=float, default=defaults.shutdown_grace_seconds
    )
    for name in _IGNORED:
        flags.add_argument(f"--{name}", help=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    """Build ``ServerOptions`` from parsed flags; a bad combination raises ``ValueError``."""
    if args.model_config_file is None and args.model_base_path is None:
        raise ValueError("give --model_config_file, or --model_name and --model_base_path")
    if args.model_config_file is not None and args.model_base_path is not None:
        raise ValueError("--model_config_file and --model_base_path exclude each other")
    if args.rest_api_port and args.rest_api_port == args.port:
        raise ValueError("--rest_api_port must differ from --port")
    if args.batching_parameters_file is not None and not args.enable_batching:
        raise ValueError("--batching_parameters_file needs --enable_batching")
    fields = ServerOptions.__dataclass_fields__
    return ServerOptions(**{name: getattr(args, name) for name in fields})


def parse_options(argv: Sequence[str]) -> ServerOptions:
    parser = argparse.ArgumentParser(prog="ftserve model-server")
    add_arguments(parser)
    try:
        return options_from_args(parser.parse_args(argv))
    except ValueError as exc:
        parser.error(str(exc))


def _bool_flag(group: argparse._ArgumentGroup, flag: str, default: bool) -> None:
    group.add_argument(flag, type=parse_bool, nargs="?", const=True, default=default)
