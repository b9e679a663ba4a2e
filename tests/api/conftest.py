"""The API with a real job store (a SQLite file per test) and, where needed, a real model server.

No worker runs: submitted jobs stay queued unless a test claims them through the store. The
model server is ``ftserve model-server`` on loopback serving the session's exported model
(``template``, from ``tests/support/trained.py``), one process per test module that asks for it.
"""

from __future__ import annotations

import io
import tarfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

from service.api.app import create_app
from service.config import Settings
from service.jobs.store import JobStore
from tests.support.servers import (
    FTSERVE,
    ServerProcess,
    add_version,
    free_port,
    labelled_flags,
)
from tests.support.trained import Template

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2 behind its TestClient; this project depends on httpx,
    # which the TestClient still supports. Only this import warns, so only it is excused.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

MakeClient = Callable[..., TestClient]


def closed_address() -> str:
    """A loopback address nothing listens on: calls fail at once with UNAVAILABLE."""
    return f"127.0.0.1:{free_port()}"


def make_settings(root: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_root": root / "data",
        "work_dir": root / "jobs",
        "model_repo": root / "models",
        "weights_dir": root / "weights",
        "model_server": closed_address(),
        "predict_timeout_seconds": 5.0,
        "max_upload_bytes": 1024 * 1024,
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    """``make_client(**settings)`` → a TestClient whose app has been started (lifespan run)."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        settings = make_settings(tmp_path, **overrides)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()


def store_of(client: TestClient) -> JobStore:
    app = client.app
    assert isinstance(app, FastAPI)
    store: JobStore = app.state.job_store
    return store


def settings_of(client: TestClient) -> Settings:
    app = client.app
    assert isinstance(app, FastAPI)
    settings: Settings = app.state.settings
    return settings


@pytest.fixture
def store(client: TestClient) -> JobStore:
    return store_of(client)


def error_of(response) -> tuple[int, str]:
    """(status, error code) of an error response, checking the error body's shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    return response.status_code, body["error"]["code"]


# -- datasets --------------------------------------------------------------------------------


def png(color: int = 0) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (color, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def dataset_zip() -> bytes:
    """Two classes of two tiny images each."""
    return zip_bytes(
        {f"{cls}/{i}.png": png(40 * i + (100 if cls == "b" else 0)) for cls in "ab" for i in (1, 2)}
    )


def tar_with_symlink() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = png()
        info = tarfile.TarInfo("a/1.png")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a/2.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    return buffer.getvalue()


def leftovers(settings: Settings) -> list[str]:
    """Files in the uploads folder (none may be left by a failed request)."""
    uploads = settings.uploads_dir()
    return sorted(p.name for p in uploads.iterdir()) if uploads.is_dir() else []


# -- a model server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_server(
    tmp_path_factory: pytest.TempPathFactory,
    template: Template,
) -> Iterator[tuple[ServerProcess, Path]]:
    """``ftserve model-server`` serving version 1 of ``shapes``, labelled ``stable``."""
    root = tmp_path_factory.mktemp("api-model-server")
    repo = root / "models"
    assert add_version(repo, template.version_dir, label="stable") == 1
    process = ServerProcess(FTSERVE, labelled_flags(repo), root / "server.log")
    try:
        process.wait_for_version(1)
        yield process, repo
    finally:
        process.stop()


@pytest.fixture
def served_client(make_client: MakeClient, model_server) -> TestClient:
    """The API talking to the module's model server and reading its repository."""
    process, repo = model_server
    return make_client(model_server=f"127.0.0.1:{process.port}", model_repo=repo)


# -- a real HTTP server, for streams ---------------------------------------------------------


class LiveServer:
    """The app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
