"""What the model server does, once: both the gRPC servicers and the REST routes call this.

Blocking TensorFlow work runs on a thread pool; the event loop only checks, routes and
batches requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable, Mapping
from concurrent.futures import Executor
from functools import partial
from typing import TypeVar

import grpc
import numpy as np
from tensorflow.core.protobuf.meta_graph_pb2 import SignatureDef
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
    status_pb2,
)
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from service.model_server import inference
from service.model_server.batching import BatchScheduler
from service.model_server.config import ConfigError, model_settings
from service.model_server.manager import ModelManager, VersionRecord
from service.model_server.metrics import ServerMetrics
from service.model_server.servable import DEFAULT_SIGNATURE, PreparedPredict, Servable
from service.model_server.status import ServingError, invalid_argument

log = logging.getLogger(__name__)

SIGNATURE_DEF = "signature_def"
T = TypeVar("T")
R = TypeVar("R")  # a Classify or Regress result
_TaskFn = Callable[[Mapping[str, SignatureDef], model_pb2.ModelSpec, bool], inference.Task]
# The method names TensorFlow Serving's Predict takes when it checks them.
_METHOD_NAMES = (
    "tensorflow/serving/predict",
    "tensorflow/serving/classify",
    "tensorflow/serving/regress",
)


class ModelServerCore:
    def __init__(
        self,
        manager: ModelManager,
        executor: Executor,
        metrics: ServerMetrics,
        batcher: BatchScheduler | None = None,
        check_method_name: bool = False,
    ) -> None:
        self.manager = manager
        # --enable_signature_method_name_check
        self.check_method_name = check_method_name
        self.metrics = metrics
        self._executor = executor
        self.batcher = batcher
        # --enable_per_model_batching_parameters: each version batches on its own terms.
        self.per_model_batching = False
        self._own_batchers: weakref.WeakKeyDictionary[Servable, BatchScheduler] = (
            weakref.WeakKeyDictionary()
        )

    async def predict(
        self, request: predict_pb2.PredictRequest, entrypoint: str
    ) -> predict_pb2.PredictResponse:
        return await self._measured(
            request.model_spec.name, "predict", entrypoint, partial(self._predict, request)
        )

    async def classify(
        self, request: classification_pb2.ClassificationRequest, entrypoint: str
    ) -> classification_pb2.ClassificationResponse:
        return await self._measured(
            request.model_spec.name, "Classify", entrypoint, partial(self._classify, request)
        )

    async def regress(
        self, request: regression_pb2.RegressionRequest, entrypoint: str
    ) -> regression_pb2.RegressionResponse:
        return await self._measured(
            request.model_spec.name, "Regress", entrypoint, partial(self._regress, request)
        )

    async def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest, entrypoint: str
    ) -> inference_pb2.MultiInferenceResponse:
        model = request.tasks[0].model_spec.name if request.tasks else ""
        return await self._measured(
            model, "MultiInference", entrypoint, partial(self._multi_inference, request)
        )

    async def get_model_metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, entrypoint: str
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return await self._measured(
            request.model_spec.name,
            "GetModelMetadata",
            entrypoint,
            partial(self._metadata, request),
        )

    def get_model_status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for record in self.manager.status(spec.name, version):
            response.model_version_status.append(_version_status(record))
        return response

    def record_batch(self, key: Hashable, size: int, padded_size: int) -> None:
        """The batch scheduler's ``on_batch``: batch sizes per model, for the metrics."""
        assert isinstance(key, tuple)
        self.metrics.record_batch(str(key[0]), size, padded_size)

    async def reload_config(
        self, request: model_management_pb2.ReloadConfigRequest
    ) -> model_management_pb2.ReloadConfigResponse:
        """Serve the models in ``request.config``; answers once they loaded or failed.

        Raises:
            ServingError: INVALID_ARGUMENT for a config that does not make sense,
                FAILED_PRECONDITION for a label on a version that is not AVAILABLE. TensorFlow
                Serving returns a failed reload as the call's status (its response status
                never reaches the client then), and so does this server.
        """
        if request.config.WhichOneof("config") != "model_config_list":
            # Checked here, not in apply_config: the config file's poller never gets here.
            raise invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest."
                " Only ModelConfigList is currently supported"
            )
        try:
            await self.apply_config(request.config)
        except ServingError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            raise
        response = model_management_pb2.ReloadConfigResponse()
        # TensorFlow Serving always sets the status; OK is the empty StatusProto.
        response.status.SetInParent()
        return response

    async def apply_config(self, config: ModelServerConfig) -> None:
        """Check ``config``, hand it to the manager and poll once (see ``reload_config``)."""
        try:
            models = model_settings(config)
        except ConfigError as exc:
            raise invalid_argument(str(exc)) from exc
        self.manager.set_config(models)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.manager.poll)

    async def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        with self.manager.acquire(request.model_spec) as servable:
            if self.check_method_name:
                _check_method_name(servable, request.model_spec.signature_name)
            prepared = servable.prepare(request)
            outputs = await self._run(servable, prepared)
            return servable.respond(prepared, outputs)

    async def _run(self, servable: Servable, prepared: PreparedPredict) -> dict[str, np.ndarray]:
        run = partial(servable.run, prepared.signature_name)
        batcher = self._batcher_for(servable)
        if batcher is None or not servable.batchable(prepared.signature_name):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, run, prepared.inputs)
        key = (servable.name, servable.version, prepared.signature_name)
        return await batcher.submit(key, prepared.inputs, run)

    def _batcher_for(self, servable: Servable) -> BatchScheduler | None:
        """The server's batcher; with per-model parameters, the version's own or none."""
        if self.batcher is None or not self.per_model_batching:
            return self.batcher
        if servable.own_batching is None:
            return None  # TensorFlow Serving batches only versions that have the file
        found = self._own_batchers.get(servable)
        if found is None:  # kept only while the version is: it goes when it unloads
            found = BatchScheduler(servable.own_batching, self._executor, self.record_batch)
            self._own_batchers[servable] = found
        return found

    async def close_batchers(self) -> None:
        """Let every batch in flight finish (at shutdown)."""
        for batcher in [self.batcher, *self._own_batchers.values()]:
            if batcher is not None:
                await batcher.close()

    async def _classify(
        self, request: classification_pb2.ClassificationRequest
    ) -> classification_pb2.ClassificationResponse:
        spec, result = await self._one_task(
            request, inference.classify_task, inference.classification_result
        )
        return classification_pb2.ClassificationResponse(model_spec=spec, result=result)

    async def _regress(
        self, request: regression_pb2.RegressionRequest
    ) -> regression_pb2.RegressionResponse:
        spec, result = await self._one_task(
            request, inference.regress_task, inference.regression_result
        )
        return regression_pb2.RegressionResponse(model_spec=spec, result=result)

    async def _one_task(
        self,
        request: classification_pb2.ClassificationRequest | regression_pb2.RegressionRequest,
        make_task: _TaskFn,
        make_result: Callable[[inference.Task, int, Mapping[str, np.ndarray]], R],
    ) -> tuple[model_pb2.ModelSpec, R]:
        """Classify or Regress: one signature run on the request's examples."""
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        with self.manager.acquire(request.model_spec) as servable:
            task = make_task(servable.signature_defs, request.model_spec, self.check_method_name)
            examples = inference.serialized_examples(request.input)
            outputs = await self._run_examples(servable, task, examples)
            spec = inference.echoed_spec(servable.name, task, servable.version)
            return spec, make_result(task, len(examples), outputs)

    async def _multi_inference(
        self, request: inference_pb2.MultiInferenceRequest
    ) -> inference_pb2.MultiInferenceResponse:
        # The version is the first task's; the others must name the same model.
        first = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        with self.manager.acquire(first) as servable:
            tasks = inference.multi_inference_tasks(
                request.tasks, servable.signature_defs, self.check_method_name
            )
            examples = inference.serialized_examples(request.input)
            # TensorFlow Serving runs the union of the tasks' outputs in one session run;
            # a servable runs one signature at a time, so each task runs on its own, on the
            # same examples. All runs finish before any result is checked, as there.
            outputs = [await self._run_examples(servable, task, examples) for task in tasks]
            response = inference_pb2.MultiInferenceResponse()
            for task, task_outputs in zip(tasks, outputs, strict=True):
                result = response.results.add()
                result.model_spec.CopyFrom(
                    inference.echoed_spec(servable.name, task, servable.version)
                )
                if task.method_name == inference.CLASSIFY:
                    result.classification_result.CopyFrom(
                        inference.classification_result(task, len(examples), task_outputs)
                    )
                else:
                    result.regression_result.CopyFrom(
                        inference.regression_result(task, len(examples), task_outputs)
                    )
            return response

    async def _run_examples(
        self, servable: inference.ExampleServable, task: inference.Task, examples: np.ndarray
    ) -> dict[str, np.ndarray]:
        feed = inference.run_feed(task, examples)
        run = partial(servable.run, task.signature_name, feed)
        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def _metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for metadata_field in request.metadata_field:
            if metadata_field != SIGNATURE_DEF:
                raise invalid_argument(f"Metadata field {metadata_field} is not supported")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        with self.manager.acquire(request.model_spec) as servable:
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for name, signature in servable.signature_defs.items():
                signatures.signature_def[name].CopyFrom(signature)
        response.metadata[SIGNATURE_DEF].Pack(signatures)
        return response

    async def _measured(
        self, model: str, api: str, entrypoint: str, call: Callable[[], Awaitable[T]]
    ) -> T:
        start = time.perf_counter()
        status = "OK"
        try:
            return await call()
        except ServingError as exc:
            status = exc.code.name
            raise
        except asyncio.CancelledError:
            status = grpc.StatusCode.CANCELLED.name
            raise
        finally:
            self.metrics.record_request(model, api, entrypoint, status, time.perf_counter() - start)


def _check_method_name(servable: Servable, signature_name: str) -> None:
    signature = servable.signature_defs.get(signature_name or DEFAULT_SIGNATURE)
    if signature is not None and signature.method_name not in _METHOD_NAMES:
        raise ServingError(
            grpc.StatusCode.INTERNAL,
            f"Expected prediction signature method_name to be one of"
            f" {{{', '.join(_METHOD_NAMES)}}}. Was: {signature.method_name}",
        )


def _version_status(record: VersionRecord) -> get_model_status_pb2.ModelVersionStatus:
    # TensorFlow Serving always sets the status: error_code 0 (OK) when there is no error.
    error = record.error
    return get_model_status_pb2.ModelVersionStatus(
        version=record.version,
        state=int(record.state),
        status=status_pb2.StatusProto(
            error_code=error.error_code if error else 0,
            error_message=error.message if error else "",
        ),
    )


def model_spec(
    name: str, version: int | None = None, label: str | None = None
) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label
    return spec
