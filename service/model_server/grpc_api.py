"""The gRPC services: ``tensorflow.serving.PredictionService`` and ``ModelService``.

Thin adapters over ``ModelServerCore``: a ``ServingError`` becomes the call's status code
and message, exactly as TensorFlow Serving would set them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from service.model_server.core import ModelServerCore
from service.model_server.status import ServingError

T = TypeVar("T")
# The names TensorFlow Serving reports in the health service, plus the full service names.
HEALTH_SERVICES = (
    "",
    "ModelService",
    "PredictionService",
    "tensorflow.serving.ModelService",
    "tensorflow.serving.PredictionService",
)


async def _answer(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except ServingError as exc:
        await context.abort(exc.code, exc.message)
        raise  # abort() raises; this line only satisfies the type checker


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ModelServerCore) -> None:
        self._core = core

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        return await _answer(context, lambda: self._core.predict(request, "GRPC"))

    async def GetModelMetadata(
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return await _answer(context, lambda: self._core.get_model_metadata(request, "GRPC"))

    async def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        return await _answer(context, lambda: self._core.classify(request, "GRPC"))

    async def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        return await _answer(context, lambda: self._core.regress(request, "GRPC"))

    async def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        return await _answer(context, lambda: self._core.multi_inference(request, "GRPC"))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ModelServerCore) -> None:
        self._core = core

    async def GetModelStatus(
        self,
        request: get_model_status_pb2.GetModelStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_status_pb2.GetModelStatusResponse:
        async def status() -> get_model_status_pb2.GetModelStatusResponse:
            return self._core.get_model_status(request)

        return await _answer(context, status)

    async def HandleReloadConfigRequest(
        self,
        request: model_management_pb2.ReloadConfigRequest,
        context: grpc.aio.ServicerContext,
    ) -> model_management_pb2.ReloadConfigResponse:
        return await _answer(context, lambda: self._core.reload_config(request))


def add_services(
    server: grpc.aio.Server, core: ModelServerCore, with_health: bool
) -> health.aio.HealthServicer | None:
    """Register the services on ``server``; return the health servicer, if any."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(core), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)
    if not with_health:
        return None
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return health_servicer


async def set_health(servicer: health.aio.HealthServicer | None, serving: bool) -> None:
    if servicer is None:
        return
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in HEALTH_SERVICES:
        await servicer.set(name, status)
