"""Dependencies the routes declare; tests replace them through ``app.dependency_overrides``.

The settings are the ones ``create_app`` was given; the job store and the model server client
are opened once in the lifespan and shared by every request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.metrics import ApiMetrics
from service.config import Settings
from service.contract.lifecycle import Lifecycle
from service.contract.repository import ModelRepository
from service.errors import UnauthorizedError
from service.jobs.store import JobStore
from service.model_client.client import PredictClient


# The dependencies are coroutines although nothing in them awaits: FastAPI runs plain
# functions on its thread pool, which costs every request a thread hop.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_job_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.job_store
    return store


async def get_predict_client(request: Request) -> PredictClient:
    client: PredictClient = request.app.state.predict_client
    return client


async def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


async def get_repository(request: Request) -> ModelRepository:
    repository: ModelRepository = request.app.state.repository
    return repository


async def get_lifecycle(request: Request) -> Lifecycle:
    settings: Settings = request.app.state.settings
    return Lifecycle(
        request.app.state.repository,
        request.app.state.predict_client,
        timeout=settings.label_move_timeout_seconds,
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
PredictClientDep = Annotated[PredictClient, Depends(get_predict_client)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]

_bearer = HTTPBearer(
    auto_error=False,
    description="Needed when the server sets FTSERVE_API_TOKEN: `Authorization: Bearer <token>`.",
)


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Let the request through if no token is configured or it carries the right one.

    Raises:
        UnauthorizedError: the token is missing or wrong.
    """
    expected = settings.api_token
    if not expected:
        return
    if credentials is None:
        raise UnauthorizedError("Send the API token as 'Authorization: Bearer <token>'")
    # Constant time, as bytes: compare_digest refuses non-ASCII str. Header values arrive
    # decoded as latin-1, so encoding them back gives the bytes the client sent.
    sent = credentials.credentials.encode("latin-1")
    if not hmac.compare_digest(sent, expected.encode()):
        raise UnauthorizedError("The API token is not valid")


async def require_docs_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """``require_token`` for the API's documentation, if ``docs_require_token`` asks for it."""
    if settings.docs_require_token:
        await require_token(settings, credentials)
