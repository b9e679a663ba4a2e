"""Run the model server: gRPC and REST on one event loop, a poller thread, a model thread pool.

The ports open at once; until the first poll has tried every configured model, health says
NOT_SERVING and requests get UNAVAILABLE. SIGTERM or SIGINT stops accepting calls, lets the
ones in flight finish (up to ``shutdown_grace_seconds``), unloads the models and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

import grpc
import tensorflow as tf
import uvicorn
from google.protobuf import text_format
from google.protobuf.message import Message
from tensorflow.core.protobuf import config_pb2

from service.model_server.batching import BatchingOptions, BatchScheduler
from service.model_server.config import (
    ConfigError,
    initial_config,
    model_settings,
    prometheus_path,
    read_batching_parameters,
    read_model_server_config,
)
from service.model_server.core import ModelServerCore
from service.model_server.grpc_api import add_services, set_health
from service.model_server.manager import ModelManager, load_servable
from service.model_server.metrics import ServerMetrics
from service.model_server.options import ServerOptions, no_effect_message
from service.model_server.rest import create_app
from service.model_server.server_config_pb2 import SSLConfig
from service.model_server.status import ServingError

log = logging.getLogger(__name__)


class _RestServer(uvicorn.Server):
    # The model server owns SIGTERM/SIGINT and stops uvicorn itself.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Poller(threading.Thread):
    """Polls the file system for versions and, if asked, the config file for models."""

    def __init__(
        self,
        manager: ModelManager,
        options: ServerOptions,
        on_first_poll: Callable[[], None],
    ) -> None:
        super().__init__(name="ftserve-poller", daemon=True)
        self._manager = manager
        self._options = options
        self._on_first_poll = on_first_poll
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        self._poll()
        self._on_first_poll()
        fs_every = self._options.file_system_poll_wait_seconds
        config_every = self._options.model_config_file_poll_wait_seconds
        if self._options.model_config_file is None:
            config_every = 0
        intervals = [s for s in (fs_every, config_every) if s > 0]
        if not intervals:
            return
        next_config = time.monotonic() + config_every
        while not self._halt.wait(min(intervals)):
            if config_every > 0 and time.monotonic() >= next_config:
                next_config = time.monotonic() + config_every
                self._reload_config_file()
            self._poll()

    def _poll(self) -> None:
        try:
            self._manager.poll()
        except Exception:  # a poll must never kill the poller
            log.exception("polling the model repository failed")

    def _reload_config_file(self) -> None:
        # TensorFlow Serving's PollFilesystemAndReloadConfig, messages included: a refused
        # config keeps the current models and labels, and the next poll tries the file again.
        assert self._options.model_config_file is not None
        try:
            config = read_model_server_config(self._options.model_config_file)
        except ConfigError as exc:
            log.error("Failed to read ModelServerConfig file: %s", exc)
            return
        try:
            self._manager.set_config(model_settings(config))
        except (ConfigError, ServingError) as exc:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", exc)


def _grpc_options(options: ServerOptions) -> list[tuple[str, int | str]]:
    args: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", options.grpc_max_message_bytes),
        ("grpc.max_send_message_length", options.grpc_max_message_bytes),
    ]
    # --grpc_channel_arguments=key=value,key=value as TensorFlow Serving takes it.
    for pair in filter(None, options.grpc_channel_arguments.split(",")):
        key, _, value = pair.partition("=")
        args.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value))
    return args


def _grpc_addresses(options: ServerOptions) -> list[str]:
    addresses = [f"{options.host}:{options.port}"]
    if options.grpc_socket_path:
        addresses.append(f"unix:{options.grpc_socket_path}")
    return addresses


def _server_credentials(path: Path | None) -> grpc.ServerCredentials | None:
    """TLS for the gRPC listeners from ``--ssl_config_file``; ``None``: plain text."""
    if path is None:
        return None
    ssl = _read_text_proto(path, SSLConfig())
    if ssl.client_verify and not ssl.custom_ca:
        raise ConfigError(f"{path}: client_verify needs custom_ca to check client certificates")
    log.info("Using SSL credentials")
    return grpc.ssl_server_credentials(
        [(ssl.server_key.encode(), ssl.server_cert.encode())],
        root_certificates=ssl.custom_ca.encode() or None,
        require_client_auth=ssl.client_verify,
    )


def _configure_threads(options: ServerOptions) -> None:
    """Size TensorFlow's thread pools before any op runs, as TensorFlow Serving's flags do.

    ``--tensorflow_session_config_file`` gives the thread counts; the parallelism flags,
    when set, win over it.
    """
    session = config_pb2.ConfigProto()
    if options.tensorflow_session_config_file is not None:
        session = _read_text_proto(options.tensorflow_session_config_file, session)
        threads = {"intra_op_parallelism_threads", "inter_op_parallelism_threads"}
        ignored = sorted(f.name for f, _ in session.ListFields() if f.name not in threads)
        if ignored:
            log.info(
                "--tensorflow_session_config_file: %s has no effect: only the thread counts"
                " apply to this server",
                ", ".join(ignored),
            )
    intra = session.intra_op_parallelism_threads
    inter = session.inter_op_parallelism_threads
    if options.tensorflow_intra_op_parallelism or options.tensorflow_inter_op_parallelism:
        intra = options.tensorflow_intra_op_parallelism or intra
        inter = options.tensorflow_inter_op_parallelism or inter
    elif options.tensorflow_session_parallelism:
        intra = inter = options.tensorflow_session_parallelism
    if intra > 0:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter > 0:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    if intra > 0 or inter > 0:
        log.info(
            "TensorFlow threads: intra-op %d, inter-op %d (0: TensorFlow's choice)",
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )


_Message = TypeVar("_Message", bound=Message)


def _read_text_proto(path: Path, message: _Message) -> _Message:
    try:
        return text_format.Parse(path.read_text(), message)
    except (OSError, text_format.ParseError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _start_manager(options: ServerOptions) -> ModelManager:
    """A manager holding the initial config, which nothing has loaded yet.

    Raises:
        ConfigError: the config is invalid, or labels a version (none is AVAILABLE yet)
            without ``--allow_version_labels_for_unavailable_models``; TensorFlow Serving
            refuses to start then too.
    """
    manager = ModelManager(
        partial(
            load_servable,
            warmup=options.enable_model_warmup,
            max_image_pixels=options.max_image_pixels,
            per_model_batching=(
                options.enable_batching and options.enable_per_model_batching_parameters
            ),
        ),
        allow_version_labels_for_unavailable_models=(
            options.allow_version_labels_for_unavailable_models
        ),
    )
    try:
        manager.set_config(model_settings(initial_config(options)))
    except ServingError as exc:
        raise ConfigError(exc.message) from exc
    return manager


async def serve(options: ServerOptions, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set or the process gets SIGTERM/SIGINT.

    Raises:
        ConfigError: a configuration file is missing or invalid.
    """
    manager = _start_manager(options)
    batching = None
    if options.enable_batching:
        params = read_batching_parameters(options.batching_parameters_file)
        batching = BatchingOptions.from_proto(params)
    monitoring_path = prometheus_path(options.monitoring_config_file)
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    executor = ThreadPoolExecutor(
        max_workers=max(4, os.cpu_count() or 1), thread_name_prefix="model"
    )
    metrics = ServerMetrics()
    core = ModelServerCore(
        manager, executor, metrics, check_method_name=options.enable_signature_method_name_check
    )
    batcher = None
    if batching is not None:
        batcher = BatchScheduler(batching, executor, on_batch=core.record_batch)
        core.batcher = batcher
        core.per_model_batching = options.enable_per_model_batching_parameters

    grpc_server = grpc.aio.server(options=_grpc_options(options))
    health = add_services(grpc_server, core, options.enable_grpc_healthcheck_service)
    await set_health(health, serving=False)
    credentials = _server_credentials(options.ssl_config_file)
    for address in _grpc_addresses(options):
        if credentials is None:
            grpc_server.add_insecure_port(address)
        else:
            grpc_server.add_secure_port(address, credentials)
    await grpc_server.start()
    log.info("Running gRPC ModelServer at %s:%d ...", options.host, options.port)
    if options.grpc_socket_path:
        log.info("Running gRPC ModelServer at UNIX socket %s ...", options.grpc_socket_path)

    rest = None
    rest_task = None
    if options.rest_api_port:
        app = create_app(core, monitoring_path, cors=options.rest_api_enable_cors_support)
        config = uvicorn.Config(
            app,
            host=options.host,
            port=options.rest_api_port,
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=int(options.shutdown_grace_seconds),
        )
        rest = _RestServer(config)
        rest_task = asyncio.create_task(rest.serve())
        log.info("Exporting HTTP/REST API at:%s:%d ...", options.host, options.rest_api_port)

    def first_poll_done() -> None:
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(set_health(health, True)))

    poller = _Poller(manager, options, first_poll_done)
    poller.start()
    try:
        await stop.wait()
    finally:
        log.info("Shutting down: finishing requests in flight")
        await set_health(health, serving=False)
        if rest is not None:
            rest.should_exit = True
        await grpc_server.stop(options.shutdown_grace_seconds)
        if rest_task is not None:
            await rest_task
        await core.close_batchers()
        poller.stop()
        await loop.run_in_executor(None, poller.join)
        await loop.run_in_executor(None, manager.unload_all)
        executor.shutdown(wait=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def run(options: ServerOptions) -> int:
    """The ``ftserve model-server`` command: serve until signalled; 0 on a clean stop."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if options.version:
        print(f"TensorFlow ModelServer: ftserve {version('ftserve')}")
        print(f"TensorFlow Library: {tf.__version__}")
        return 0
    for name in options.no_effect_flags:
        log.info("%s", no_effect_message(name))
    try:
        _configure_threads(options)
        asyncio.run(serve(options))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except (OSError, RuntimeError) as exc:  # grpc raises RuntimeError when a port is taken
        log.error("cannot start the model server: %s", exc)
        return 1
    return 0
