"""A SavedModel version served from a TF1 session, the way TensorFlow Serving serves every model.

``tf.saved_model.load`` rebuilds TF1 graphs as functions and re-checks every op's shapes on
the way; graphs written by older TensorFlow (a ``ParseExample`` fed by a placeholder TF 1.0
wrote as ``shape {}``) fail there. TensorFlow Serving's loader instead imports the
``serve`` meta graph into a session, restores its variables, runs its main op (or legacy
init op) with the asset paths fed, and answers a request by feeding the SignatureDef's
input tensors and fetching its output tensors. This servable does the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.saved_model import loader_impl

from service.model_server.options import DEFAULT_MAX_IMAGE_PIXELS
from service.model_server.servable import LoadError, Servable, first_line, grpc_code
from service.model_server.status import ServingError

SERVE_TAG = "serve"
VARIABLES_PREFIX = Path("variables") / "variables"

# A session callable: positional feeds in, fetched values out, in CallableOptions order.
_Runner = Callable[..., list[np.ndarray]]


class SessionServable(Servable):
    """A version loaded with ``tf.compat.v1.saved_model.loader.load`` into its own session."""

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        meta_graph: meta_graph_pb2.MetaGraphDef,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        try:
            _load_into(self._session, path, meta_graph)
        except Exception as exc:  # TensorFlow raises many types for a bad SavedModel
            self._session.close()
            raise LoadError(f"cannot load {path}: {first_line(exc)}") from exc
        signature_defs = dict(meta_graph.signature_def)
        super().__init__(name, version, path, signature_defs, signature_defs, max_image_pixels)
        self._runners: dict[tuple[str, tuple[str, ...]], _Runner] = {}
        self._runners_lock = threading.Lock()

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feed the signature's input tensors, fetch all its outputs, keyed by alias.

        Inputs are fed as sent, as TensorFlow Serving feeds them: a graph that can use
        another shape does, and one that cannot fails with TensorFlow's status code.
        """
        aliases = tuple(sorted(inputs))
        outputs = tuple(sorted(self.signature_defs[signature_name].outputs))
        runner = self._runner(signature_name, aliases, outputs)
        try:
            values = runner(*(inputs[alias] for alias in aliases))
        except tf.errors.OpError as exc:
            raise ServingError(grpc_code(exc.error_code), exc.message) from exc
        return dict(zip(outputs, values, strict=True))

    def _runner(
        self, signature_name: str, aliases: tuple[str, ...], outputs: tuple[str, ...]
    ) -> _Runner:
        # A session callable prunes the graph once per feed set instead of on every run,
        # and, unlike Session.run, does not refuse a feed whose shape differs from the
        # tensor's static shape: the kernels judge it, as in TensorFlow Serving.
        key = (signature_name, aliases)
        with self._runners_lock:
            runner = self._runners.get(key)
            if runner is None:
                signature = self.signature_defs[signature_name]
                options = config_pb2.CallableOptions(
                    feed=[signature.inputs[alias].name for alias in aliases],
                    fetch=[signature.outputs[alias].name for alias in outputs],
                )
                try:
                    runner = self._session._make_callable_from_options(options)
                except tf.errors.OpError as exc:
                    raise ServingError(grpc_code(exc.error_code), exc.message) from exc
                self._runners[key] = runner
        return runner


def _load_into(session: tf.compat.v1.Session, path: Path, meta_graph) -> None:
    """Import the graph, restore its variables, run its main or legacy init op.

    As TensorFlow Serving's ``LoadSavedModel`` does: the restore op the graph's ``SaverDef``
    names runs on ``variables/variables`` when its index exists (Python's own loader skips
    it for TF2 graphs, which keep their variables out of the ``variables`` collection), and
    the init op runs with each asset tensor fed its file's path under ``assets/``.
    """
    loader = loader_impl.SavedModelLoader(str(path))
    with session.graph.as_default():
        loader.load_graph(session.graph, [SERVE_TAG])
        saver = meta_graph.saver_def
        variables = path / VARIABLES_PREFIX
        if saver.restore_op_name and variables.with_suffix(".index").is_file():
            session.run(saver.restore_op_name, {saver.filename_tensor_name: str(variables)})
        loader.run_init_ops(session, [SERVE_TAG])
