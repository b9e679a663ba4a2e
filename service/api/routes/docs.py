"""The API's own documentation: the OpenAPI document, Swagger UI and ReDoc.

FastAPI's built-in routes for these take no dependencies; ``create_app`` turns them off and
serves these instead, which ask for the API token when ``docs_require_token`` is set.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from service.api.deps import require_docs_token

OPENAPI_URL = "/openapi.json"

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_docs_token)])


@router.get(OPENAPI_URL)
async def openapi_document(request: Request) -> JSONResponse:
    document: dict[str, Any] = request.app.openapi()
    root_path = _root_path(request)
    servers = document.get("servers", [])
    if root_path and root_path not in {server.get("url") for server in servers}:
        # Behind a proxy that strips a prefix, say where the API really is.
        document = {**document, "servers": [{"url": root_path}, *servers]}
    return JSONResponse(document)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=_root_path(request) + OPENAPI_URL,
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=None,
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=_root_path(request) + OPENAPI_URL, title=f"{request.app.title} - ReDoc"
    )


def _root_path(request: Request) -> str:
    root_path: str = request.scope.get("root_path", "")
    return root_path.rstrip("/")
