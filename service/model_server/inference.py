"""Classify, Regress and MultiInference over tf.Examples, as TensorFlow Serving answers them.

The request's ``Input`` becomes one DT_STRING ``[N]`` tensor of serialized ``tf.Example``s
(``util.cc``), fed to the signature's ``inputs``; the outputs become a
``ClassificationResult`` (``classifier.cc``) or a ``RegressionResult`` (``regressor.cc``).
Checks and messages are TensorFlow Serving's, in its order: the signature first, then the
input, then the run, then the outputs.

Works on any loaded version that has ``name``, ``version``, ``signature_defs`` and
``run(signature_name, inputs)``; nothing here imports TensorFlow's Python runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf.meta_graph_pb2 import SignatureDef
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
)

from service.model_server.status import ServingError, invalid_argument

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
INPUTS = "inputs"
CLASSES = "classes"
SCORES = "scores"
OUTPUTS = "outputs"


class ExampleServable(Protocol):
    """What a loaded version offers these calls; SavedModel and session servables alike."""

    name: str
    version: int
    signature_defs: dict[str, SignatureDef]

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one signature on named inputs."""
        ...


@dataclass(frozen=True)
class Task:
    """One checked classify or regress task: which signature, which method."""

    signature_name: str
    signature: SignatureDef
    method_name: str
    requested_name: str  # as the request spelled it, for the model spec echoed back


# --- the input --------------------------------------------------------------------------------


def serialized_examples(model_input: input_pb2.Input) -> np.ndarray:
    """The request's examples as a ``[N]`` object array of serialized ``tf.Example`` bytes.

    With a context, each example is the context's bytes followed by the example's: parsing
    the concatenation merges the two, the example's values winning, as in TensorFlow Serving.

    Raises:
        ServingError: INVALID_ARGUMENT ``Input is empty.`` when there is no example.
    """
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        context = with_context.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in with_context.examples]
    else:
        serialized = []
    if not serialized:
        raise invalid_argument("Input is empty.")
    examples = np.empty(len(serialized), dtype=object)
    examples[:] = serialized
    return examples


def run_feed(task: Task, examples: np.ndarray) -> dict[str, np.ndarray]:
    """The inputs to run ``task``'s signature on; a non-string input fails as in a session."""
    info = task.signature.inputs[INPUTS]
    if info.dtype != types_pb2.DT_STRING:
        raise invalid_argument(
            f"Expects arg[0] to be {_dtype_text(info.dtype)} but string is provided"
        )
    return {INPUTS: examples}


# --- signatures -------------------------------------------------------------------------------


def classify_task(
    signature_defs: Mapping[str, SignatureDef], spec: model_pb2.ModelSpec, check_method: bool
) -> Task:
    """The signature a ClassificationRequest names, checked as ``classifier.cc`` does."""
    return _single_task(signature_defs, spec, CLASSIFY, check_method)


def regress_task(
    signature_defs: Mapping[str, SignatureDef], spec: model_pb2.ModelSpec, check_method: bool
) -> Task:
    """The signature a RegressionRequest names, checked as ``regressor.cc`` does."""
    return _single_task(signature_defs, spec, REGRESS, check_method)


def _single_task(
    signature_defs: Mapping[str, SignatureDef],
    spec: model_pb2.ModelSpec,
    method_name: str,
    check_method: bool,
) -> Task:
    name = spec.signature_name or DEFAULT_SIGNATURE
    signature = signature_defs.get(name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    _check_signature(signature, method_name, check_method)
    return Task(name, signature, method_name, spec.signature_name)


def multi_inference_tasks(
    tasks: Sequence[inference_pb2.InferenceTask],
    signature_defs: Mapping[str, SignatureDef],
    check_method: bool,
) -> list[Task]:
    """The tasks of a MultiInferenceRequest, checked as ``multi_inference.cc`` does."""
    model_name = ""
    checked: list[Task] = []
    for task in tasks:
        spec = task.model_spec
        if not spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if model_name and spec.name != model_name:
            raise invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        model_name = spec.name
        name = spec.signature_name or DEFAULT_SIGNATURE
        if any(seen.signature_name == name for seen in checked):
            raise invalid_argument(f"Duplicate evaluation of signature: {name}")
        signature = signature_defs.get(name)
        if signature is None:
            raise invalid_argument(f"Requested signature not found in model graph: {name}")
        if task.method_name not in (CLASSIFY, REGRESS):
            raise ServingError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"Unsupported signature method_name: {task.method_name}",
            )
        _check_signature(signature, task.method_name, check_method)
        checked.append(Task(name, signature, task.method_name, spec.signature_name))
    return checked


