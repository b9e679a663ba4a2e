"""``POST /predict`` judges every image by its header before calling the model server.

No model server runs here: the API's is a closed port, so a request that got past the
checks would answer 503. A refusal with 413 or 400 proves nothing was sent.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.api.conftest import MakeClient, TestClient, error_of
from tests.support.images import (
    bomb_gif,
    jpeg_xl_declaring,
    png_header_only,
    png_pillow_cannot_read,
    riff_webp,
    webp_canvas_only,
    webp_solid,
)
from tests.support.servers import MODEL


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (0, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def post(client: TestClient, kind: str, images: list[bytes]):
    if kind == "json":
        instances = [{"b64": base64.b64encode(image).decode()} for image in images]
        return client.post("/predict", json={"model": MODEL, "instances": instances})
    files = [
        ("files", (f"{i}.img", image, "application/octet-stream")) for i, image in enumerate(images)
    ]
    return client.post("/predict", files=files, data={"model": MODEL})


def refusal(response) -> tuple[int, str, str]:
    status, code = error_of(response)
    return status, code, response.json()["error"]["message"]


KINDS = ["json", "multipart"]
FIELD = {"json": "instances", "multipart": "files"}


@pytest.mark.parametrize("kind", KINDS)
def test_gif_whose_frame_outgrows_its_screen_is_413(client: TestClient, kind: str):
    assert refusal(post(client, kind, [png(), bomb_gif()])) == (
        413,
        "image_too_large",
        f"{FIELD[kind]}[1] is a 30000x30000 GIF (900000000 pixels), more than 40000000"
        " (image_max_pixels)",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_png_declaring_too_many_pixels_is_413(client: TestClient, kind: str):
    assert refusal(post(client, kind, [png_header_only(8000, 8000)])) == (
        413,
        "image_too_large",
        f"{FIELD[kind]}[0] is a 8000x8000 PNG (64000000 pixels), more than 40000000"
        " (image_max_pixels)",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_png_past_pillows_bomb_limit_is_413(client: TestClient, kind: str):
    status, code, message = refusal(post(client, kind, [png_header_only(30_000, 30_000)]))
    assert (status, code) == (413, "image_too_large")
    assert message.startswith(f"{FIELD[kind]}[0] is a PNG too large to decode: ")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("image", "size", "pixels"),
    [
        (webp_solid(16_384, 16_384), "16384x16384", 268_435_456),  # real: 32 bytes
        (webp_canvas_only(30_000, 20_000), "30000x20000", 600_000_000),
    ],
    ids=["lossless", "canvas"],
)
def test_webp_declaring_too_many_pixels_is_413(
    client: TestClient, kind: str, image: bytes, size: str, pixels: int
):
    assert refusal(post(client, kind, [png(), image])) == (
        413,
        "image_too_large",
        f"{FIELD[kind]}[1] is a {size} WebP ({pixels} pixels), more than 40000000"
        " (image_max_pixels)",
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "image", [b"%PDF-1.7 not an image", jpeg_xl_declaring(9000, 8000)], ids=["pdf", "jpeg-xl"]
)
def test_other_bytes_are_not_an_image(client: TestClient, kind: str, image: bytes):
    # TensorFlow decodes JPEG XL, but its size is not judged: it is not sent on either.
    assert refusal(post(client, kind, [png(), image])) == (
        400,
        "not_an_image",
        f"{FIELD[kind]}[1] is not a JPEG, PNG, GIF, BMP or WebP image",
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("image", "what"),
    [
        (b"GIF89a\x01\x00", "GIF"),
        (png_pillow_cannot_read(8000, 8000), "PNG"),
        (riff_webp((b"VP8 ", bytes(10))), "WebP"),
    ],
    ids=["gif", "png", "webp"],
)
def test_image_with_a_damaged_header_is_not_an_image(
    client: TestClient, kind: str, image: bytes, what: str
):
    # The PNG is one TensorFlow would decode (8000x8000): unjudged, it is not sent on.
    assert refusal(post(client, kind, [image])) == (
        400,
        "not_an_image",
        f"{FIELD[kind]}[0] starts like a {what} but its header is damaged",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_the_limit_is_image_max_pixels(make_client: MakeClient, kind: str):
    client = make_client(image_max_pixels=50)
    assert refusal(post(client, kind, [png((8, 8))])) == (
        413,
        "image_too_large",
        f"{FIELD[kind]}[0] is a 8x8 PNG (64 pixels), more than 50 (image_max_pixels)",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_images_within_the_limit_go_on_to_the_model_server(make_client: MakeClient, kind: str):
    client = make_client(image_max_pixels=64)
    status, code, _ = refusal(post(client, kind, [png((8, 8)), png((4, 16))]))
    assert (status, code) == (503, "model_server_unavailable")  # sent, to a closed port
