"""The FastAPI application: ``create_app(settings)``.

The lifespan opens the two long-lived clients every request shares, the job store and the
model server's gRPC channel, and closes them on shutdown. Meanwhile it sweeps the uploads
folder of partial uploads whose writer is gone, at start-up and every few seconds. The web
page's static files are served at ``/ui/``. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool

from service import __version__
from service.api.deps import require_token
from service.api.handlers import install_error_handlers
from service.api.metrics import ApiMetrics, MetricsMiddleware
from service.api.routes import backbones, docs, finetune, health, models, predict, ui
from service.api.schemas import (
    ErrorResponse,
    FinetuneFromFolder,
    JobStateEvent,
    PredictRequest,
    ProgressEvent,
)
from service.api.upload_folder import SWEEP_SECONDS, sweep_partials
from service.config import Settings, get_settings
from service.contract.repository import ModelRepository
from service.contract.train_config import TrainConfig
from service.jobs.store import JobStore
from service.model_client.client import PredictClient

log = logging.getLogger(__name__)

# Bodies the routes read themselves (streamed), described through openapi_extra, the error
# body (which FastAPI's automatic 422s do not use), and the data of two kinds of job event.
_EXTRA_SCHEMAS = (
    TrainConfig,
    FinetuneFromFolder,
    PredictRequest,
    ErrorResponse,
    JobStateEvent,
    ProgressEvent,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API, configured by ``settings`` (default: the environment's ``FTSERVE_*``)."""
    settings = settings or get_settings()
    metrics = ApiMetrics()
    app = FastAPI(
        title="ftserve",
        version=__version__,
        summary="Fine-tune a pretrained Keras model on your images; serve it over gRPC.",
        lifespan=_lifespan,
        # Served by routes/docs.py instead, which can ask for the token.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(health.router)
    app.include_router(docs.router)
    app.include_router(ui.router)
    for router in (finetune.router, predict.router, models.router, backbones.router):
        app.include_router(router, dependencies=[Depends(require_token)])
    ui.mount_ui(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        uploads = settings.uploads_dir()
        uploads.mkdir(parents=True, exist_ok=True)
        await _sweep(uploads)
        store = JobStore.from_settings(settings)
        stack.callback(store.close)
        await run_in_threadpool(store.create_schema)
        client = PredictClient(settings.model_server_address(), settings.predict_timeout_seconds)
        stack.push_async_callback(client.close)
        app.state.job_store = store
        app.state.predict_client = client
        app.state.repository = ModelRepository(settings.model_repo)
        background = await stack.enter_async_context(anyio.create_task_group())
        background.start_soon(_sweep_every, uploads, SWEEP_SECONDS)
        stack.callback(background.cancel_scope.cancel)  # first thing at shutdown
        yield


async def _sweep_every(uploads: Path, seconds: float) -> None:
    while True:
        await anyio.sleep(seconds)
        await _sweep(uploads)


async def _sweep(uploads: Path) -> None:
    """Remove partial uploads whose writer is gone; a failure is logged, never raised."""
    try:
        removed = await run_in_threadpool(sweep_partials, uploads)
    except OSError:
        log.exception("could not sweep %s for abandoned uploads", uploads)
        return
    if removed:
        log.info("removed %d partial uploads whose request or process died", removed)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the streamed bodies' schemas and our 422 body."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    _, definitions = models_json_schema(
        [(model, "validation") for model in _EXTRA_SCHEMAS],
        ref_template="#/components/schemas/{model}",
    )
    schemas.update(definitions.get("$defs", {}))
    _replace_validation_errors(document)
    if not app.state.settings.api_token:
        _drop_security(document)
    app.openapi_schema = document
    return document


def _replace_validation_errors(document: dict[str, Any]) -> None:
    """Describe FastAPI's automatic 422s with the error body the handler really sends."""
    error_ref = {"$ref": f"#/components/schemas/{ErrorResponse.__name__}"}
    for path in document.get("paths", {}).values():
        for operation in path.values():
            response = operation.get("responses", {}).get("422")
            if response is None:
                continue
            content = response.get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                content["schema"] = error_ref
                response["description"] = "Unprocessable Entity: `unprocessable`"
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _drop_security(document: dict[str, Any]) -> None:
    """Without an API token nothing needs one: say so, rather than document a bearer scheme."""
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation.pop("security", None)
            operation.get("responses", {}).pop("401", None)
    document.get("components", {}).pop("securitySchemes", None)
