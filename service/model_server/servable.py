"""One loaded model version: its signatures, request checks, execution and warmup.

Requests are checked against the SavedModel's ``SignatureDef``s the way TensorFlow Serving
checks them (``predict_util.cc``), with its messages, before anything runs; errors while
running keep TensorFlow's status code. Encoded images in string inputs are judged by their
headers too: a decoder allocates the canvas a header declares before it reads a pixel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from service.ingest.images import (
    HEAD_BYTES,
    BombHeaderError,
    UnreadableHeaderError,
    image_kind,
    read_header,
    unsized_kind,
)
from service.model_server.batching import BatchingOptions
from service.model_server.options import DEFAULT_MAX_IMAGE_PIXELS
from service.model_server.status import ServingError, invalid_argument
from service.model_server.tensors import tensor_proto

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
WARMUP_PATH = Path("assets.extra") / "tf_serving_warmup_requests"
# TensorFlow Serving reads at most this many warmup records.
MAX_WARMUP_RECORDS = 1000
_SERVE_TAG = "serve"
# Kinds whose header may be unreadable here where TensorFlow's decoder reads it and allocates
# the canvas (libpng only warns about a bad checksum on an ancillary chunk, where Pillow
# fails; libwebp reads layouts the WebP parser may not know): those are refused. An
# unreadable GIF has no frame, so giflib allocates nothing, and TensorFlow decodes a BMP only
# when the request holds every pixel's bytes: those are left to the model, as is text that
# happens to start with "BM".
_DECODER_READS_WHAT_WE_CANNOT = frozenset({"PNG", "JPEG", "WebP"})


class LoadError(Exception):
    """A version directory that could not be loaded or warmed up."""


@dataclass(frozen=True)
class PreparedPredict:
    """A checked Predict request: what to run and which outputs to return."""

    signature_name: str
    inputs: dict[str, np.ndarray]
    output_aliases: tuple[str, ...]


def has_saved_model(path: Path) -> bool:
    """Whether ``path`` holds a SavedModel's graph file (a version still being copied may not)."""
    return (path / SAVED_MODEL_PB).is_file() or (path / SAVED_MODEL_PBTXT).is_file()


def read_meta_graph(path: Path) -> meta_graph_pb2.MetaGraphDef:
    """The SavedModel's ``serve`` meta graph; ``LoadError`` when there is none to read."""
    saved_model = saved_model_pb2.SavedModel()
    try:
        if (path / SAVED_MODEL_PB).is_file():
            saved_model.ParseFromString((path / SAVED_MODEL_PB).read_bytes())
        else:
            from google.protobuf import text_format

            text = (path / SAVED_MODEL_PBTXT).read_text(encoding="utf-8")
            text_format.Parse(text, saved_model)
    except Exception as exc:  # a truncated or foreign file fails in many ways
        raise LoadError(f"cannot load {path}: {first_line(exc)}") from exc
    for meta_graph in saved_model.meta_graphs:
        if _SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    raise LoadError(f"{path} has no meta graph tagged {_SERVE_TAG!r}")


