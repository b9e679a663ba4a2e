"""``ftserve model-server`` refuses encoded images whose headers declare too many pixels.

A Predict request is as untrusted as an upload: TensorFlow's decoders allocate the canvas a
header declares before reading a pixel. The bomb here is real (a 600 KB GIF that decodes to
3.4 GiB), so the server's peak memory shows whether it was decoded.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.model_server.conftest import (
    FTSERVE,
    MODEL,
    ServerProcess,
    Template,
    add_version,
    image_request,
    outputs,
    repo_flags,
)
from tests.support.images import bomb_gif, png_header_only, png_pillow_cannot_read

GiB = 1024**3
BOMB_REFUSED = (
    "input image_bytes[3] is a 30000x30000 GIF (900000000 pixels), more than the limit 40000000"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, template: Template) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("image-limits")
    add_version(root / "repo", template.version_dir)
    process = ServerProcess(FTSERVE, repo_flags(root / "repo"), root / "server.log")
    process.wait_for_version(1)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def idle_peak(server: ServerProcess, template: Template) -> int:
    """The server's peak RSS after it has answered normal images (TensorFlow warmed up)."""
    server.predict_stub.Predict(image_request([template.image(i) for i in range(4)]), timeout=60)
    return peak_rss(server)


def peak_rss(server: ServerProcess) -> int:
    """VmHWM of the server process, in bytes."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def grpc_refusal(server: ServerProcess, images: list[bytes]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        server.predict_stub.Predict(image_request(images), timeout=60)
    return caught.value.code(), caught.value.details()


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def test_bomb_gif_over_grpc_is_invalid_argument(server, idle_peak: int, template: Template):
    images = [template.image(0), template.image(1), template.image(2), bomb_gif()]
    assert grpc_refusal(server, images) == (grpc.StatusCode.INVALID_ARGUMENT, BOMB_REFUSED)
    assert peak_rss(server) < idle_peak + GiB


def test_bomb_gif_over_rest_is_400(server, idle_peak: int, template: Template):
    images = [template.image(0), template.image(1), template.image(2), bomb_gif()]
    response = server.http.post(
        f"/v1/models/{MODEL}:predict", json={"instances": [b64(image) for image in images]}
    )
    assert (response.status_code, response.json()) == (400, {"error": BOMB_REFUSED})
    columnar = {"inputs": {"image_bytes": [b64(image) for image in images]}}
    response = server.http.post(f"/v1/models/{MODEL}/versions/1:predict", json=columnar)
    assert (response.status_code, response.json()) == (400, {"error": BOMB_REFUSED})
    assert peak_rss(server) < idle_peak + GiB


def test_png_declaring_too_many_pixels_is_invalid_argument(server):
    assert grpc_refusal(server, [png_header_only(8000, 8000)]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input image_bytes[0] is a 8000x8000 PNG (64000000 pixels), more than the limit 40000000",
    )


def test_png_whose_header_pillow_cannot_read_is_invalid_argument(server):
    # TensorFlow would decode this 8000x8000 PNG; unjudged, it is refused.
    assert grpc_refusal(server, [png_pillow_cannot_read(8000, 8000)]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input image_bytes[0] starts like a PNG but its header is damaged, so it cannot be decoded",
    )


@pytest.mark.parametrize("value", [b"not an image", b"BMW is not a bitmap", b"GIF89a\x01"])
def test_bytes_that_are_no_image_are_still_left_to_the_model(server, value: bytes):
    code, details = grpc_refusal(server, [value])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert not details.startswith("input image_bytes")  # TensorFlow's decoder answered


def test_the_server_still_answers_normal_images_afterwards(server, idle_peak, template):
    grpc_refusal(server, [bomb_gif()])
    images = [template.image(i) for i in range(3)]
    answer = outputs(server.predict_stub.Predict(image_request(images), timeout=60))
    assert answer["probabilities"].shape == (3, 3)
    response = server.http.post(
        f"/v1/models/{MODEL}:predict", json={"instances": [b64(image) for image in images]}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 3
    assert peak_rss(server) < idle_peak + GiB
