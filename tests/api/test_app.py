"""The application as a whole: no TensorFlow, one error format, lifespan-owned clients."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.jobs.store import JobStore
from service.model_client.client import PredictClient
from tests.api.conftest import TestClient, error_of, make_settings
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys, tempfile
from pathlib import Path
from service.api.app import create_app
from service.jobs.store import JobStore
from service.model_client.client import PredictClient
from service.api import server  # noqa: F401
from service.config import Settings
root = Path(tempfile.mkdtemp())
create_app(Settings(data_root=root / "data", model_repo=root / "models"))
heavy = ("tensorflow", "keras", "tensorflow_serving", "tf2onnx", "onnx")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


def test_creating_the_app_does_not_import_tensorflow():
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


def test_unknown_route_and_method_get_the_error_body(client: TestClient):
    assert error_of(client.get("/nowhere")) == (404, "not_found")
    response = client.put("/finetune/some-id")
    assert error_of(response) == (405, "method_not_allowed")
    assert response.headers["allow"] == "DELETE, GET"


def test_unexpected_errors_are_a_bare_500(tmp_path: Path):
    app = create_app(make_settings(tmp_path))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals: /etc/ftserve/db-password")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "Internal server error"}}


def test_lifespan_opens_and_closes_the_store_and_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    closed: list[str] = []
    close_store, close_client = JobStore.close, PredictClient.close

    def record_store_close(self: JobStore) -> None:
        closed.append("job store")
        close_store(self)

    async def record_client_close(self: PredictClient) -> None:
        closed.append("predict client")
        await close_client(self)

    monkeypatch.setattr(JobStore, "close", record_store_close)
    monkeypatch.setattr(PredictClient, "close", record_client_close)
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        assert client.get("/finetune").status_code == 200  # the schema exists
        assert isinstance(app.state.job_store, JobStore)
        assert isinstance(app.state.predict_client, PredictClient)
        assert closed == []
    assert closed == ["predict client", "job store"]


def test_dependencies_can_be_overridden(tmp_path: Path):
    from service.api.deps import get_job_store

    class EmptyStore:
        def list(self, **kwargs):
            return [], 42

    app = create_app(make_settings(tmp_path))
    app.dependency_overrides[get_job_store] = EmptyStore
    with TestClient(app) as client:
        assert client.get("/finetune").json()["total"] == 42


RUNNER = """
import sys
from pathlib import Path
from service.api.server import run
from service.config import Settings
root = Path(sys.argv[1])
settings = Settings(data_root=root / "data", model_repo=root / "models")
sys.exit(run(settings, "127.0.0.1", int(sys.argv[2])))
"""


def test_runner_serves_until_sigterm_then_shuts_down_gracefully(tmp_path: Path):
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(tmp_path), str(port)],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the API did not start"
                time.sleep(0.05)
        assert response.json() == {"status": "ok"}
        assert "server" not in response.headers
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert process.wait(timeout=30) == -signal.SIGTERM, log.read_text()
        assert "Application shutdown complete" in log.read_text()
    finally:
        process.kill()
        process.wait()
