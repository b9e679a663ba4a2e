"""``ftserve model-server`` refuses encoded images whose headers declare too many pixels.

A Predict request is as untrusted as an upload: TensorFlow's decoders allocate the canvas a
header declares before reading a pixel. The bombs here are real where they can be small (a
600 KB GIF that decodes to 3.4 GiB, a 32-byte WebP to 768 MiB and more), so the server's
peak memory shows whether one was decoded. The limit is ``--max_image_pixels``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service.ingest.images import image_kind
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
from tests.model_server.server_fixtures import shapes
from tests.support.images import (
    bmp_declaring,
    bomb_gif,
    jpeg_declaring,
    jpeg_xl_declaring,
    png_header_only,
    png_pillow_cannot_read,
    riff_webp,
    webp_canvas_only,
    webp_lossy_declaring,
    webp_solid,
)
from tests.support.servers import SharedServers, WindingDown

GiB = 1024**3
BOMB_REFUSED = (
    "input image_bytes[3] is a 30000x30000 GIF (900000000 pixels), more than the limit 40000000"
)


@pytest.fixture
def server(shared_servers: SharedServers, shapes_flags: list[str]) -> Iterator[ServerProcess]:
    """The shared ``shapes`` server, with the default limit.

    The other tests on it send a few 32x32 images at a time, so its peak memory still shows
    whether a bomb was decoded.
    """
    with shapes(shared_servers, FTSERVE, shapes_flags).borrow() as process:
        yield process


@pytest.fixture(scope="module")
def idle_peaks() -> dict[int, int]:
    return {}


@pytest.fixture
def idle_peak(server: ServerProcess, template: Template, idle_peaks: dict[int, int]) -> int:
    """The server's peak RSS after it has answered normal images (TensorFlow warmed up).

    Measured once per server process (a crash in another test may start a new one).
    """
    if server.process.pid not in idle_peaks:
        images = [template.image(i) for i in range(4)]
        server.predict_stub.Predict(image_request(images), timeout=60)
        idle_peaks[server.process.pid] = peak_rss(server)
    return idle_peaks[server.process.pid]


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


def refused_as_too_large(size: str, kind: str, pixels: int, limit: int = 40_000_000):
    return (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"input image_bytes[0] is a {size} {kind} ({pixels} pixels), more than the limit {limit}",
    )


DECLARING_TOO_MUCH = {
    "jpeg": (jpeg_declaring(9000, 8000), refused_as_too_large("9000x8000", "JPEG", 72_000_000)),
    "bmp": (bmp_declaring(9000, 8000), refused_as_too_large("9000x8000", "BMP", 72_000_000)),
    "bmp-top-down": (
        bmp_declaring(9000, -8000),
        refused_as_too_large("9000x8000", "BMP", 72_000_000),
    ),
    "webp-lossy": (
        webp_lossy_declaring(9000, 8000),
        refused_as_too_large("9000x8000", "WebP", 72_000_000),
    ),
    "webp-canvas": (
        webp_canvas_only(30_000, 20_000),
        refused_as_too_large("30000x20000", "WebP", 600_000_000),
    ),
    "gif80a": (
        b"GIF80a" + bomb_gif()[6:],
        refused_as_too_large("30000x30000", "GIF", 900_000_000),
    ),
}


@pytest.mark.parametrize(("image", "refused"), DECLARING_TOO_MUCH.values(), ids=DECLARING_TOO_MUCH)
def test_image_declaring_too_many_pixels_is_invalid_argument(server, image: bytes, refused):
    assert grpc_refusal(server, [image]) == refused


def test_real_webp_bomb_is_invalid_argument_and_never_decoded(server, idle_peak: int):
    # 32 bytes; decoding it takes libwebp 1.8 GiB.
    assert grpc_refusal(server, [webp_solid(16_384, 16_384)]) == refused_as_too_large(
        "16384x16384", "WebP", 268_435_456
    )
    assert peak_rss(server) < idle_peak + GiB


def test_jpeg_xl_is_refused_as_its_size_is_not_judged(server):
    assert grpc_refusal(server, [jpeg_xl_declaring(9000, 8000)]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input image_bytes[0] is a JPEG XL image, which is refused: its size is not judged",
    )


def test_webp_whose_header_cannot_be_read_is_invalid_argument(server):
    assert grpc_refusal(server, [riff_webp((b"VP8 ", bytes(10)))]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input image_bytes[0] starts like a WebP but its header is damaged, so it cannot be"
        " decoded",
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


# -- --max_image_pixels ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_server(
    tmp_path_factory: pytest.TempPathFactory, template: Template, winding_down: WindingDown
) -> Iterator[ServerProcess]:
    """A server whose limit is below the size of the template's 32x32 images.

    Warmup requests are judged by the limit too: these, of such images, would fail the load.
    """
    root = tmp_path_factory.mktemp("strict-image-limits")
    add_version(root / "repo", template.version_dir)
    flags = [*repo_flags(root / "repo"), "--max_image_pixels=1000", "--enable_model_warmup=false"]
    process = ServerProcess(FTSERVE, flags, root / "server.log")
    process.wait_for_version(1)
    yield process
    winding_down.add(process)


def test_a_lower_max_image_pixels_refuses_what_the_default_serves(
    server, strict_server, template: Template
):
    image = template.image()
    answer = outputs(server.predict_stub.Predict(image_request([image]), timeout=60))
    assert answer["probabilities"].shape == (1, 3)

    assert grpc_refusal(strict_server, [image]) == refused_as_too_large(
        "32x32", str(image_kind(image)), 1024, limit=1000
    )
