"""The web page: the static files of ``service/api/ui/`` at ``/ui/``, and the ways there.

The files need no token (they hold nothing secret); the API calls the page makes send it.
Starlette's ``StaticFiles`` serves them and refuses any path that resolves outside the
folder, ``..`` and encoded variants alike, and symbolic links that lead out of it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

UI_PATH = "/ui"
UI_DIR = Path(__file__).resolve().parents[1] / "ui"

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route(UI_PATH, methods=["GET", "HEAD"])
async def to_the_page(request: Request) -> RedirectResponse:
    """``/`` and ``/ui`` lead to the page (relative links in it need the trailing slash)."""
    return RedirectResponse(f"{root_path(request)}{UI_PATH}/")


def mount_ui(app: FastAPI) -> None:
    """Serve the page's folder under ``/ui/``, ``index.html`` for the folder itself."""
    # check_dir=False: an install without the page still serves the API (/ui/ answers 404).
    files = StaticFiles(directory=UI_DIR, html=True, check_dir=False)
    app.mount(UI_PATH, files, name="ui")


def root_path(request: Request) -> str:
    """The prefix a proxy in front of the API strips (``root_path``), without a final ``/``."""
    prefix: str = request.scope.get("root_path", "")
    return prefix.rstrip("/")