def read_signature_defs(path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The ``serve`` meta graph's signatures, as TensorFlow Serving reports them."""
    return dict(read_meta_graph(path).signature_def)


class Servable:
    """A loaded SavedModel version: its signatures, request checks and warmup.

    Loaders differ only in how a signature runs: ``FunctionServable`` calls the functions
    ``tf.saved_model.load`` restores, ``session_servable.SessionServable`` runs a TF1
    session as TensorFlow Serving does. String inputs holding encoded images whose headers
    declare more than ``max_image_pixels`` are refused before the model runs.
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        signature_defs: dict[str, meta_graph_pb2.SignatureDef],
        runnable: Iterable[str],
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = signature_defs
        self.max_image_pixels = max_image_pixels
        # This version's own batching (--enable_per_model_batching_parameters), if any.
        self.own_batching: BatchingOptions | None = None
        self._runnable = frozenset(runnable)
        # Asked on every request when batching is on; the answer never changes.
        self._batchable = {
            name: all(
                _leading_batch_dim(info)
                for info in [*signature.inputs.values(), *signature.outputs.values()]
            )
            for name, signature in self.signature_defs.items()
        }

    def prepare(self, request: predict_pb2.PredictRequest) -> PreparedPredict:
        """Check ``request`` against its signature and decode its inputs."""
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = self.signature_defs.get(name)
        if signature is None or name not in self._runnable:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.'
            )
        _check_input_names(signature, request)
        inputs = {
            alias: _decode_input(
                alias,
                position,
                signature.inputs[alias],
                request.inputs[alias],
                self.max_image_pixels,
            )
            for position, alias in enumerate(sorted(request.inputs))
        }
        return PreparedPredict(name, inputs, _output_aliases(signature, request.output_filter))

    def batchable(self, signature_name: str) -> bool:
        """Whether every input and output of the signature has a free leading batch dim."""
        return self._batchable[signature_name]

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one signature; TensorFlow errors become ``ServingError`` with the same code."""
        raise NotImplementedError

    def respond(
        self, prepared: PreparedPredict, outputs: dict[str, np.ndarray]
    ) -> predict_pb2.PredictResponse:
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = prepared.signature_name
        for alias in prepared.output_aliases:
            response.outputs[alias].CopyFrom(tensor_proto(outputs[alias]))
        return response

    def warm_up(self) -> int:
        """Replay ``assets.extra/tf_serving_warmup_requests``; return how many ran."""
        path = self.path / WARMUP_PATH
        if not path.is_file():
            return 0
        count = 0
        try:
            for log_record in _warmup_records(path):
                if log_record.WhichOneof("log_type") != "predict_log":
                    raise LoadError(f"{path}: only Predict warmup requests are supported")
                prepared = self.prepare(log_record.predict_log.request)
                self.run(prepared.signature_name, prepared.inputs)
                count += 1
        except ServingError as exc:
            raise LoadError(f"warmup request {count + 1} of {path} failed: {exc.message}") from exc
        except (tf.errors.OpError, DecodeError) as exc:
            raise LoadError(f"cannot read {path}: {first_line(exc)}") from exc
        return count


class FunctionServable(Servable):
    """A version loaded with ``tf.saved_model.load``: its signatures run as restored functions."""

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        meta_graph: meta_graph_pb2.MetaGraphDef,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        try:
            loaded = tf.saved_model.load(str(path), tags=[_SERVE_TAG])
        except Exception as exc:  # TensorFlow raises many types for a bad SavedModel
            raise LoadError(f"cannot load {path}: {first_line(exc)}") from exc
        self._loaded = loaded  # keeps the functions' variables alive
        self._functions = dict(loaded.signatures)
        signature_defs = dict(meta_graph.signature_def)
        super().__init__(name, version, path, signature_defs, self._functions, max_image_pixels)

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one signature; TensorFlow errors become ``ServingError`` with the same code."""
        function = self._functions[signature_name]
        # A restored signature takes its inputs by name and runs its graph on the shapes
        # given, as TensorFlow Serving's session does; a shape the ops cannot use fails there.
        try:
            outputs = function(**{alias: tf.constant(value) for alias, value in inputs.items()})
        except tf.errors.OpError as exc:
            raise ServingError(grpc_code(exc.error_code), exc.message) from exc
        return {alias: tensor.numpy() for alias, tensor in outputs.items()}


def _warmup_records(path: Path) -> Iterator[prediction_log_pb2.PredictionLog]:
    records = tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS)
    for serialized in records.as_numpy_iterator():
        record = prediction_log_pb2.PredictionLog()
        record.ParseFromString(serialized)
        yield record


def _check_input_names(
    signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest
) -> None:
    sent, expected = set(request.inputs), set(signature.inputs)
    if sent == expected:
        return
    if len(sent) != len(expected):
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)}"
            f" len({{{_join(sent)}}}) != len({{{_join(expected)}}})."
            f" Sent extra: {{{_join(sent - expected)}}}."
            f" Missing but required: {{{_join(expected - sent)}}}."
        )
    alias = min(sent - expected)
    raise invalid_argument(
        f"input tensor alias not found in signature: {alias}."
        f" Inputs expected to be in the set {{{_join(expected)}}}."
    )


def _decode_input(
    alias: str,
    position: int,
    info: meta_graph_pb2.TensorInfo,
    proto: tensor_pb2.TensorProto,
    max_image_pixels: int,
) -> np.ndarray:
    """The input as an array; its shape is not checked against the signature's.

    TensorFlow Serving checks names and types and feeds the tensor as sent: a graph that can
    use another shape does (``half_plus_two`` takes a flat ``[3]`` for its ``[-1, 1]`` x),
    and one that cannot fails in TensorFlow with INVALID_ARGUMENT, kept by ``run``.
    """
    if proto.dtype != info.dtype:
        expected, got = (tf.dtypes.as_dtype(d).name for d in (info.dtype, proto.dtype))
        raise invalid_argument(f"Expects arg[{position}] to be {expected} but {got} is provided")
    try:
        array = tf.make_ndarray(proto)
    except (TypeError, ValueError) as exc:
        raise invalid_argument(f"tensor parsing error: {alias}") from exc
    if proto.dtype == types_pb2.DT_STRING:
        _check_images(alias, array, max_image_pixels)
    return array


def _check_images(alias: str, values: np.ndarray, max_pixels: int) -> None:
    """Refuse encoded images whose headers declare more than ``max_pixels``, and JPEG XL.

    Values that do not start like a JPEG, PNG, GIF, BMP, WebP or JPEG XL are left for the
    model to judge.
    """
    for index, value in enumerate(values.flat):
        problem = _image_problem(value, max_pixels) if isinstance(value, bytes) else None
        if problem is not None:
            raise invalid_argument(f"input {alias}[{index}] {problem}")


def _image_problem(value: bytes, max_pixels: int) -> str | None:
    head = value[:HEAD_BYTES]
    unsized = unsized_kind(head)
    if unsized is not None:
        return f"is a {unsized} image, which is refused: its size is not judged"
    kind = image_kind(head)
    if kind is None:
        return None
    try:
        header = read_header(value, kind)
    except BombHeaderError as exc:
        return f"is a {kind} too large to decode: {exc}"
    except UnreadableHeaderError:
        if kind not in _DECODER_READS_WHAT_WE_CANNOT:
            return None  # TensorFlow fails before allocating: left to it, like any bytes
        return f"starts like a {kind} but its header is damaged, so it cannot be decoded"
    if header.pixels <= max_pixels:
        return None
    return (
        f"is a {header.width}x{header.height} {kind} ({header.pixels} pixels),"
        f" more than the limit {max_pixels}"
    )


def _output_aliases(signature: meta_graph_pb2.SignatureDef, output_filter) -> tuple[str, ...]:
    if not output_filter:
        return tuple(sorted(signature.outputs))
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias}"
                f" Outputs expected to be in the set {{{_join(signature.outputs)}}}."
            )
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return tuple(seen)


def _leading_batch_dim(info: meta_graph_pb2.TensorInfo) -> bool:
    dims = info.tensor_shape.dim
    return not info.tensor_shape.unknown_rank and len(dims) > 0 and dims[0].size == -1


def grpc_code(tf_code: int) -> grpc.StatusCode:
    # TensorFlow's error codes are the canonical codes gRPC uses, number for number.
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code
    return grpc.StatusCode.UNKNOWN


def _join(names) -> str:
    return ",".join(sorted(names))


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
