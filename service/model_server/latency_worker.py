"""Times one model's batches in a process of its own, with TensorFlow's thread pools fixed.

TensorFlow sizes its thread pools once per process, so ``ftserve tune-batching`` starts one
of these per thread setting and keeps them all alive, to take turns on the CPU. The model
loads as ``ftserve model-server`` loads it and every batch runs through the same call a
server's batch runs through, so the times include what serving adds around the graph.

Protocol, one JSON object per line: the worker first answers ``{"ready": {...}}`` (the
version it loaded and what it feeds) or ``{"error": "..."}``; then, for each
``{"batch_size": B, "runs": R, "min_seconds": T}`` read on stdin, it runs at least R
batches of B rows, for at least T seconds, on ``--parallel`` threads at once and answers
``{"latencies_ms": [...], "wall_s": S}``.
It exits at the end of stdin.

    python -m service.model_server.latency_worker VERSION_OR_BASE_PATH --intra 2 --inter 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from service.contract.repository import read_model_card
from service.model_server.manager import open_servable, version_dirs
from service.model_server.servable import LoadError, Servable, has_saved_model
from service.model_server.status import ServingError

DISTINCT_IMAGES = 8
# The most batches one timing request runs, however fast the model.
MAX_RUNS = 500
_FLOATS = {types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16}
_INTS = {types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_INT32, types_pb2.DT_INT64}
_INTS |= {types_pb2.DT_UINT8, types_pb2.DT_UINT16}


class ModelInputError(ValueError):
    """The model cannot be found, or the tuner cannot make inputs for its signature."""


def resolve_version(path: Path) -> Path:
    """``path`` itself when it is a SavedModel, else its newest version, as the server picks."""
    if has_saved_model(path):
        return path
    versions = version_dirs(path)
    if not versions:
        raise ModelInputError(
            f"{path} is neither a SavedModel folder nor a base path with numbered versions"
        )
    return versions[max(versions)]


def image_size(version: Path, signatures: dict[str, meta_graph_pb2.SignatureDef]) -> int | None:
    """The side the model resizes images to: its model card's, else a pixel input's height."""
    card = read_model_card(version) or {}
    if isinstance(card.get("image_size"), int) and card["image_size"] > 0:
        return int(card["image_size"])
    for signature in signatures.values():
        for info in signature.inputs.values():
            dims = [dim.size for dim in info.tensor_shape.dim]
            if info.dtype in _FLOATS and len(dims) == 4 and dims[1] > 0:
                return dims[1]
    return None


def sample_jpegs(size: int, count: int = DISTINCT_IMAGES) -> list[bytes]:
    """Smooth, textured pictures: they compress and decode like photos, unlike noise."""
    rng = np.random.default_rng(0)
    side = max(2, size // 16)
    images = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, size=(1, side, side, 3))
        pixels = tf.image.resize(coarse, (size, size), method="bicubic")[0].numpy()
        pixels += rng.normal(0, 6, size=pixels.shape)
        encoded = tf.io.encode_jpeg(np.clip(pixels, 0, 255).astype(np.uint8), quality=90)
        images.append(encoded.numpy())
    return images


class Feeder:
    """Makes a batch of inputs for one signature: JPEG bytes for strings, noise for numbers."""

    def __init__(self, signature: meta_graph_pb2.SignatureDef, size: int | None) -> None:
        self._inputs = dict(signature.inputs)
        self._size = size
        self._rng = np.random.default_rng(1)
        self.description = {alias: self._describe(info) for alias, info in self._inputs.items()}
        needs_images = any(info.dtype == types_pb2.DT_STRING for info in self._inputs.values())
        self._jpegs = sample_jpegs(size) if needs_images and size else []

    def batch(self, rows: int) -> dict[str, np.ndarray]:
        """Inputs for ``rows`` rows, ready for ``Servable.run``."""
        return {alias: self._make(info, rows) for alias, info in self._inputs.items()}

    def _describe(self, info: meta_graph_pb2.TensorInfo) -> str:
        if info.dtype == types_pb2.DT_STRING:
            self._check_rank(info, exact=1)
            if self._size is None:
                raise ModelInputError(
                    "cannot tell the image size: the version has no model card and no"
                    " signature with a fixed image shape; give --image-size"
                )
            return f"JPEG {self._size}x{self._size} ({DISTINCT_IMAGES} distinct images)"
        if info.dtype not in _FLOATS | _INTS | {types_pb2.DT_BOOL}:
            name = tf.dtypes.as_dtype(info.dtype).name
            raise ModelInputError(f"cannot make {name} inputs")
        shape = self._row_shape(info)
        return f"random {tf.dtypes.as_dtype(info.dtype).name} {list(shape)} per row"

    def _check_rank(self, info: meta_graph_pb2.TensorInfo, exact: int | None = None) -> None:
        dims = info.tensor_shape.dim
        if info.tensor_shape.unknown_rank or not dims or dims[0].size != -1:
            raise ModelInputError("every input needs a known rank and a free batch dimension")
        if exact is not None and len(dims) != exact:
            raise ModelInputError(f"string inputs must be vectors of encoded images; got {dims}")

    def _row_shape(self, info: meta_graph_pb2.TensorInfo) -> tuple[int, ...]:
        self._check_rank(info)
        shape = [dim.size for dim in info.tensor_shape.dim[1:]]
        if -1 in shape:
            if self._size is None:
                raise ModelInputError(f"input shape {shape} has free dimensions; give --image-size")
            # Free dimensions of image-like inputs take the image size.
            shape = [self._size if dim == -1 else dim for dim in shape]
        return tuple(shape)

    def _make(self, info: meta_graph_pb2.TensorInfo, rows: int) -> np.ndarray:
        if info.dtype == types_pb2.DT_STRING:
            images = [self._jpegs[i % len(self._jpegs)] for i in range(rows)]
            return np.array(images, dtype=object)
        dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype
        shape = (rows, *self._row_shape(info))
        if info.dtype in _FLOATS:
            return self._rng.uniform(0, 255, size=shape).astype(dtype)
        if info.dtype in _INTS:
            return self._rng.integers(0, 10, size=shape).astype(dtype)
        return np.zeros(shape, dtype=bool)


def time_batches(
    servable: Servable,
    signature: str,
    inputs: dict[str, np.ndarray],
    runs: int,
    parallel: int,
    min_seconds: float = 0.0,
) -> tuple[list[float], float]:
    """Runs batches on ``parallel`` threads at once: (latencies in ms, wall seconds).

    Each thread runs its share of ``runs``, and goes on until ``min_seconds`` have passed
    (fast models get more samples for their p99), up to its share of ``MAX_RUNS``.
    """
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + min_seconds
    most = math.ceil(max(runs, MAX_RUNS) / parallel)

    def loop(count: int) -> None:
        try:
            done = 0
            while done < most and (done < count or time.perf_counter() < deadline):
                done += 1
                started = time.perf_counter()
                servable.run(signature, inputs)
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    latencies.append(elapsed)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    per_thread = math.ceil(runs / parallel)
    threads = [threading.Thread(target=loop, args=(per_thread,)) for _ in range(parallel)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return latencies, wall


def serve_requests(
    servable: Servable, signature: str, feeder: Feeder, parallel: int, out: IO[str]
) -> None:
    """Answers timing requests from stdin until it ends."""
    warmed: set[int] = set()
    for line in sys.stdin:
        request = json.loads(line)
        size, runs = int(request["batch_size"]), int(request["runs"])
        min_seconds = float(request.get("min_seconds", 0.0))
        inputs = feeder.batch(size)
        if size not in warmed:
            # The first runs at a new shape build kernels (oneDNN makes them per shape).
            time_batches(servable, signature, inputs, parallel, parallel)
            warmed.add(size)
        latencies, wall = time_batches(servable, signature, inputs, runs, parallel, min_seconds)
        _reply(out, {"latencies_ms": latencies, "wall_s": wall})


def load(args: argparse.Namespace) -> tuple[Servable, Feeder, dict[str, Any]]:
    """Loads the version and prepares its inputs; what was loaded, for the report."""
    version = resolve_version(args.model_dir)
    servable = open_servable("tuning", 1, version)
    signature = servable.signature_defs.get(args.signature)
    if signature is None:
        names = ", ".join(sorted(servable.signature_defs))
        raise ModelInputError(f"{version} has no signature {args.signature!r} (it has {names})")
    size = args.image_size or image_size(version, servable.signature_defs)
    feeder = Feeder(signature, size)
    return servable, feeder, {"version_dir": str(version), "inputs": feeder.description}


def _reply(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service.model_server.latency_worker")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--intra", type=int, required=True)
    parser.add_argument("--inter", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--image-size", type=int)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Load, report ready, then time batches as asked on stdin."""
    args = _parse(argv)
    # Replies own the real stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # Before any op runs: TensorFlow fixes its pools at the first one.
    tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    try:
        servable, feeder, loaded = load(args)
        # One batch of one row, so that a model that cannot run fails here, not mid-curve.
        servable.run(args.signature, feeder.batch(1))
    except (LoadError, ModelInputError) as exc:
        _reply(out, {"error": str(exc)})
        return 1
    except ServingError as exc:
        _reply(out, {"error": f"the model failed on a batch of one: {exc.message}"})
        return 1
    _reply(out, {"ready": loaded})
    serve_requests(servable, args.signature, feeder, args.parallel, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
