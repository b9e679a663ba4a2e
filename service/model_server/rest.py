"""TensorFlow Serving's REST API on ``--rest_api_port``, over the same core as gRPC.

``GET /v1/models/{m}[/versions/{v}|/labels/{l}][/metadata]`` and
``POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict|:classify|:regress``; errors are
``{"error": message}`` with the HTTP status TensorFlow Serving maps the gRPC code to.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from service.model_server import rest_codec, rest_examples
from service.model_server.core import SIGNATURE_DEF, ModelServerCore, model_spec
from service.model_server.status import ServingError, failed_precondition, invalid_argument

# TensorFlow Serving parses the path with a regex rather than a router, and so do we.
_MODEL_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<method>classify|regress|predict))?"
)


# What TensorFlow Serving adds to every REST response when CORS support is on.
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}


class _JSONResponse(JSONResponse):
    # Model outputs may be NaN or infinite; TensorFlow Serving writes them as NaN/Infinity,
    # where Starlette's JSONResponse would refuse them and fail the request.
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def create_app(
    core: ModelServerCore, prometheus_path: str | None = None, cors: bool = False
) -> Starlette:
    async def models(request: Request) -> Response:
        try:
            return _JSONResponse(await _dispatch(core, request))
        except ServingError as exc:
            return _JSONResponse({"error": exc.message}, status_code=exc.http_status)

    async def metrics(request: Request) -> Response:
        return Response(core.metrics.exposition(), media_type="text/plain; version=0.0.4")

    routes = [Route("/v1/models/{path:path}", models, methods=["GET", "POST"])]
    if prometheus_path is not None:
        routes.append(Route(prometheus_path, metrics, methods=["GET"]))
    return Starlette(routes=routes, middleware=[Middleware(_CORS)] if cors else [])


class _CORS:
    """``--rest_api_enable_cors_support``: TensorFlow Serving's CORS headers and preflight."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await self._preflight(scope)(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _CORS_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    def _preflight(scope: Scope) -> Response:
        if re.search(r"https?://", Headers(scope=scope).get("origin", "")):
            return Response(headers=_CORS_HEADERS)
        error = failed_precondition("Origin header is missing in CORS preflight")
        return _JSONResponse(
            {"error": error.message}, status_code=error.http_status, headers=_CORS_HEADERS
        )


async def _dispatch(core: ModelServerCore, request: Request) -> dict[str, Any]:
    match = _MODEL_PATH.fullmatch(request.url.path)
    if match is None or (request.method == "POST") != (match["method"] is not None):
        raise invalid_argument(f"Malformed request: {request.method} {request.url.path}")
    version = int(match["version"]) if match["version"] else None
    spec = model_spec(match["name"], version, match["label"])
    if match["method"] == "classify":
        classify_request = rest_examples.classification_request_from_json(
            _json_body(await request.body()), spec
        )
        classified = await core.classify(classify_request, "REST")
        return rest_examples.classification_result_to_json(classified.result)
    if match["method"] == "regress":
        regress_request = rest_examples.regression_request_from_json(
            _json_body(await request.body()), spec
        )
        regressed = await core.regress(regress_request, "REST")
        return rest_examples.regression_result_to_json(regressed.result)
    if match["method"] == "predict":
        return await _predict(core, spec, await request.body())
    if match["metadata"]:
        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=[SIGNATURE_DEF]
        )
        response = await core.get_model_metadata(metadata_request, "REST")
        return rest_codec.model_metadata_to_json(response)
    status_request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
    return rest_codec.model_status_to_json(core.get_model_status(status_request))


def _json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from exc


async def _predict(core: ModelServerCore, spec: Any, raw: bytes) -> dict[str, Any]:
    body = _json_body(raw)
    signature_name = rest_codec.signature_name_from_json(body)
    with core.manager.acquire(spec) as servable:
        signature = servable.signature_defs.get(signature_name)
    if signature is None:
        raise invalid_argument(
            f'Serving signature name: "{signature_name}" not found in signature def'
        )
    version = spec.version.value if spec.HasField("version") else None
    predict_request, row_format = rest_codec.predict_request_from_json(
        body, spec.name, signature, signature_name, version, spec.version_label or None
    )
    response = await core.predict(predict_request, "REST")
    return rest_codec.predict_response_to_json(response, row_format)
