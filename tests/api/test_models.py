"""``/models``: the repository on disk, with each version's status from the model server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.api.conftest import MakeClient, TestClient, closed_address, error_of
from tests.support.servers import MODEL, add_version
from tests.support.trained import Template

ONNX = Path("assets.extra/model.onnx")


def test_list_models_reads_the_repository(served_client: TestClient, model_server):
    _, repo = model_server
    (repo / "empty" / ".staging-abc").mkdir(parents=True)  # no version: not listed
    (repo / "Not-A-Model").mkdir(exist_ok=True)
    response = served_client.get("/models")
    assert response.status_code == 200
    assert response.json() == {
        "models": [{"name": MODEL, "versions": [1], "labels": {"stable": 1}}]
    }


def test_describe_model_has_labels_state_metrics_and_onnx_link(
    served_client: TestClient, model_server
):
    _, repo = model_server
    card = json.loads((repo / MODEL / "1" / "assets.extra" / "model_card.json").read_text())
    response = served_client.get(f"/models/{MODEL}")
    assert response.status_code == 200, response.text
    evaluation = card["evaluation"]
    assert response.json() == {
        "name": MODEL,
        "labels": {"stable": 1},
        "versions": [
            {
                "version": 1,
                "served": True,
                "state": "AVAILABLE",
                "error": None,
                "labels": ["stable"],
                "created_at": card["created"],
                "metrics": {
                    key: evaluation[key]
                    for key in ("accuracy", "top_k_accuracy", "loss", "macro_f1", "count")
                },
                "promotion": None,
                "onnx_url": f"/models/{MODEL}/versions/1/onnx",
                "card_url": f"/models/{MODEL}/versions/1/model_card",
            }
        ],
    }


def test_versions_the_server_does_not_report_say_so(
    make_client: MakeClient, model_server, tmp_path: Path, template: Template
):
    process, _ = model_server
    repo = tmp_path / "other-repo"
    add_version(repo, template.version_dir)
    add_version(repo, template.version_dir)
    add_version(repo, template.version_dir, model="unserved")
    client = make_client(model_server=f"127.0.0.1:{process.port}", model_repo=repo)
    versions = client.get(f"/models/{MODEL}").json()["versions"]
    # The module's server has version 1 of this name loaded; version 2 it does not know.
    assert [(v["state"], v["served"], v["error"]) for v in versions] == [
        ("AVAILABLE", False, None),
        ("NOT_LOADED", False, None),
    ]
    unserved = client.get("/models/unserved").json()["versions"]
    assert [(v["state"], v["served"]) for v in unserved] == [("NOT_LOADED", False)]


def test_model_server_down_is_reported_per_version(
    make_client: MakeClient, tmp_path: Path, template: Template
):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir, label="stable")
    client = make_client(model_server=closed_address(), model_repo=repo)
    response = client.get(f"/models/{MODEL}")
    assert response.status_code == 200
    (version,) = response.json()["versions"]
    assert version["state"] == "UNKNOWN"
    assert "unavailable" in version["error"]
    assert (version["served"], version["labels"]) == (True, ["stable"])
    assert version["metrics"]["accuracy"] >= 0


def test_download_onnx(served_client: TestClient, model_server):
    _, repo = model_server
    response = served_client.get(f"/models/{MODEL}/versions/1/onnx")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == (repo / MODEL / "1" / ONNX).read_bytes()
    assert f'filename="{MODEL}-1.onnx"' in response.headers["content-disposition"]


def test_download_the_model_card(make_client: MakeClient, tmp_path: Path, template: Template):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    response = make_client(model_repo=repo).get(f"/models/{MODEL}/versions/1/model_card")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    card_file = repo / MODEL / "1" / "assets.extra" / "model_card.json"
    assert response.json() == json.loads(card_file.read_text())
    assert f'filename="{MODEL}-1-model_card.json"' in response.headers["content-disposition"]


def test_version_without_model_card_is_404(
    make_client: MakeClient, tmp_path: Path, template: Template
):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    (repo / MODEL / "1" / "assets.extra" / "model_card.json").unlink()
    client = make_client(model_repo=repo)
    response = client.get(f"/models/{MODEL}/versions/1/model_card")
    assert error_of(response) == (404, "model_not_found")
    assert client.get(f"/models/{MODEL}").json()["versions"][0]["card_url"] is None
    missing = client.get(f"/models/{MODEL}/versions/2/model_card")
    assert error_of(missing) == (404, "version_not_found")


def test_version_without_onnx_is_404(make_client: MakeClient, tmp_path: Path, template: Template):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    (repo / MODEL / "1" / ONNX).unlink()
    client = make_client(model_repo=repo)
    assert error_of(client.get(f"/models/{MODEL}/versions/1/onnx")) == (404, "model_not_found")
    assert client.get(f"/models/{MODEL}").json()["versions"][0]["onnx_url"] is None


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/models/unknown", 404, "model_not_found"),
        ("/models/Bad_Name", 400, "invalid_model_name"),
        ("/models/..%2F..%2Fetc", 404, "not_found"),  # decoded "/" matches no route
        ("/models/...", 400, "invalid_model_name"),
        ("/models/.staging-x", 400, "invalid_model_name"),
        (f"/models/{MODEL}/versions/2/onnx", 404, "version_not_found"),
        ("/models/unknown/versions/1/onnx", 404, "model_not_found"),
        ("/models/..%2Fx/versions/1/onnx", 404, "not_found"),
        ("/models/-x/versions/1/onnx", 400, "invalid_model_name"),
        (f"/models/{MODEL}/versions/0/onnx", 422, "unprocessable"),
        (f"/models/{MODEL}/versions/one/onnx", 422, "unprocessable"),
    ],
)
def test_unknown_or_invalid_models_are_refused(
    served_client: TestClient, path: str, status: int, code: str
):
    assert error_of(served_client.get(path)) == (status, code)
