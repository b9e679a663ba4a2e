"""The web page's files at ``/ui/``: served without a token, and nothing outside their folder.

Path traversal is tried over a real socket (``http.client`` sends the path as written; an
HTTP library would tidy the dots away before the server could see them).
"""

from __future__ import annotations

import http.client
import json
import re

import pytest

from service.api.app import create_app
from service.api.routes.ui import UI_DIR
from tests.api.conftest import LiveServer, MakeClient, TestClient, make_settings

TOKEN = "s3cret-token"
VENDOR = UI_DIR / "vendor"


def test_the_page_is_served_at_ui(client: TestClient):
    response = client.get("/ui/")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text == (UI_DIR / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/ui/vendor/swagger-ui-dist/swagger-ui.css", "text/css; charset=utf-8"),
        ("/ui/vendor/swagger-ui-dist/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
        ("/ui/vendor/redoc/redoc.standalone.js", "text/javascript; charset=utf-8"),
        ("/ui/vendor/swagger-ui-dist/favicon-32x32.png", "image/png"),
    ],
)
def test_vendored_files_are_served_with_their_type(client: TestClient, path, content_type):
    response = client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == (UI_DIR / path.removeprefix("/ui/")).read_bytes()


@pytest.mark.parametrize("path", ["/", "/ui"])
def test_the_way_in_leads_to_the_page(client: TestClient, path: str):
    response = client.get(path, follow_redirects=False)

    assert response.status_code == 307
    assert response.headers["location"] == "/ui/"
    assert client.get(path).url.path == "/ui/"


def test_behind_a_proxy_prefix_the_redirect_keeps_the_prefix(tmp_path):
    with TestClient(create_app(make_settings(tmp_path)), root_path="/ftserve") as client:
        response = client.get("/", follow_redirects=False)
    assert response.headers["location"] == "/ftserve/ui/"


def test_an_unknown_file_is_a_json_404(client: TestClient):
    response = client.get("/ui/no-such-file.js")

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not Found"}}


# Paths that would reach service/config.py or service/api/app.py if the folder leaked.
TRAVERSALS = [
    "/ui/../../config.py",
    "/ui/../app.py",
    "/ui/vendor/../../app.py",
    "/ui/%2e%2e/app.py",
    "/ui/%2E%2E/%2E%2E/config.py",
    "/ui/..%2fapp.py",
    "/ui/..%2F..%2Fconfig.py",
    "/ui/%2e%2e%2f%2e%2e%2fconfig.py",
    "/ui/..%5capp.py",
    "/ui//etc/passwd",
    "/ui/%2fetc%2fpasswd",
]


def test_paths_out_of_the_folder_are_refused(client: TestClient):
    with LiveServer(client.app) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            for path in TRAVERSALS:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                assert response.status in (400, 404), (path, response.status)
                assert b"Settings" not in body and b"create_app" not in body, path
                assert b"root:" not in body, path
                if response.status == 404:
                    assert json.loads(body)["error"]["code"] == "not_found", path
        finally:
            connection.close()


def test_with_a_token_the_files_stay_open_and_the_api_does_not(make_client: MakeClient):
    client = make_client(api_token=TOKEN)

    assert client.get("/ui/").status_code == 200
    assert client.get("/ui/vendor/redoc/redoc.standalone.js").status_code == 200
    assert client.get("/").status_code == 200  # through the redirect, still no token
    assert client.get("/finetune").status_code == 401
    assert client.get("/finetune", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_page_is_not_in_the_api_document(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/ui")]


@pytest.mark.parametrize("package", sorted(p.name for p in VENDOR.iterdir() if p.is_dir()))
def test_each_vendored_library_names_its_version_and_carries_its_licence(package: str):
    folder = VENDOR / package
    version = (folder / "VERSION").read_text(encoding="utf-8").strip()
    assert re.fullmatch(rf"{re.escape(package)}@\d+\.\d+\.\d+", version), version
    licences = [p for p in folder.iterdir() if p.name.upper().startswith("LICENSE")]
    assert licences and all(p.stat().st_size > 500 for p in licences), package
