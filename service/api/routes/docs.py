"""The API's own documentation: the OpenAPI document, Swagger UI and ReDoc.

FastAPI's built-in routes for these take no dependencies; ``create_app`` turns them off and
serves these instead, which ask for the API token when ``docs_require_token`` is set.

Both pages load their scripts and styles from the copies vendored under ``/ui/vendor/``, so
they work without internet access, and their Content-Security-Policy keeps the browser from
fetching anything from elsewhere (ReDoc's sidebar, for one, shows a logo from its CDN).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from service.api.deps import require_docs_token
from service.api.routes.ui import UI_PATH, root_path

OPENAPI_URL = "/openapi.json"
SWAGGER_UI_ASSETS = f"{UI_PATH}/vendor/swagger-ui-dist"
REDOC_ASSETS = f"{UI_PATH}/vendor/redoc"

# Same origin only. The inline script and style are FastAPI's page templates; ReDoc runs
# its search in a worker it makes from a blob.
DOCS_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
    )
)

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_docs_token)])


@router.get(OPENAPI_URL)
async def openapi_document(request: Request) -> JSONResponse:
    document: dict[str, Any] = request.app.openapi()
    prefix = root_path(request)
    servers = document.get("servers", [])
    if prefix and prefix not in {server.get("url") for server in servers}:
        # Behind a proxy that strips a prefix, say where the API really is.
        document = {**document, "servers": [{"url": prefix}, *servers]}
    return JSONResponse(document)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    prefix = root_path(request)
    assets = prefix + SWAGGER_UI_ASSETS
    page = get_swagger_ui_html(
        openapi_url=prefix + OPENAPI_URL,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png",
        oauth2_redirect_url=None,
        # No badge from the public validator, which would send it this document's URL.
        swagger_ui_parameters={"validatorUrl": None},
    )
    return _with_csp(page)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    prefix = root_path(request)
    page = get_redoc_html(
        openapi_url=prefix + OPENAPI_URL,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{prefix}{REDOC_ASSETS}/redoc.standalone.js",
        redoc_favicon_url="data:,",  # none: ReDoc ships no icon
        with_google_fonts=False,
    )
    return _with_csp(page)


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page
