"""``/models/{name}/versions/{v}/misclassified``: the index the worker wrote, and each thumbnail.

The repository is built on disk here: the API only reads a version's files, so a version
folder with a model card, an index and a few JPEGs is all it needs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.api.conftest import MakeClient, TestClient, error_of

MODEL = "pets"
BASE = f"/models/{MODEL}/versions/1/misclassified"
TOKEN = "secret-token"
# As the worker writes it: ranked, but the API sorts again rather than trust the order.
INDEX = {
    "format": 1,
    "total": 11,
    "thumbnails": 3,
    "skipped": 0,
    "limit_per_class": 8,
    "max_side": 128,
    "items": [
        {"file": "0001.jpg", "true_label": "cat", "predicted_label": "dog", "score": 0.61},
        {"file": "0002.jpg", "true_label": "dog", "predicted_label": "cat", "score": 0.93},
        {"file": "0003.jpg", "true_label": "cat", "predicted_label": "fox", "score": 0.5},
    ],
}


def jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def card(confusion: list[list[int]]) -> dict:
    return {"name": MODEL, "evaluation": {"accuracy": 0.5, "confusion_matrix": confusion}}


def add_version(repo: Path, version: int, index: object = None, files: tuple[str, ...] = ()):
    """A version folder holding a model card and, when given, an index and its JPEGs."""
    extra = repo / MODEL / str(version) / "assets.extra"
    extra.mkdir(parents=True)
    (extra / "model_card.json").write_text(json.dumps(card([[3, 1], [2, 4]])))
    if index is None:
        return extra
    folder = extra / "misclassified"
    folder.mkdir()
    text = index if isinstance(index, str) else json.dumps(index)
    (folder / "index.json").write_text(text)
    for number, name in enumerate(files):
        (folder / name).write_bytes(jpeg((40 * number, 0, 0)))
    return extra


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    add_version(root, 1, INDEX, ("0001.jpg", "0002.jpg", "0003.jpg", "0009.jpg"))
    add_version(root, 2)  # published before thumbnails were kept
    return root


@pytest.fixture
def api(make_client: MakeClient, repo: Path) -> TestClient:
    client = make_client(model_repo=repo, api_token=TOKEN)
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    return client


def test_the_list_names_each_thumbnail_most_confident_first(api: TestClient):
    response = api.get(BASE)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "model": MODEL,
        "version": 1,
        "limit_per_class": 8,
        "total_misclassified": 11,
        "items": [
            {
                "file": "0002.jpg",
                "url": f"{BASE}/0002.jpg",
                "true_label": "dog",
                "predicted_label": "cat",
                "score": 0.93,
            },
            {
                "file": "0001.jpg",
                "url": f"{BASE}/0001.jpg",
                "true_label": "cat",
                "predicted_label": "dog",
                "score": 0.61,
            },
            {
                "file": "0003.jpg",
                "url": f"{BASE}/0003.jpg",
                "true_label": "cat",
                "predicted_label": "fox",
                "score": 0.5,
            },
        ],
    }


def test_each_listed_url_answers_its_jpeg(api: TestClient, repo: Path):
    folder = repo / MODEL / "1" / "assets.extra" / "misclassified"
    for item in api.get(BASE).json()["items"]:
        response = api.get(item["url"])
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert "max-age=" in response.headers["cache-control"]
        assert response.content == (folder / item["file"]).read_bytes()


def test_a_version_without_thumbnails_lists_none(api: TestClient):
    response = api.get(f"/models/{MODEL}/versions/2/misclassified")

    assert response.status_code == 200
    # The count still comes from the model card's confusion matrix: 1 + 2 off the diagonal.
    assert response.json() == {
        "model": MODEL,
        "version": 2,
        "limit_per_class": 8,
        "total_misclassified": 3,
        "items": [],
    }
    assert error_of(api.get(f"/models/{MODEL}/versions/2/misclassified/0001.jpg")) == (
        404,
        "not_found",
    )


@pytest.mark.parametrize(
    "file",
    [
        "0004.jpg",  # not there at all
        "0009.jpg",  # in the folder, not in the index
        "index.json",
        "%2E%2E",  # the client would resolve a bare ".." itself
        "0001.JPG",
        "0001.jpg%00",
        ".%5C0001.jpg",
        "..%5Cmodel_card.json",
        "%2E%2E%5Cmodel_card.json",
    ],
)
def test_a_file_the_index_does_not_name_is_404(api: TestClient, file: str):
    assert error_of(api.get(f"{BASE}/{file}")) == (404, "not_found")


@pytest.mark.parametrize(
    "path",
    [
        f"{BASE}/..%2Fmodel_card.json",
        f"{BASE}/..%2F..%2F..%2F..%2Fmodels.config",
        f"{BASE}/%2Fetc%2Fpasswd",
    ],
)
def test_a_path_in_the_file_name_matches_no_route(api: TestClient, path: str):
    # The decoded "/" splits the name into more path segments: no route has them.
    assert error_of(api.get(path)) == (404, "not_found")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"/models/{MODEL}/versions/3/misclassified", 404, "version_not_found"),
        (f"/models/{MODEL}/versions/3/misclassified/0001.jpg", 404, "version_not_found"),
        ("/models/unknown/versions/1/misclassified", 404, "model_not_found"),
        ("/models/Bad_Name/versions/1/misclassified", 400, "invalid_model_name"),
        ("/models/..%2Fx/versions/1/misclassified", 404, "not_found"),
        (f"/models/{MODEL}/versions/0/misclassified", 422, "unprocessable"),
        (f"/models/{MODEL}/versions/one/misclassified/0001.jpg", 422, "unprocessable"),
    ],
)
def test_unknown_models_and_versions_are_refused(api: TestClient, path: str, status, code):
    assert error_of(api.get(path)) == (status, code)


def test_both_routes_need_the_token(api: TestClient):
    for path in (BASE, f"{BASE}/0001.jpg"):
        assert error_of(api.get(path, headers={"Authorization": "Bearer wrong"})) == (
            401,
            "unauthorized",
        )


@pytest.mark.parametrize(
    "index",
    [
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"total": "many", "limit_per_class": -1, "items": "none"}),
    ],
)
def test_an_unreadable_index_lists_nothing(make_client: MakeClient, tmp_path: Path, index: str):
    repo = tmp_path / "other"
    add_version(repo, 1, index, ("0001.jpg",))
    client = make_client(model_repo=repo)

    body = client.get(BASE).json()

    assert (body["items"], body["total_misclassified"], body["limit_per_class"]) == ([], 3, 8)
    assert error_of(client.get(f"{BASE}/0001.jpg")) == (404, "not_found")


def test_entries_that_are_not_plain_thumbnail_names_are_dropped(
    make_client: MakeClient, tmp_path: Path
):
    good = {"file": "0001.jpg", "true_label": "cat", "predicted_label": "dog", "score": 0.7}
    bad = [
        {**good, "file": "../model_card.json"},
        {**good, "file": "model_card.json"},
        {**good, "file": "0002.jpg", "score": "high"},
        {**good, "file": "0002.jpg", "score": 1.5},
        {**good, "file": "0002.jpg", "true_label": None},
        {**good, "file": "0003.jpg"},  # named, but no such file
        "0002.jpg",
    ]
    repo = tmp_path / "other"
    extra = add_version(repo, 1, {"total": 9, "items": [*bad, good]}, ("0001.jpg", "0002.jpg"))
    client = make_client(model_repo=repo)

    body = client.get(BASE).json()

    assert [item["file"] for item in body["items"]] == ["0001.jpg"]
    assert body["total_misclassified"] == 9
    assert error_of(client.get(f"{BASE}/0002.jpg")) == (404, "not_found")
    assert (
        client.get(f"{BASE}/0001.jpg").content
        == (extra / "misclassified" / "0001.jpg").read_bytes()
    )
