"""The exported ``serving_default`` refuses decompression bombs by itself, as TF Serving runs it.

The session's trained model, published once (``template``), is loaded back with
``tf.saved_model.load`` and called directly: no Python of ours stands between a request and
the graph, as with the real TensorFlow Serving binary. The bombs are real where they can be
small (a 600 KB GIF that decodes to 3.4 GiB, a 32-byte WebP that decodes to 768 MiB plus
libwebp's buffers), so the peak memory of the process calling the model shows whether any
was decoded.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import exporter.gif_walk as gif_walk
from exporter.export import decode_batch
from exporter.gif_walk import gif_canvas
from exporter.image_guard import DEFAULT_MAX_PIXELS
from exporter.signatures import save_saved_model
from service.config import Settings
from service.ingest.images import UnreadableHeaderError, read_header
from service.training.preprocessing import decode_image
from service.training.trainer import TrainingResult
from tests.support.images import (
    COMMENT,
    GRAPHIC_CONTROL,
    LOOP_FOREVER,
    ONE_PIXEL,
    bmp_declaring,
    bomb_gif,
    frame,
    gif,
    jpeg_declaring,
    jpeg_xl_declaring,
    lzw_zeros,
    png_header_only,
    vp8l_solid,
    webp_canvas_only,
    webp_lossy_declaring,
    webp_solid,
)
from tests.support.servers import ROOT
from tests.support.trained import Template

GiB = 1024**3
IMAGE_SIZE = 32
LIMIT = 40_000_000


@pytest.fixture(scope="module")
def serve(template: Template):
    return tf.saved_model.load(str(template.version_dir)).signatures["serving_default"]


def refusal(serve, images: list[bytes]) -> str:
    """The message ``serving_default`` fails with on ``images``."""
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        serve(image_bytes=tf.constant(images))
    return assertion(caught.value.message)


def assertion(message: str) -> str:
    found = re.search(r"assertion failed: \[(.*)\]", message)
    assert found, message
    return found.group(1)


def converted(data: bytes, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(data)) as image:
        image.convert("RGB").save(buffer, format=fmt, **options)
    return buffer.getvalue()


def too_large(index: int, size: str, kind: str, pixels: int) -> str:
    return f"image_bytes[{index}] is a {size} {kind} ({pixels} pixels), more than the limit {LIMIT}"


# -- why WebP is judged at all ---------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"lossless": False}, {"lossless": True}, {"exif": b"Exif\x00\x00II*\x00\x08\x00\x00\x00"}],
    ids=["lossy", "lossless", "extended"],
)
def test_the_decoder_reads_webp(options: dict[str, object]):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, format="WEBP", **options)

    assert decode_image(tf.constant(buffer.getvalue())).shape == (30, 40, 3)


def test_the_decoder_reads_a_bare_webp_bitstream_and_the_tiny_solid_one():
    bare = b"RIFF\x10\x00\x00\x00WEBP" + vp8l_solid(30, 20, (1, 2, 3))
    assert decode_image(tf.constant(bare)).shape == (20, 30, 3)
    pixels = decode_image(tf.constant(webp_solid(40, 30, (10, 200, 30)))).numpy()
    assert pixels.shape == (30, 40, 3) and (pixels == [10, 200, 30]).all()


# -- normal images pass unchanged ------------------------------------------------------------


def test_normal_images_of_every_format_answer_as_the_model_does(
    serve, template: Template, result: TrainingResult
):
    png_or_jpeg = [data for _, data in template.images[:3]]
    source = png_or_jpeg[0]
    others = [converted(source, fmt) for fmt in ("GIF", "BMP", "WEBP")]
    images = [*png_or_jpeg, *others, converted(source, "WEBP", lossless=True)]

    served = serve(image_bytes=tf.constant(images))["probabilities"].numpy()

    expected = result.classifier.model(decode_batch(images, IMAGE_SIZE), training=False)
    np.testing.assert_allclose(served, np.asarray(expected), atol=1e-5)


def test_bytes_of_no_image_are_still_refused_by_the_decoder(serve, template: Template):
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        serve(image_bytes=tf.constant([template.image(), b"certainly not an image"]))
    assert "Unknown image file format" in caught.value.message


# -- bombs are refused, naming the limit -----------------------------------------------------


BOMBS = {
    "gif-frame": (bomb_gif(), too_large(1, "30000x30000", "GIF", 900_000_000)),
    "gif-descriptor-only": (
        gif((1, 1), frame(0, 0, 30_000, 30_000, ONE_PIXEL)),
        too_large(1, "30000x30000", "GIF", 900_000_000),
    ),
    "gif80a": (b"GIF80a" + bomb_gif()[6:], too_large(1, "30000x30000", "GIF", 900_000_000)),
    "png": (png_header_only(8000, 8000), too_large(1, "8000x8000", "PNG", 64_000_000)),
    "bmp": (bmp_declaring(9000, 8000), too_large(1, "9000x8000", "BMP", 72_000_000)),
    "bmp-top-down": (bmp_declaring(9000, -8000), too_large(1, "9000x8000", "BMP", 72_000_000)),
    "jpeg": (jpeg_declaring(9000, 8000), too_large(1, "9000x8000", "JPEG", 72_000_000)),
    "webp-lossless": (webp_solid(16_384, 16_384), too_large(1, "16384x16384", "WebP", 268435456)),
    "webp-canvas": (
        webp_canvas_only(30_000, 20_000),
        too_large(1, "30000x20000", "WebP", 6 * 10**8),
    ),
    "webp-lossy": (webp_lossy_declaring(9000, 8000), too_large(1, "9000x8000", "WebP", 72_000_000)),
    "jpeg-xl": (
        jpeg_xl_declaring(9000, 8000),
        "image_bytes[1] is a JPEG XL image, which is refused: its size is not judged",
    ),
    "gif-raster": (
        gif((4000, 4000), *[frame(0, 0, 4000, 4000, ONE_PIXEL)] * 20),
        "image_bytes[1] is a GIF too large to decode: GIF frames hold more than 268435456 pixels"
        " in all",
    ),
}


@pytest.mark.parametrize(("bomb", "message"), BOMBS.values(), ids=BOMBS.keys())
def test_image_declaring_too_much_fails_the_request_naming_the_limit(
    serve, template: Template, bomb: bytes, message: str
):
    assert refusal(serve, [template.image(), bomb]) == message


def test_png_declaring_the_largest_size_is_counted_without_overflow(serve):
    side = 2**32 - 1
    assert refusal(serve, [png_header_only(side, side)]) == too_large(
        0, f"{side}x{side}", "PNG", side * side
    )


def test_the_limit_is_the_image_max_pixels_default():
    assert DEFAULT_MAX_PIXELS == Settings.model_fields["image_max_pixels"].default == LIMIT


def test_a_model_exported_with_a_lower_limit_refuses_what_the_default_takes(
    serve, template: Template, result: TrainingResult, tmp_path: Path
):
    image = template.image()
    kind = "PNG" if image.startswith(b"\x89PNG") else "JPEG"
    save_saved_model(result.classifier.model, result.classes, IMAGE_SIZE, tmp_path, 1000)
    strict = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]

    assert serve(image_bytes=tf.constant([image]))["probabilities"].shape == (1, 3)
    assert refusal(strict, [image]) == (
        f"image_bytes[0] is a 32x32 {kind} (1024 pixels), more than the limit 1000"
    )


def test_jpeg_shape_is_read_from_the_header_alone():
    # Decoding would allocate 10.8 GB; reading the frame header takes microseconds.
    start = time.perf_counter()
    shape = tf.image.extract_jpeg_shape(tf.constant(jpeg_declaring(60_000, 60_000)))
    assert shape.numpy().tolist() == [60_000, 60_000, 3]
    assert time.perf_counter() - start < 1


PEAK_SCRIPT = """
import json, sys
import tensorflow as tf
from tests.support.images import (
    bomb_gif, frame, gif, jpeg_declaring, png_header_only, webp_solid, ONE_PIXEL
)

