"""Only UNAVAILABLE is retried (gRPC's retry policy), at most twice, inside the deadline.

A scripted in-process gRPC server answers TensorFlow Serving's Predict path with the
official messages: first the given failures, then a real answer.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from service import errors
from service.model_client import PredictClient, PredictResult
from service.model_client.client import PREDICT

Code = grpc.StatusCode
SERVICE, METHOD = PREDICT.strip("/").split("/")


class ScriptedPredict:
    """Fails with ``failures`` in order, then answers; remembers every request."""

    def __init__(self, failures: list[grpc.StatusCode], delay: float = 0.0) -> None:
        self.failures = list(failures)
        self.delay = delay
        self.requests: list[predict_pb2.PredictRequest] = []

    async def predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        if self.failures:
            await context.abort(self.failures.pop(0), "scripted failure")
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.model_spec.version.value = 4
        response.outputs["echo"].CopyFrom(request.inputs["image_bytes"])
        response.outputs["score"].CopyFrom(tf.make_tensor_proto(np.float32([0.5])))
        return response


def predict_through(script: ScriptedPredict, timeout: float = 10) -> PredictResult:
    async def main() -> PredictResult:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            script.predict,
            request_deserializer=predict_pb2.PredictRequest.FromString,
            response_serializer=predict_pb2.PredictResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client = PredictClient(f"127.0.0.1:{port}", timeout)
        try:
            return await client.predict_images("m", [b"img"], version=4)
        finally:
            await client.close()
            await server.stop(None)

    return asyncio.run(main())


def test_the_request_reaches_tensorflow_servings_predict_path():
    script = ScriptedPredict([])
    result = predict_through(script)
    assert len(script.requests) == 1
    spec = script.requests[0].model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("m", 4, "serving_default")
    assert (result.model, result.version) == ("m", 4)
    assert result.outputs["echo"].tolist() == [b"img"]
    assert result.outputs["score"].tolist() == [0.5]


@pytest.mark.parametrize("failures", [1, 2])
def test_unavailable_is_retried(failures: int):
    script = ScriptedPredict([Code.UNAVAILABLE] * failures)
    assert predict_through(script).version == 4
    assert len(script.requests) == failures + 1


def test_unavailable_three_times_gives_up():
    script = ScriptedPredict([Code.UNAVAILABLE] * 3)
    with pytest.raises(errors.ModelServerUnavailableError):
        predict_through(script)
    assert len(script.requests) == 3


def test_retries_stay_inside_the_calls_deadline():
    # Each attempt takes 0.3 s on the server: a 0.5 s deadline leaves room for two at most,
    # and the call fails with the deadline rather than waiting for a third.
    script = ScriptedPredict([Code.UNAVAILABLE] * 3, delay=0.3)
    with pytest.raises(errors.ModelServerTimeoutError):
        predict_through(script, timeout=0.5)
    assert 1 <= len(script.requests) <= 2


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (Code.NOT_FOUND, errors.ModelNotFoundError),
        (Code.INTERNAL, errors.FtserveError),
        (Code.RESOURCE_EXHAUSTED, errors.ModelServerUnavailableError),
    ],
)
def test_other_failures_are_not_retried(code: grpc.StatusCode, error: type[Exception]):
    script = ScriptedPredict([code])
    with pytest.raises(error):
        predict_through(script)
    assert len(script.requests) == 1
