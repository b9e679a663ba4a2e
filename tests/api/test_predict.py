"""``POST /predict`` against a real ``ftserve model-server`` serving an exported model."""

from __future__ import annotations

import base64
import shutil
import socket
from collections.abc import Iterator

import numpy as np
import pytest

from tests.api.conftest import MakeClient, TestClient, closed_address, error_of
from tests.support.servers import MODEL
from tests.support.trained import Template

CLASSES = 3


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def instances(*images: bytes) -> list[dict[str, str]]:
    return [{"b64": b64(image)} for image in images]


def expected_predictions(model_server, images: list[bytes], k: int) -> list[dict]:
    """What the official stubs get from the model server, in the API's shape."""
    process, _ = model_server
    _, answer = process.predict(images)
    predictions = []
    for labels, scores in zip(answer["labels"], answer["label_scores"], strict=True):
        top = [
            {"label": label.decode(), "score": float(score)}
            for label, score in zip(labels[:k], scores[:k], strict=True)
        ]
        predictions.append({**top[0], "top_k": top})
    return predictions


# -- answers ---------------------------------------------------------------------------------


def test_json_instances_get_ranked_labels(served_client: TestClient, model_server, template):
    images = [template.image(0), template.image(1)]
    response = served_client.post(
        "/predict", json={"model": MODEL, "instances": instances(*images)}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "model": MODEL,
        "version": 1,
        "predictions": expected_predictions(model_server, images, CLASSES),
    }


@pytest.mark.parametrize(("top_k", "listed"), [(1, 1), (2, 2), (50, CLASSES)])
def test_top_k_is_capped_by_the_models_labels(
    served_client: TestClient, model_server, template: Template, top_k: int, listed: int
):
    body = {"model": MODEL, "version": 1, "top_k": top_k, "instances": instances(template.image())}
    response = served_client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == expected_predictions(
        model_server, [template.image()], listed
    )


def test_multipart_files_answer_like_json(served_client: TestClient, template: Template):
    images = [template.image(2), template.image(3)]
    files = [("files", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
    multipart = served_client.post("/predict", files=files, data={"model": MODEL, "top_k": "2"})
    body = {"model": MODEL, "top_k": 2, "instances": instances(*images)}
    assert multipart.status_code == 200, multipart.text
    assert multipart.json() == served_client.post("/predict", json=body).json()


def test_url_safe_base64_is_accepted(served_client: TestClient, template: Template):
    image = template.image()
    safe = base64.urlsafe_b64encode(image).decode()
    body = {"model": MODEL, "instances": [{"b64": safe}]}
    assert served_client.post("/predict", json=body).status_code == 200


# -- refused ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"instances": [{"b64": "!!not base64!!"}]}, 400, "invalid_base64"),
        ({"instances": [{"b64": b64(b"hello, not an image")}]}, 400, "not_an_image"),
        ({"model": "unknown"}, 404, "model_not_found"),
        ({"version": 7}, 404, "version_not_found"),
        ({"label": "canary"}, 404, "label_not_found"),
        ({"version": 1, "label": "stable"}, 400, "bad_request"),
        ({"model": "../etc"}, 400, "invalid_model_name"),
        ({"instances": []}, 422, "unprocessable"),
        ({"top_k": 0}, 422, "unprocessable"),
        ({"signature_name": "serving_default"}, 422, "unprocessable"),
        ({"instances": [{"image_bytes": "AAAA"}]}, 422, "unprocessable"),
    ],
)
def test_bad_requests_get_their_error(
    served_client: TestClient, template: Template, body: dict, status: int, code: str
):
    request = {"model": MODEL, "instances": instances(template.image()), **body}
    assert error_of(served_client.post("/predict", json=request)) == (status, code)


def test_multipart_without_files_or_with_bad_fields_is_refused(served_client: TestClient):
    no_files = served_client.post("/predict", files={"model": (None, MODEL)})
    assert error_of(no_files) == (422, "unprocessable")
    bad_version = served_client.post(
        "/predict", files={"model": (None, MODEL), "version": (None, "one")}
    )
    assert error_of(bad_version) == (422, "unprocessable")
    unknown = served_client.post("/predict", files={"model": (None, MODEL), "x": (None, "1")})
    assert error_of(unknown) == (400, "bad_request")


