"""The docs and the OpenAPI document: open, or behind the token with ``docs_require_token``."""

from __future__ import annotations

import pytest

from service.api.app import create_app
from tests.api.conftest import MakeClient, TestClient, make_settings

TOKEN = "s3cret-token"
DOCS = ["/docs", "/redoc", "/openapi.json"]
MISSING = "Send the API token as 'Authorization: Bearer <token>'"


# What each page says about where the document is.
POINTERS = {"/docs": "url: '/openapi.json'", "/redoc": 'spec-url="/openapi.json"'}


def assert_served(response, path: str) -> None:
    assert response.status_code == 200, response.text
    if path == "/openapi.json":
        assert response.json()["info"]["title"] == "ftserve"
    else:
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert POINTERS[path] in response.text


@pytest.mark.parametrize("path", DOCS)
def test_with_docs_require_token_the_docs_need_the_token(make_client: MakeClient, path: str):
    client = make_client(api_token=TOKEN, docs_require_token=True)

    missing = client.get(path)
    wrong = client.get(path, headers={"Authorization": "Bearer not-it"})

    assert (missing.status_code, missing.json()) == (
        401,
        {"error": {"code": "unauthorized", "message": MISSING}},
    )
    assert missing.headers["www-authenticate"] == "Bearer"
    assert (wrong.status_code, wrong.json()) == (
        401,
        {"error": {"code": "unauthorized", "message": "The API token is not valid"}},
    )
    assert_served(client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}), path)


@pytest.mark.parametrize("path", DOCS)
@pytest.mark.parametrize(
    "settings",
    [
        {"api_token": TOKEN},  # docs_require_token defaults to False
        {"api_token": TOKEN, "docs_require_token": False},
        {"docs_require_token": True},  # no token to require
        {},
    ],
)
def test_otherwise_the_docs_stay_open(make_client: MakeClient, settings: dict, path: str):
    client = make_client(**settings)
    assert_served(client.get(path), path)


def test_the_document_served_is_the_apps_own(client: TestClient):
    assert client.get("/openapi.json").json() == client.app.openapi()  # type: ignore[attr-defined]


def test_behind_a_proxy_prefix_the_docs_point_at_the_prefixed_document(tmp_path):
    app = create_app(make_settings(tmp_path, api_token=TOKEN, docs_require_token=True))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(app, root_path="/ftserve") as client:
        swagger = client.get("/docs", headers=auth)
        redoc = client.get("/redoc", headers=auth)
        document = client.get("/openapi.json", headers=auth).json()
    assert "url: '/ftserve/openapi.json'" in swagger.text
    assert 'spec-url="/ftserve/openapi.json"' in redoc.text
    assert document["servers"] == [{"url": "/ftserve"}]


def test_the_docs_routes_are_not_in_the_document(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/docs", "/redoc", "/openapi.json"} & set(paths)
