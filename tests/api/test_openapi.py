"""The OpenAPI document: complete, and true to what the API does (schemathesis, in-process)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans

from service.api.app import create_app
from service.api.routes import backbones, finetune, health, models, predict
from service.config import Settings
from tests.api.conftest import MakeClient, TestClient, make_settings

ERROR_REF = "#/components/schemas/ErrorResponse"
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
# Every error status each route can answer (401 comes with every protected route).
ERRORS = {
    ("POST", "/finetune"): {400, 401, 409, 413, 415, 422, 429},
    ("GET", "/finetune"): {401, 422},
    ("GET", "/finetune/{job_id}"): {401, 404},
    ("DELETE", "/finetune/{job_id}"): {401, 404, 409},
    ("GET", "/finetune/{job_id}/events"): {401, 404},
    ("POST", "/predict"): {400, 401, 404, 413, 415, 422, 503, 504},
    ("GET", "/models"): {401},
    ("GET", "/models/{name}"): {400, 401, 404},
    ("GET", "/models/{name}/versions/{version}/onnx"): {400, 401, 404, 422},
    ("GET", "/models/{name}/versions/{version}/model_card"): {400, 401, 404, 422},
    ("GET", "/models/{name}/versions/{version}/misclassified"): {400, 401, 404, 422},
    ("GET", "/models/{name}/versions/{version}/misclassified/{file}"): {400, 401, 404, 422},
    ("PUT", "/models/{name}/labels/{label}"): {400, 401, 404, 409, 422, 504},
    ("DELETE", "/models/{name}/labels/{label}"): {400, 401, 404, 409},
    ("POST", "/models/{name}/rollback"): {400, 401, 404, 409, 504},
    ("DELETE", "/models/{name}/versions/{version}"): {400, 401, 404, 409, 504},
    ("DELETE", "/models/{name}"): {400, 401, 404, 409, 504},
    ("GET", "/backbones"): {401},
    ("GET", "/healthz"): set(),
    ("GET", "/readyz"): {503},
    ("GET", "/metrics"): set(),
}


def operations(document: dict) -> Iterator[tuple[str, str, dict]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_every_route_is_documented_with_its_errors(make_client: MakeClient):
    document = make_client(api_token=TOKEN).get("/openapi.json").json()
    routes = {
        (method, route.path)
        for router in (
            finetune.router,
            predict.router,
            models.router,
            health.router,
            backbones.router,
        )
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    documented = {(method, path) for method, path, _ in operations(document)}
    assert routes == documented == set(ERRORS)
    for method, path, operation in operations(document):
        statuses = {int(status) for status in operation["responses"] if int(status) >= 400}
        assert ERRORS[(method, path)] <= statuses, (method, path)
        for status in statuses - {503 if path == "/readyz" else 0}:
            schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": ERROR_REF}, (method, path, status)
        assert ("security" not in operation) == ((method, path) in PUBLIC), (method, path)


def test_streamed_bodies_are_described(client: TestClient):
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    for path, media_types in {
        "/finetune": {"multipart/form-data", "application/json"},
        "/predict": {"multipart/form-data", "application/json"},
    }.items():
        content = document["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == media_types
        ref = content["application/json"]["schema"]["$ref"]
        assert ref.removeprefix("#/components/schemas/") in schemas
    assert {"data_uri", "model_name", "epochs"} <= set(schemas["FinetuneFromFolder"]["properties"])
    assert "HTTPValidationError" not in schemas


def test_events_route_says_it_streams(client: TestClient):
    document = client.get("/openapi.json").json()
    ok = document["paths"]["/finetune/{job_id}/events"]["get"]["responses"]["200"]
    assert "text/event-stream" in ok["content"]


# -- schemathesis ----------------------------------------------------------------------------


TOKEN = "fuzz-token"
# schemathesis binds its operations to the app when the tests are collected; the app's
# settings are completed by served_app before its first request starts it.
FUZZED_APP = create_app(Settings(api_token=TOKEN))
FUZZ_CONFIG = {
    # Through the document's security scheme, so that schemathesis also checks what the
    # API does without the token or with a wrong one.
    "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
    "operations": [
        {
            # Every check but one runs everywhere. "Schema-valid data is accepted" cannot hold
            # for these two: no schema says that a dataset must be a real zip or tar, or an
            # instance a real image, so generated bytes are rightly refused with 400.
            "include-path": ["/finetune", "/predict"],
            "include-method": "POST",
            "checks": {"positive_data_acceptance": {"enabled": False}},
        }
    ],
}
schema = schemathesis.openapi.from_dict(
    FUZZED_APP.openapi(), config=SchemathesisConfig.from_dict(FUZZ_CONFIG)
)
schema.app = FUZZED_APP


@pytest.fixture(scope="module")
def served_app(tmp_path_factory: pytest.TempPathFactory, model_server) -> Iterator[FastAPI]:
    """The fuzzed app, wired to a real job store and the module's real model server."""
    process, repo = model_server
    root = tmp_path_factory.mktemp("schemathesis")
    FUZZED_APP.state.settings = make_settings(
        root, model_server=f"127.0.0.1:{process.port}", model_repo=repo, api_token=TOKEN
    )
    yield FUZZED_APP
    shutdown_lifespans()  # schemathesis starts the app on its first call and keeps it running


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_answers_every_generated_request_without_a_server_error(case, served_app: FastAPI):
    case.call_and_validate()
