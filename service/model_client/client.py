"""The API tier's gRPC client to the model server (TensorFlow Serving or ``ftserve model-server``).

It speaks TensorFlow Serving's protocol with the lean, wire-compatible messages generated from
``protos/service/model_client/`` and names the method paths itself, so this module never imports
TensorFlow. Every call carries a deadline; only UNAVAILABLE is retried, by gRPC's own retry
policy (the channel's service config), within that deadline; gRPC failures become
``service.errors`` classes in ``map_grpc_errors`` and nowhere else.

Load spread: the channel balances calls ``round_robin`` over every address its target resolves
to, so a target naming several model servers (``dns:///tf-serving-headless:8500`` for a
headless Kubernetes Service, or ``ipv4:10.0.0.1:8500,10.0.0.2:8500``) keeps them all busy.
gRPC resolves a name again when a connection ends, so model servers that close connections
after a maximum age (TensorFlow Serving's ``--grpc_channel_arguments`` with
``grpc.max_connection_age_ms``) are how new replicas are found. Keep-alive pings notice a
replica that vanished without closing its connections.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from service.contract.signatures import BYTES_INPUT, SERVING_DEFAULT
from service.errors import (
    BadRequestError,
    FtserveError,
    ImageTooLargeError,
    ModelNotFoundError,
    ModelServerTimeoutError,
    ModelServerUnavailableError,
    NotAnImageError,
    PayloadTooLargeError,
    TooManyInstancesError,
)
from service.model_client import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)
from service.model_client.codec import decode_tensor, fill_strings
from service.model_client.targets import server_addresses
from service.model_client.tensor_pb2 import DataType, TensorProto, TensorShapeProto

if TYPE_CHECKING:
    import numpy as np

PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_MODEL_STATUS = "/tensorflow.serving.ModelService/GetModelStatus"

SIGNATURE_DEF = "signature_def"
_SIGNATURE_DEF_MAP = "tensorflow.serving.SignatureDefMap"
_PROBE_MODEL = "__ftserve_probe__"  # check() asks for this model; NOT_FOUND means reachable
# Calls take turns over every address the target resolves to (gRPC's default, pick_first,
# would send everything to the first one). Up to two retries of an UNAVAILABLE call (a model
# server restarting, a pod going away), after a random pause of up to 50 ms, then up to
# 200 ms; gRPC keeps them inside the deadline.
_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [
                    {"service": "tensorflow.serving.PredictionService"},
                    {"service": "tensorflow.serving.ModelService"},
                ],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 4,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
# Reconnect to a restarted model server within seconds, not gRPC's default two minutes.
_MAX_RECONNECT_BACKOFF_MS = 5000
# A connection silent for 10 s while calls wait on it gets a ping, and is dropped when 5 s
# pass without the answer: a replica gone without closing its connections (a lost node)
# then costs the calls of 15 s, not TCP's retransmission timeout of many minutes. No pings
# without calls in flight: TensorFlow Serving's gRPC server would count those as abuse
# (too_many_pings) and close the connection.
_KEEPALIVE_TIME_MS = 10_000
_KEEPALIVE_TIMEOUT_MS = 5_000
# After a connection ends the name is resolved again at once, and at most every 5 s (gRPC's
# default is 30 s), so replicas that appeared meanwhile are found within seconds.
_MIN_RESOLUTION_INTERVAL_MS = 5_000
_IMAGE_ERRORS = ("image file format", "invalid jpeg", "invalid png", "decode", "not an image")

Codes = grpc.StatusCode


@dataclass(frozen=True)
class PredictResult:
    """What the model server answered: the model and version that ran, and its outputs."""

    model: str
    version: int
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class PredictTensors:
    """What the model server answered, its output tensors as they came off the wire."""

    model: str
    version: int
    outputs: Mapping[str, TensorProto]


@dataclass(frozen=True)
class VersionStatus:
    """One version of a model as the model server reports it (state e.g. ``"AVAILABLE"``)."""

    version: int
    state: str
    error_code: int
    error_message: str


@contextmanager
def map_grpc_errors() -> Iterator[None]:
    """Turn a failed gRPC call into the ``service.errors`` class a user should see.

    The one place that reads gRPC status codes. Messages from the server are passed on only
    where they describe the request (first line: TensorFlow appends graph node names).
    """
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details() or ""
        summary = details.splitlines()[0] if details else code.name
        lowered = details.lower()
        unknown_label = code == Codes.INVALID_ARGUMENT and "servable version label" in lowered
        if code == Codes.NOT_FOUND or unknown_label:
            raise ModelNotFoundError(summary) from exc
        if code == Codes.INVALID_ARGUMENT and any(word in lowered for word in _IMAGE_ERRORS):
            raise NotAnImageError("An instance is not a JPEG, PNG, GIF, BMP or WebP image") from exc
        if code == Codes.INVALID_ARGUMENT and "pixels), more than the limit" in lowered:
            raise ImageTooLargeError(summary) from exc  # the model server's bomb guard
        if code == Codes.INVALID_ARGUMENT and "maximum input batch size" in lowered:
            raise TooManyInstancesError(summary) from exc
        if code in (Codes.INVALID_ARGUMENT, Codes.FAILED_PRECONDITION):
            raise BadRequestError(summary) from exc
        if code == Codes.RESOURCE_EXHAUSTED and "larger than max" in lowered:
            raise PayloadTooLargeError(
                "The request or its answer exceeds the model server's message size limit;"
                " send fewer or smaller images"
            ) from exc
        if code in (Codes.UNAVAILABLE, Codes.RESOURCE_EXHAUSTED):
            raise ModelServerUnavailableError(
                "The model server is unavailable or the model is still loading; retry shortly"
            ) from exc
        if code == Codes.DEADLINE_EXCEEDED:
            raise ModelServerTimeoutError("The model server did not answer in time") from exc
        raise FtserveError("The model server failed to answer") from exc


class PredictClient:
    """One long-lived grpc.aio channel to the model server; every call has a deadline.

    Create it inside the running event loop (the FastAPI lifespan) and ``close()`` it there.
    """

    def __init__(
        self, address: str, timeout: float, *, max_message_bytes: int = 64 * 1024**2
    ) -> None:
        """Open the channel (connecting lazily).

        Args:
            address: the model server's gRPC target: ``host:port``, or any gRPC target
                naming several, e.g. ``dns:///tf-serving-headless:8500`` or
                ``ipv4:127.0.0.1:8500,127.0.0.1:8510``; calls take turns over them.
            timeout: default deadline of each call, in seconds, retries included.
            max_message_bytes: largest request sent and answer accepted.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.address = address
        self.timeout = timeout
        self._max_message_bytes = max_message_bytes
        # A client per model server the target names, for asking each (``each_server``).
        self._servers: dict[str, PredictClient] = {}
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS),
                ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
                ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
                ("grpc.dns_min_time_between_resolutions_ms", _MIN_RESOLUTION_INTERVAL_MS),
                ("grpc.enable_retries", 1),
                ("grpc.service_config", _SERVICE_CONFIG),
            ],
        )
        self._predict = self._method(
            PREDICT, predict_pb2.PredictRequest, predict_pb2.PredictResponse
        )
        self._metadata = self._method(
            GET_MODEL_METADATA,
            get_model_metadata_pb2.GetModelMetadataRequest,
            get_model_metadata_pb2.GetModelMetadataResponse,
        )
        self._status = self._method(
            GET_MODEL_STATUS,
            get_model_status_pb2.GetModelStatusRequest,
            get_model_status_pb2.GetModelStatusResponse,
        )

    async def predict_images(
        self,
        model: str,
        images: Sequence[bytes],
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = SERVING_DEFAULT,
        timeout: float | None = None,
    ) -> PredictResult:
        """Run ``signature`` of ``model`` on encoded images (its ``image_bytes`` input).

        ``version`` wins over ``label``; neither means the latest available version.
        """
        answer = await self.predict_tensors(
            model, images, version=version, label=label, signature=signature, timeout=timeout
        )
        return PredictResult(answer.model, answer.version, _decode_outputs(answer.outputs))

    async def predict_tensors(
        self,
        model: str,
        images: Sequence[bytes],
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = SERVING_DEFAULT,
        timeout: float | None = None,
    ) -> PredictTensors:
        """``predict_images`` without decoding: the output tensors as the server sent them.

        For callers that read a few values of a few outputs (``POST /predict``).
        """
        request = predict_pb2.PredictRequest(
            model_spec=_model_spec(model, version, label, signature)
        )
        # Filled in place: a CopyFrom of a ready tensor would copy every image once more.
        fill_strings(request.inputs[BYTES_INPUT], images)
        response: predict_pb2.PredictResponse = await self._call(self._predict, request, timeout)
        return PredictTensors(
            model=response.model_spec.name or model,
            version=int(response.model_spec.version.value),
            outputs=response.outputs,
        )

    async def model_status(
        self, model: str, version: int | None = None, timeout: float | None = None
    ) -> list[VersionStatus]:
        """The versions of ``model`` the server knows (or just ``version``), oldest first."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=_model_spec(model, version))
        response: get_model_status_pb2.GetModelStatusResponse = await self._call(
            self._status, request, timeout
        )
        return [_version_status(status) for status in response.model_version_status]

    async def model_metadata(
        self, model: str, version: int | None = None, timeout: float | None = None
    ) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
        """The callable signatures of ``model`` with their inputs and outputs.

        Returns ``{signature: {"inputs": {alias: info}, "outputs": {alias: info}}}``, each info
        ``{"dtype": "DT_STRING", "shape": [-1]}`` (-1: any size; shape None: unknown rank).
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=_model_spec(model, version), metadata_field=[SIGNATURE_DEF]
        )
        response: get_model_metadata_pb2.GetModelMetadataResponse = await self._call(
            self._metadata, request, timeout
        )
        return {
            name: {
                "inputs": {alias: _tensor_info(i) for alias, i in sorted(sig.inputs.items())},
                "outputs": {alias: _tensor_info(o) for alias, o in sorted(sig.outputs.items())},
            }
            for name, sig in sorted(_signature_defs(response).items())
        }

    async def label_version(self, model: str, label: str, timeout: float | None = None) -> int:
        """The version ``label`` of ``model`` resolves to on the model server now.

        Raises:
            ModelNotFoundError: the server knows no such model or label (yet).
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=_model_spec(model, label=label), metadata_field=[SIGNATURE_DEF]
        )
        response: get_model_metadata_pb2.GetModelMetadataResponse = await self._call(
            self._metadata, request, timeout
        )
        return int(response.model_spec.version.value)

    async def check(self, timeout: float = 2.0) -> bool:
        """Whether the model server answers at all (any answer, even NOT_FOUND, counts)."""
        try:
            await self.model_status(_PROBE_MODEL, timeout=timeout)
        except (ModelServerUnavailableError, ModelServerTimeoutError):
            return False
        except FtserveError:
            pass  # NOT_FOUND and the like: it answered
        return True

    async def each_server(self) -> list[PredictClient]:
        """A client for each model server the target names now (just this one for one).

        Calls through this client take turns over the servers; a label move waits until
        every one of them has applied it, by asking each through these. The name is
        resolved again on every call, so replicas that came or went are seen.
        """
        addresses = await asyncio.to_thread(server_addresses, self.address)
        if len(addresses) <= 1:
            return [self]
        for gone in set(self._servers) - set(addresses):
            await self._servers.pop(gone).close()
        for address in addresses:
            if address not in self._servers:
                self._servers[address] = PredictClient(
                    address, self.timeout, max_message_bytes=self._max_message_bytes
                )
        return [self._servers[address] for address in addresses]

    async def close(self) -> None:
        """Close the channel (and those to each server); calls in flight are cancelled."""
        for server in self._servers.values():
            await server.close()
        self._servers.clear()
        await self._channel.close()

    def _method(self, path: str, request_type: type[Message], response_type: type[Message]) -> Any:
        return self._channel.unary_unary(
            path,
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )

    async def _call(self, method: Any, request: Message, timeout: float | None) -> Any:
        """``method(request)`` within one deadline (retries included), errors mapped."""
        with map_grpc_errors():
            return await method(request, timeout=self.timeout if timeout is None else timeout)


def _model_spec(
    model: str, version: int | None = None, label: str | None = None, signature: str = ""
) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=model, signature_name=signature)
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label
    return spec


def _decode_outputs(outputs: Mapping[str, TensorProto]) -> dict[str, np.ndarray]:
    try:
        return {alias: decode_tensor(tensor) for alias, tensor in outputs.items()}
    except ValueError as exc:
        raise FtserveError("The model server answered with a malformed tensor") from exc


def _version_status(status: get_model_status_pb2.ModelVersionStatus) -> VersionStatus:
    return VersionStatus(
        version=int(status.version),
        state=_enum_name(get_model_status_pb2.ModelVersionStatus.State, status.state),
        error_code=int(status.status.error_code),
        error_message=status.status.error_message,
    )


def _signature_defs(
    response: get_model_metadata_pb2.GetModelMetadataResponse,
) -> dict[str, get_model_metadata_pb2.SignatureDef]:
    # The Any names TensorFlow Serving's message; its bytes parse as the lean copy.
    packed = response.metadata.get(SIGNATURE_DEF)
    if packed is None or packed.type_url.rpartition("/")[2] != _SIGNATURE_DEF_MAP:
        raise FtserveError("The model server's metadata has no signatures")
    signatures = get_model_metadata_pb2.SignatureDefMap.FromString(packed.value)
    # "__saved_model_init_op" and the like are SavedModel internals, not callable signatures.
    return {k: v for k, v in signatures.signature_def.items() if not k.startswith("__")}


def _tensor_info(info: get_model_metadata_pb2.TensorInfo) -> dict[str, Any]:
    return {"dtype": _enum_name(DataType, info.dtype), "shape": _shape(info.tensor_shape)}


def _shape(shape: TensorShapeProto) -> list[int] | None:
    return None if shape.unknown_rank else [int(dim.size) for dim in shape.dim]


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:  # a value newer than these protos
        return str(value)
