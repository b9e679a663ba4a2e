"""The docs and the OpenAPI document: open, or behind the token with ``docs_require_token``."""

from __future__ import annotations

import re

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


# -- the pages' assets, served from the vendored copies --------------------------------------

ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def asset_urls(html: str) -> list[str]:
    """Every URL the page's <script src> and <link href> name."""
    return re.findall(r'<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]*)"', html)


@pytest.mark.parametrize(("path", "count"), [("/docs", 3), ("/redoc", 2)])
def test_the_pages_load_nothing_from_other_hosts(client: TestClient, path: str, count: int):
    html = client.get(path).text
    urls = asset_urls(html)
    assert len(urls) == count, urls  # the script, the style sheet (Swagger UI), the icon
    for url in urls:
        assert url.startswith("/ui/vendor/") or url == "data:,", url
    assert re.search(r"https?:|//[a-z]", html) is None


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_every_asset_a_page_names_is_served_without_the_token(make_client: MakeClient, path):
    client = make_client(api_token=TOKEN, docs_require_token=True)
    page = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    served = []
    for url in asset_urls(page.text):
        if url.startswith("data:"):
            continue
        asset = client.get(url)  # no token: the vendored files hold nothing secret
        expected = ASSET_TYPES[url[url.rindex(".") :]]
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].split(";")[0] == expected, url
        assert len(asset.content) > 500, url
        served.append(url.rsplit("/", 1)[1])
    assert served == (
        ["swagger-ui.css", "favicon-32x32.png", "swagger-ui-bundle.js"]
        if path == "/docs"
        else ["redoc.standalone.js"]
    )


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_pages_policy_keeps_the_browser_on_this_origin(client: TestClient, path: str):
    policy = client.get(path).headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    # ReDoc's sidebar shows a logo from its CDN: the policy is what keeps the page offline.
    assert directives["img-src"] == "'self' data:"
    assert directives["default-src"] == directives["connect-src"] == "'self'"
    assert "unsafe-eval" not in policy and "http" not in policy


def test_behind_a_proxy_prefix_the_assets_are_prefixed_and_served(tmp_path):
    app = create_app(make_settings(tmp_path))
    with TestClient(app, root_path="/ftserve") as client:
        urls = [
            url
            for path in ("/docs", "/redoc")
            for url in asset_urls(client.get(path).text)
            if not url.startswith("data:")
        ]
        assert urls and all(url.startswith("/ftserve/ui/vendor/") for url in urls), urls
        assert all(client.get(url).status_code == 200 for url in urls)