def test_other_content_types_are_415(served_client: TestClient):
    response = served_client.post("/predict", content=b"x", headers={"content-type": "image/png"})
    assert error_of(response) == (415, "unsupported_media_type")


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_too_many_images_is_413(make_client: MakeClient, template: Template, kind: str):
    client = make_client(predict_max_instances=2)
    images = [template.image(i) for i in range(3)]
    if kind == "json":
        response = client.post("/predict", json={"model": MODEL, "instances": instances(*images)})
    else:
        files = [("files", (f"{i}.png", image)) for i, image in enumerate(images)]
        response = client.post("/predict", files=files, data={"model": MODEL})
    assert error_of(response) == (413, "too_many_instances")


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_too_many_image_bytes_is_413(make_client: MakeClient, template: Template, kind: str):
    image = template.image()
    client = make_client(predict_max_bytes=len(image) + 10)
    if kind == "json":
        body = {"model": MODEL, "instances": instances(image, image)}
        response = client.post("/predict", json=body)
    else:
        files = [("files", ("a.png", image)), ("files", ("b.png", image))]
        response = client.post("/predict", files=files, data={"model": MODEL})
    assert error_of(response) == (413, "too_many_instances")


# -- the model server failing ----------------------------------------------------------------


def test_model_server_down_is_503_with_retry_after(make_client: MakeClient, template: Template):
    client = make_client(model_server=closed_address(), predict_timeout_seconds=1.0)
    body = {"model": MODEL, "instances": instances(template.image())}
    response = client.post("/predict", json=body)
    assert error_of(response) == (503, "model_server_unavailable")
    assert response.headers["retry-after"] == "5"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: every call hits its deadline."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_model_server_deadline_is_504(
    make_client: MakeClient, silent_server: str, template: Template
):
    client = make_client(model_server=silent_server, predict_timeout_seconds=0.5)
    body = {"model": MODEL, "instances": instances(template.image())}
    assert error_of(client.post("/predict", json=body)) == (504, "model_server_timeout")


def test_predictions_match_the_models_own_probabilities(
    served_client: TestClient, model_server, template: Template
):
    """The top label is the arg-max of the model's probabilities for each image."""
    images = [template.image(i) for i in range(4)]
    process, _ = model_server
    _, answer = process.predict(images)
    response = served_client.post(
        "/predict", json={"model": MODEL, "instances": instances(*images)}
    )
    scores = [p["score"] for p in response.json()["predictions"]]
    np.testing.assert_allclose(scores, answer["probabilities"].max(axis=1), rtol=1e-6)


def test_a_labelled_version_the_server_has_not_loaded_yet_is_503_with_retry_after(
    served_client: TestClient, model_server, template: Template
):
    _, repo = model_server
    fresh = repo / "fresh" / "1"
    fresh.mkdir(parents=True)  # labelled a moment ago; the server polls the config later
    (repo / "fresh" / "serving.json").write_text('{"labels": {"stable": 1}, "max_version": 1}')
    try:
        response = served_client.post(
            "/predict", json={"model": "fresh", "instances": instances(template.image())}
        )
        assert error_of(response) == (503, "model_server_unavailable")
        assert int(response.headers["retry-after"]) > 0
        loading = served_client.post(
            "/predict",
            json={"model": "fresh", "version": 1, "instances": instances(template.image())},
        )
        assert error_of(loading) == (503, "model_server_unavailable")
        unknown_version = served_client.post(
            "/predict",
            json={"model": "fresh", "version": 2, "instances": instances(template.image())},
        )
        assert error_of(unknown_version) == (404, "version_not_found")
        unknown_label = served_client.post(
            "/predict",
            json={"model": "fresh", "label": "canary", "instances": instances(template.image())},
        )
        assert error_of(unknown_label) == (404, "label_not_found")
    finally:
        shutil.rmtree(repo / "fresh")


def test_a_version_on_disk_but_not_served_is_404_saying_how_to_serve_it(
    served_client: TestClient, model_server, template: Template
):
    _, repo = model_server
    (repo / "fresh" / "1").mkdir(parents=True)
    (repo / "fresh" / "2").mkdir(parents=True)
    (repo / "fresh" / "serving.json").write_text('{"labels": {"stable": 2}, "max_version": 2}')
    try:
        response = served_client.post(
            "/predict",
            json={"model": "fresh", "version": 1, "instances": instances(template.image())},
        )
        assert error_of(response) == (404, "version_not_served")
        message = response.json()["error"]["message"]
        assert "served: 2" in message
        assert "PUT /models/fresh/labels/<label>" in message
    finally:
        shutil.rmtree(repo / "fresh")
