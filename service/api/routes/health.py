"""Liveness, readiness and metrics: open to everyone, for probes and scrapers."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from service.api.deps import JobStoreDep, MetricsDep, PredictClientDep
from service.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS = 2.0


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The job store and the model server can be reached",
    responses={503: {"model": Readiness, "description": "A dependency cannot be reached."}},
)
async def readyz(store: JobStoreDep, client: PredictClientDep) -> JSONResponse:
    checks = {
        "job_store": await _check_store(store),
        "model_server": "ok" if await client.check(READY_TIMEOUT_SECONDS) else "unreachable",
    }
    ready = all(value == "ok" for value in checks.values())
    body = Readiness(status="ready" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def _check_store(store: JobStoreDep) -> str:
    try:
        await run_in_threadpool(store.ping)
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(store: JobStoreDep, api_metrics: MetricsDep) -> Response:
    api_metrics.refresh_jobs(store)
    return Response(api_metrics.render(), media_type=CONTENT_TYPE_LATEST)