def peak():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
normal = open(sys.argv[2], "rb").read()
for _ in range(2):
    serve(image_bytes=tf.constant([normal] * 8))
idle = peak()
bombs = [
    bomb_gif(),
    gif((1, 1), frame(0, 0, 30_000, 30_000, ONE_PIXEL)),
    webp_solid(16_384, 16_384),
    jpeg_declaring(60_000, 60_000),
    png_header_only(30_000, 30_000),
]
refused = []
for bomb in bombs:
    try:
        serve(image_bytes=tf.constant([normal, bomb]))
    except tf.errors.InvalidArgumentError as exc:
        refused.append(exc.message)
print(json.dumps({"idle": idle, "peak": peak(), "refused": refused}))
"""


def test_refusing_real_bombs_keeps_the_peak_memory_flat(template: Template, tmp_path: Path):
    normal = tmp_path / "normal.img"
    normal.write_bytes(template.image())
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(template.version_dir), str(normal)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])

    assert [assertion(message) for message in found["refused"]] == [
        too_large(1, "30000x30000", "GIF", 900_000_000),
        too_large(1, "30000x30000", "GIF", 900_000_000),
        too_large(1, "16384x16384", "WebP", 268_435_456),
        too_large(1, "60000x60000", "JPEG", 3_600_000_000),
        too_large(1, "30000x30000", "PNG", 900_000_000),
    ]
    assert found["peak"] < found["idle"] + GiB, found


# -- the GIF walk in the graph ---------------------------------------------------------------


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def walk(data: tf.Tensor) -> dict[str, tf.Tensor]:
    return gif_canvas(data)._asdict()


def walked(data: bytes) -> dict[str, int]:
    return {name: int(value) for name, value in walk(tf.constant(data)).items()}


GOOD = gif((1, 1), frame(0, 0, 300, 200))
LOCAL_TABLE = b"\x2c" + bytes([0, 0, 0, 0, 44, 1, 200, 0, 0x81]) + bytes(12) + lzw_zeros(60_000)
GIFS = {
    "frames-at-offsets": gif(
        (10, 10),
        LOOP_FOREVER,
        GRAPHIC_CONTROL,
        frame(0, 0, 10, 10),
        COMMENT,
        GRAPHIC_CONTROL,
        frame(5, 7, 20, 30),
        GRAPHIC_CONTROL,
        frame(40, 1, 2, 2),
    ),
    "screen-larger": gif((100, 80), frame(0, 0, 1, 1)),
    "local-colour-table": gif((1, 1), LOCAL_TABLE, frame(0, 0, 2, 500)),
    "tiny-blocks": gif((1, 1), frame(3, 4, 5, 6, b"\x02" + b"\x01\x00" * 5000 + b"\x00")),
    "long-comment": gif((1, 1), b"\x21\xfe" + b"\x01a" * 3000 + b"\x00", frame(0, 0, 7, 9)),
    "unknown-block": gif((1, 1), frame(0, 0, 3, 2), b"\x99", frame(0, 0, 9000, 9000, ONE_PIXEL)),
    "cut-in-data": GOOD[:33],
    "cut-in-descriptor": GOOD[:25],
    "no-code-size": GOOD[:29],
    "signature-only": GOOD[:6],
    "empty-frame": gif((1, 1), frame(0, 0, 0, 5, ONE_PIXEL)),
    "trailer-only": gif((1, 1)),
}


@pytest.mark.parametrize("data", GIFS.values(), ids=GIFS.keys())
def test_gif_walk_in_the_graph_finds_the_canvas_the_header_reader_finds(data: bytes):
    try:
        expected = read_header(data, "GIF")[1:]
    except UnreadableHeaderError:
        expected = (0, 0)  # no frame: giflib allocates nothing

    found = walked(data)

    assert (found["width"], found["height"]) == expected


def test_gif_walk_counts_frames_blocks_and_raster():
    data = gif((1, 1), LOOP_FOREVER, frame(0, 0, 300, 200), COMMENT, frame(0, 0, 2, 3))
    # Two frames; the loop extension and its 2 sub-blocks; the comment and its 2; the
    # frames' data sub-blocks: 333 bytes of LZW data make 2, 3 bytes 1.
    assert walked(data) == {
        "width": 300,
        "height": 200,
        "frames": 2,
        "raster": 60_006,
        "blocks": 2 + 3 + 3 + 2 + 1,
    }


def test_gif_walk_stops_at_its_bounds(monkeypatch: pytest.MonkeyPatch):
    # The bounds are read when the walk is traced: small ones keep this test fast.
    monkeypatch.setattr(gif_walk, "MAX_GIF_BLOCKS", 1000)
    monkeypatch.setattr(gif_walk, "MAX_GIF_FRAMES", 50)
    many_blocks = gif((1, 1), frame(0, 0, 1, 1, b"\x02" + b"\x01\x00" * 200_000 + b"\x00"))
    many_frames = gif((1, 1), *[frame(0, 0, 1, 1, ONE_PIXEL)] * 200)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def bounded(data: tf.Tensor) -> dict[str, tf.Tensor]:
        return gif_canvas(data)._asdict()

    blocks = int(bounded(tf.constant(many_blocks))["blocks"])
    assert 1000 < blocks <= 1000 + gif_walk._WINDOW
    assert int(bounded(tf.constant(many_frames))["frames"]) == 51
