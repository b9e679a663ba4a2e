"""``POST /predict`` with a JSON body: read once, instances taken as they are, errors unchanged.

Well-formed ``instances`` skip the request model; anything else goes through it, so the
messages are pydantic's, exactly as they were. No model server runs here: a request that
gets past every check answers 503 from the closed port the API is given.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.api.conftest import MakeClient, TestClient, error_of

ROOT = Path(__file__).resolve().parents[2]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def refusal(response) -> tuple[int, str, str]:
    status, code = error_of(response)
    return status, code, response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"model": "m", "instances": [{"image_bytes": "AAAA"}]},
            "invalid request: instances.0.b64: Field required;"
            " instances.0.image_bytes: Extra inputs are not permitted",
        ),
        (
            {"model": "m", "instances": [{"b64": "AAAA", "x": 1}]},
            "invalid request: instances.0.x: Extra inputs are not permitted",
        ),
        (
            {"model": "m", "instances": [{"b64": 5}, "AAAA"]},
            "invalid request: instances.0.b64: Input should be a valid string;"
            " instances.1: Input should be a valid dictionary or instance of Instance",
        ),
        (
            {"model": "m", "instances": []},
            "invalid request: instances: List should have at least 1 item after validation, not 0",
        ),
        ({"model": "m"}, "invalid request: instances: Field required"),
        (
            {"model": "m", "top_k": 0, "instances": "AAAA"},
            "invalid request: top_k: Input should be greater than or equal to 1;"
            " instances: Input should be a valid list",
        ),
        (
            {"model": "m", "top_k": 0, "instances": [{"b64": "AAAA"}]},
            "invalid request: top_k: Input should be greater than or equal to 1",
        ),
        (
            {"model": "m", "signature_name": "x", "instances": [{"b64": "AAAA"}]},
            "invalid request: signature_name: Extra inputs are not permitted",
        ),
        (
            ["not", "an", "object"],
            "invalid request: request: Input should be a valid dictionary or instance of"
            " PredictRequest",
        ),
    ],
    ids=[
        "other-key",
        "extra-key",
        "not-strings",
        "no-instances",
        "missing",
        "both-wrong",
        "bad-option",
        "unknown-option",
        "not-an-object",
    ],
)
def test_malformed_bodies_get_the_request_models_own_message(
    client: TestClient, body: object, message: str
):
    assert refusal(client.post("/predict", json=body)) == (422, "unprocessable", message)


@pytest.mark.parametrize(
    "text",
    ["iVBORw0KGgo=\n", "iVBOR w0KGgo=", "iVBORw0KGgo", "ïVBORw0KGgo=", "==", "iVBO=Rw0KGgo="],
    ids=["newline", "space", "unpadded", "not-ascii", "only-padding", "padding-inside"],
)
def test_text_that_is_not_strict_base64_is_invalid_base64(client: TestClient, text: str):
    body = {"model": "m", "instances": [{"b64": b64(png())}, {"b64": text}]}
    assert refusal(client.post("/predict", json=body)) == (
        400,
        "invalid_base64",
        "instances[1].b64 is not valid base64",
    )


def test_standard_and_url_safe_base64_both_reach_the_model_server(client: TestClient):
    # Trailing bytes whose base64 holds "+" or "/" (URL-safe: "-" or "_"), after a PNG.
    image = png() + b"\xfb\xef\xbe\xff\xff\xff" * 3
    standard, url_safe = b64(image), base64.urlsafe_b64encode(image).decode()
    assert standard != url_safe
    body = {"model": "m", "instances": [{"b64": standard}, {"b64": url_safe}]}
    assert error_of(client.post("/predict", json=body)) == (503, "model_server_unavailable")


def test_instances_are_counted_before_any_is_decoded(make_client: MakeClient):
    client = make_client(predict_max_instances=2)
    body = {"model": "m", "instances": [{"b64": "!"}] * 3}
    assert error_of(client.post("/predict", json=body)) == (413, "too_many_instances")


def test_a_body_with_escaped_slashes_and_unicode_options_is_read(client: TestClient):
    # JSON may escape "/" as "\/": the parser, not the base64 decoder, undoes it.
    text = json.dumps({"model": "m", "label": "stäble", "instances": [{"b64": b64(png())}]})
    body = text.replace("/", "\\/").encode()
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert error_of(response) == (503, "model_server_unavailable")


def test_the_api_imports_no_numpy():
    # The API starts without numpy; /predict reads the model server's tensors without it.
    probe = "import sys, service.api.app; print('numpy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
