"""The model server's command line: every flag of TensorFlow Serving 2.21, same names and defaults.

``tensorflow_model_server`` accepts ``--flag=value``; argparse also takes ``--flag value``.
Boolean flags take ``true``/``false`` (or nothing, meaning true), as TensorFlow's flag parser
does, so a command line written for one server runs the other.

Flags that work here: ``--port``, ``--grpc_socket_path``, ``--rest_api_port``,
``--rest_api_timeout_in_ms``, ``--rest_api_enable_cors_support``, ``--model_name``,
``--model_base_path``, ``--model_config_file``, ``--model_config_file_poll_wait_seconds``,
``--file_system_poll_wait_seconds``, ``--enable_batching``, ``--batching_parameters_file``,
``--allow_version_labels_for_unavailable_models``,
``--enable_model_warmup``, ``--monitoring_config_file``, ``--grpc_channel_arguments``,
``--enable_grpc_healthcheck_service``, ``--ssl_config_file``, ``--tensorflow_session_parallelism``,
``--tensorflow_intra_op_parallelism``, ``--tensorflow_inter_op_parallelism``,
``--tensorflow_session_config_file`` (its thread counts),
``--enable_signature_method_name_check``, ``--enable_per_model_batching_parameters`` and
``--version``; ``--host``, ``--grpc_max_message_bytes``, ``--shutdown_grace_seconds`` and
``--max_image_pixels`` are this server's own.

The flags of ``NO_EFFECT_FLAGS`` (GPU, TPU, TensorFlow Lite, XLA, profiler, ALTS, thread-pool
and loader tuning) parse with their upstream types and change
nothing; each one given logs one start-up line saying why.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# TensorFlow Serving builds its gRPC server with the largest message size int32 allows.
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1
# Encoded images may declare at most this many pixels (the API's image_max_pixels default).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


_THREAD_FLAGS = (
    "tensorflow_session_parallelism",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
)
_CPU_ONLY = "this server runs on the CPU"
_NO_TFLITE = "this server serves TensorFlow SavedModels, never TensorFlow Lite models"
_RETRY = "a version that failed to load is tried again once its files change"
# TensorFlow Serving flags that change nothing here: flag -> (value type, why).
NO_EFFECT_FLAGS: dict[str, tuple[Callable[[str], object], str]] = {
    "rest_api_num_threads": (int, "REST requests are served on the server's event loop"),
    "num_load_threads": (int, "models load one at a time, as each poll finds them"),
    "num_unload_threads": (int, "models unload one at a time, as each poll retires them"),
    "max_num_load_retries": (int, _RETRY),
    "load_retry_interval_micros": (int, _RETRY),
    "flush_filesystem_caches": (parse_bool, "TensorFlow's file-system caches are left alone"),
    "use_alts_credentials": (parse_bool, "ALTS needs Google's network; use --ssl_config_file"),
    "platform_config_file": (str, "this server serves only the tensorflow platform"),
    "per_process_gpu_memory_fraction": (float, _CPU_ONLY),
    "saved_model_tags": (str, "SavedModels load with the serve tag"),
    "grpc_max_threads": (int, "gRPC requests are served on the server's event loop"),
    "num_request_iterations_for_warmup": (int, "each warmup request is replayed once"),
    "remove_unused_fields_from_bundle_metagraph": (
        parse_bool,
        "TensorFlow keeps no MetaGraphDef of a loaded model here",
    ),
    "prefer_tflite_model": (parse_bool, _NO_TFLITE),
    "num_tflite_pools": (int, _NO_TFLITE),
    "num_tflite_interpreters_per_pool": (int, _NO_TFLITE),
    "xla_cpu_compilation_enabled": (parse_bool, "XLA JIT is left at TensorFlow's default"),
    "xla_gpu_compilation_enabled": (parse_bool, _CPU_ONLY),
    "enable_profiler": (parse_bool, "this server has no profiler service"),
    "thread_pool_factory_config_file": (str, "this server has no thread-pool factory"),
    "mixed_precision": (str, "models run in the precision they were saved in"),
    "skip_initialize_tpu": (parse_bool, _CPU_ONLY),
    "enable_serialization_as_tensor_content": (
        parse_bool,
        "Predict responses use the typed value fields, TensorFlow Serving's default",
    ),
}


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
    # String inputs holding an encoded image whose header declares more pixels are refused.
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    # Also serve gRPC on this unix domain socket ("": no socket).
    grpc_socket_path: str = ""
    rest_api_enable_cors_support: bool = False
    # A text-format SSLConfig: the gRPC listeners use TLS.
    ssl_config_file: Path | None = None
    # TensorFlow's thread pools; 0 leaves TensorFlow's choice.
    tensorflow_session_parallelism: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    # A text-format tensorflow.ConfigProto; only its thread counts apply.
    tensorflow_session_config_file: Path | None = None
    # Predict refuses a signature whose method_name is not Predict, Classify or Regress.
    enable_signature_method_name_check: bool = False
    # With batching: a version batches with its own batching_params.pbtxt, or not at all.
    enable_per_model_batching_parameters: bool = False
    # Print the versions and exit.
    version: bool = False
    # The flags of NO_EFFECT_FLAGS given on the command line.
    no_effect_flags: tuple[str, ...] = ()


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
    flags.add_argument(
        "--max_image_pixels",
        type=int,
        default=defaults.max_image_pixels,
        help=(
            "refuse (INVALID_ARGUMENT, 400) a request holding an encoded image whose header"
            " declares more pixels than this, before the model runs: decoders allocate what"
            " a header declares. Warmup requests are judged too. ftserve only; models"
            " ftserve exports also refuse more than their export-time limit (40000000)"
        ),
    )
    flags.add_argument("--grpc_socket_path", default=defaults.grpc_socket_path)
    _bool_flag(flags, "--rest_api_enable_cors_support", defaults.rest_api_enable_cors_support)
    flags.add_argument("--ssl_config_file", type=Path, help="SSLConfig in text format")
    for name in _THREAD_FLAGS:
        flags.add_argument(f"--{name}", type=int, default=0)
    flags.add_argument(
        "--tensorflow_session_config_file", type=Path, help="ConfigProto in text format"
    )
    _bool_flag(
        flags, "--enable_signature_method_name_check", defaults.enable_signature_method_name_check
    )
    _bool_flag(
        flags,
        "--enable_per_model_batching_parameters",
        defaults.enable_per_model_batching_parameters,
    )
    _bool_flag(flags, "--version", defaults.version)
    for name, (kind, _) in NO_EFFECT_FLAGS.items():
        # None tells a flag given from one left out.
        nargs = "?" if kind is parse_bool else None
        const = True if kind is parse_bool else None
        flags.add_argument(f"--{name}", type=kind, nargs=nargs, const=const, help=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    """Build ``ServerOptions`` from parsed flags; a bad combination raises ``ValueError``."""
    if args.version:
        return ServerOptions(version=True)
    if all(getattr(args, name) > 0 for name in _THREAD_FLAGS):
        raise ValueError(
            "give --tensorflow_session_parallelism, or --tensorflow_intra_op_parallelism and"
            " --tensorflow_inter_op_parallelism, not all three"
        )
    if args.model_config_file is None and args.model_base_path is None:
        raise ValueError("give --model_config_file, or --model_name and --model_base_path")
    if args.model_config_file is not None and args.model_base_path is not None:
        raise ValueError("--model_config_file and --model_base_path exclude each other")
    if args.rest_api_port and args.rest_api_port == args.port:
        raise ValueError("--rest_api_port must differ from --port")
    if args.batching_parameters_file is not None and not args.enable_batching:
        raise ValueError("--batching_parameters_file needs --enable_batching")
    if args.max_image_pixels <= 0:
        raise ValueError("--max_image_pixels must be > 0")
    given = tuple(name for name in NO_EFFECT_FLAGS if getattr(args, name) is not None)
    fields = set(ServerOptions.__dataclass_fields__) - {"no_effect_flags"}
    return ServerOptions(**{name: getattr(args, name) for name in fields}, no_effect_flags=given)


def parse_options(argv: Sequence[str]) -> ServerOptions:
    parser = argparse.ArgumentParser(prog="ftserve model-server")
    add_arguments(parser)
    try:
        return options_from_args(parser.parse_args(argv))
    except ValueError as exc:
        parser.error(str(exc))


def _bool_flag(group: argparse._ArgumentGroup, flag: str, default: bool) -> None:
    group.add_argument(flag, type=parse_bool, nargs="?", const=True, default=default)


def no_effect_message(name: str) -> str:
    """The start-up line for a flag of ``NO_EFFECT_FLAGS`` that was given."""
    return f"--{name} has no effect: {NO_EFFECT_FLAGS[name][1]}"