def _check_signature(signature: SignatureDef, method_name: str, check_method: bool) -> None:
    """TensorFlow Serving's ``PreProcessClassification`` / ``PreProcessRegression``.

    The method name is checked only with ``--enable_signature_method_name_check``; without
    it a signature of another kind is judged by its inputs and outputs.
    """
    word = "classification" if method_name == CLASSIFY else "regression"
    if check_method and signature.method_name != method_name:
        raise invalid_argument(
            f"Expected {word} signature method_name to be {method_name}."
            f" Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if method_name == CLASSIFY and len(signature.outputs) not in (1, 2):
        raise invalid_argument(
            f"Expected one or two output Tensors, found {len(signature.outputs)}"
        )
    if method_name == REGRESS and len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if INPUTS not in signature.inputs:
        raise invalid_argument(f"No {word} inputs found in SignatureDef: {debug_string(signature)}")
    if method_name == CLASSIFY and not {CLASSES, SCORES} & set(signature.outputs):
        raise invalid_argument(
            f'Expected classification signature outputs to contain at least one of "{CLASSES}"'
            f' or "{SCORES}". Signature was: {debug_string(signature)}'
        )
    if method_name == REGRESS and OUTPUTS not in signature.outputs:
        raise invalid_argument(
            f"No regression outputs found in SignatureDef: {debug_string(signature)}"
        )


# --- the results ------------------------------------------------------------------------------


def classification_result(
    task: Task, num_examples: int, outputs: Mapping[str, np.ndarray]
) -> classification_pb2.ClassificationResult:
    """``outputs`` of a classify signature as a ClassificationResult, checked first."""
    classes = outputs.get(CLASSES) if CLASSES in task.signature.outputs else None
    scores = outputs.get(SCORES) if SCORES in task.signature.outputs else None
    for alias, array, dtype in ((CLASSES, classes, "DT_STRING"), (SCORES, scores, "DT_FLOAT")):
        if array is None:
            continue
        if array.ndim != 2:
            raise invalid_argument(
                "Expected Tensor shape: [batch_size num_classes] but got"
                f" {_shape_text(array.shape)}"
            )
        if _array_dtype(array) != dtype:
            raise invalid_argument(
                f"Expected {alias} Tensor of {dtype}. Got: {_array_dtype(array)}"
            )
        if array.shape[0] != num_examples:
            raise invalid_argument(
                f"Expected {alias} output batch size of {num_examples}. Got: {array.shape[0]}"
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(
            "Tensors class and score should match in dim_size(1)."
            f" Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    present = classes if classes is not None else scores
    num_classes = 0 if present is None else present.shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = _label(classes[i, c])
            if scores is not None:
                entry.score = float(scores[i, c])
    return result


def regression_result(
    task: Task, num_examples: int, outputs: Mapping[str, np.ndarray]
) -> regression_pb2.RegressionResult:
    """``outputs`` of a regress signature as a RegressionResult, checked first."""
    values = outputs.get(OUTPUTS)
    if values is None:
        raise invalid_argument(f"Could not find output tensor '{OUTPUTS}'")
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got"
            f" {_shape_text(values.shape)}"
        )
    if values.shape[0] != num_examples:
        raise invalid_argument(
            "Input batch size did not match output batch size:"
            f" {num_examples} vs. {values.shape[0]}"
        )
    if _array_dtype(values) != "DT_FLOAT":
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {_array_dtype(values)}")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add(value=float(value))
    return result


def echoed_spec(name: str, task: Task, version: int) -> model_pb2.ModelSpec:
    """The model spec a response carries: the signature as asked, or the default's name."""
    spec = model_pb2.ModelSpec(name=name, signature_name=task.requested_name or DEFAULT_SIGNATURE)
    spec.version.value = version
    return spec


# --- text as TensorFlow writes it ---------------------------------------------------------------


def debug_string(signature: SignatureDef) -> str:
    """``SignatureDef::DebugString()``: text format, map entries sorted by key."""
    from google.protobuf import text_format

    return text_format.MessageToString(signature)


_NUMPY_DTYPES = {
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "float16": "DT_HALF",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
    "complex64": "DT_COMPLEX64",
    "complex128": "DT_COMPLEX128",
}


def _array_dtype(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "DT_STRING"
    return _NUMPY_DTYPES.get(array.dtype.name, f"DT_INVALID ({array.dtype.name})")


def _dtype_text(dtype: int) -> str:
    """TensorFlow's ``DataTypeString``: ``DT_FLOAT`` → ``float``."""
    try:
        return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()
    except ValueError:
        return f"unknown dtype {dtype}"


def _shape_text(shape: tuple[int, ...]) -> str:
    """``TensorShape::DebugString()``: ``[2,3]``."""
    return "[" + ",".join(str(size) for size in shape) + "]"


def _label(value: object) -> str:
    # A label is a proto3 string: bytes that are not UTF-8 cannot travel in it, where
    # TensorFlow Serving sends them anyway and the client fails to parse the response.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
