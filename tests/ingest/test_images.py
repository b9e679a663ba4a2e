"""Tests for service.ingest.images: the size a decoder would allocate, read from headers only.

The GIFs are written byte by byte: a logical screen, image descriptors and LZW data as
giflib's encoder writes it, so that a tiny file can declare (and really hold) a huge frame.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from service.config import Settings
from service.errors import ImageTooLargeError
from service.ingest.archive import extract_archive
from service.ingest.images import (
    MAX_GIF_BLOCKS,
    MAX_GIF_FRAMES,
    BombHeaderError,
    ImageHeader,
    UnreadableHeaderError,
    image_kind,
    read_header,
    unsized_kind,
)
from tests.support.images import (
    COMMENT,
    GRAPHIC_CONTROL,
    LOOP_FOREVER,
    ONE_PIXEL,
    bomb_gif,
    frame,
    gif,
    jpeg_xl_declaring,
    lzw_zeros,
    png_header_only,
    png_pillow_cannot_read,
    riff_webp,
    vp8l_solid,
    webp_canvas_only,
    webp_lossy_declaring,
    webp_solid,
)

ROOT = Path(__file__).resolve().parents[2]


def pillow_image(fmt: str, size: tuple[int, int], **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def header_of(data: bytes) -> ImageHeader:
    kind = image_kind(data)
    assert kind is not None
    return read_header(data, kind)


# -- GIF: the canvas the decoder allocates ---------------------------------------------------


def test_gif_later_frame_larger_than_the_screen_sets_the_size_fast():
    data = bomb_gif()
    assert len(data) < 1_000_000
    start = time.perf_counter()
    header = header_of(data)
    assert time.perf_counter() - start < 0.5
    assert header == ImageHeader("GIF", 30_000, 30_000)
    assert header.pixels == 900_000_000


def test_gif_frame_declared_with_one_pixel_of_data_still_counts():
    # giflib allocates a frame's raster from its descriptor, before reading the data.
    data = gif((1, 1), frame(0, 0, 30_000, 30_000, ONE_PIXEL))
    assert len(data) < 64
    assert header_of(data) == ImageHeader("GIF", 30_000, 30_000)


def test_gif_size_covers_the_screen_and_every_frame_at_its_offset():
    data = gif(
        (10, 10),
        LOOP_FOREVER,
        GRAPHIC_CONTROL,
        frame(0, 0, 10, 10),
        COMMENT,
        GRAPHIC_CONTROL,
        frame(5, 7, 20, 30),
        GRAPHIC_CONTROL,
        frame(40, 1, 2, 2),
    )
    assert header_of(data) == ImageHeader("GIF", 42, 37)


def test_gif_screen_larger_than_its_frames_keeps_the_screen():
    # TensorFlow 2.21 would allocate 1x1 here; older versions the screen: the larger counts.
    assert header_of(gif((100, 80), frame(0, 0, 1, 1))) == ImageHeader("GIF", 100, 80)


def test_gif_local_colour_tables_are_skipped():
    local = b"\x2c" + struct.pack("<HHHHB", 0, 0, 300, 200, 0x81) + bytes(12) + lzw_zeros(60_000)
    data = gif((1, 1), local, frame(0, 0, 2, 500))
    assert header_of(data) == ImageHeader("GIF", 300, 500)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "JPEG", "BMP"])
def test_pillow_images_keep_their_size(fmt: str):
    assert header_of(pillow_image(fmt, (40, 30))) == ImageHeader(fmt, 40, 30)


def test_png_header_alone_gives_its_size():
    assert header_of(png_header_only(8000, 6000)) == ImageHeader("PNG", 8000, 6000)


def test_png_with_a_bad_ancillary_checksum_is_unreadable_to_pillow():
    # What POST /predict and the model server refuse: TensorFlow would decode 8000x8000.
    with pytest.raises(UnreadableHeaderError):
        header_of(png_pillow_cannot_read(8000, 8000))


def test_animated_gif_from_pillow_keeps_its_size():
    frames = [Image.new("P", (64, 48), color) for color in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    assert header_of(buffer.getvalue()) == ImageHeader("GIF", 64, 48)


def test_top_down_bmp_reports_its_height_as_a_positive_number():
    data = bytearray(pillow_image("BMP", (5, 3)))
    struct.pack_into("<i", data, 22, -3)  # a negative height: rows stored top to bottom
    assert header_of(bytes(data)) == ImageHeader("BMP", 5, 3)


def test_gif_is_read_from_a_file_without_reading_it_all(tmp_path: Path):
    path = tmp_path / "bomb.gif"
    path.write_bytes(bomb_gif())
    assert read_header(path, "GIF") == ImageHeader("GIF", 30_000, 30_000)


def test_reading_a_bomb_gif_header_allocates_almost_nothing(tmp_path: Path):
    path = tmp_path / "bomb.gif"
    path.write_bytes(bomb_gif())
    script = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from service.ingest.images import read_header\n"
        "data = Path(sys.argv[1]).read_bytes()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "header = read_header(data, 'GIF')\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps([header.pixels, after - before]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pixels, grown_kib = json.loads(done.stdout)
    assert pixels == 900_000_000
    assert grown_kib < 20 * 1024, grown_kib  # decoding would take 3.4 GiB


# -- GIF: damaged and hostile ----------------------------------------------------------------

GOOD = gif((1, 1), frame(0, 0, 300, 200))
DESCRIPTOR = 6 + 7 + 6  # the signature, the logical screen and the global colour table


@pytest.mark.parametrize(
    "data",
    [
        GOOD[:6],  # the signature only
        GOOD[:12],  # inside the logical screen descriptor
        GOOD[:16],  # inside the global colour table
        GOOD[:DESCRIPTOR],  # no image descriptor
        GOOD[: DESCRIPTOR + 6],  # inside the first image descriptor
        GOOD[: DESCRIPTOR + 10],  # no LZW minimum code size
        gif((1, 1)),  # a trailer and no frame
        gif((1, 1), COMMENT[:-3]),  # inside an extension
        gif((1, 1), frame(0, 0, 0, 5, ONE_PIXEL)),  # a frame of no width: giflib refuses it
    ],
    ids=[
        "signature",
        "screen",
        "colour-table",
        "no-frame",
        "descriptor",
        "code-size",
        "trailer-only",
        "extension",
        "empty-frame",
    ],
)
def test_truncated_or_frameless_gif_is_unreadable(data: bytes):
    with pytest.raises(UnreadableHeaderError):
        read_header(data, "GIF")


def test_gif_cut_inside_its_pixel_data_keeps_the_frame():
    # The decoder fails on it, but only after allocating the frame: it is judged by its size.
    assert header_of(GOOD[: DESCRIPTOR + 14]) == ImageHeader("GIF", 300, 200)


def test_gif_walk_stops_where_giflib_stops():
    # An unknown block after the first frame ends the decode: later frames never count.
    data = gif((1, 1), frame(0, 0, 3, 2), b"\x99", frame(0, 0, 9000, 9000, ONE_PIXEL))
    assert header_of(data) == ImageHeader("GIF", 3, 2)


def test_empty_gif_file_is_unreadable(tmp_path: Path):
    path = tmp_path / "empty.gif"
    path.write_bytes(b"")
    with pytest.raises(UnreadableHeaderError):
        read_header(path, "GIF")


def test_gif_with_too_many_frames_is_a_bomb():
    one = frame(0, 0, 1, 1, ONE_PIXEL)
    assert header_of(gif((1, 1), *[one] * MAX_GIF_FRAMES)) == ImageHeader("GIF", 1, 1)
    with pytest.raises(BombHeaderError, match=f"more than {MAX_GIF_FRAMES} frames"):
        read_header(gif((1, 1), *[one] * (MAX_GIF_FRAMES + 1)), "GIF")


def test_gif_whose_frames_add_up_past_the_raster_limit_is_a_bomb():
    # 20 frames of 4000x4000 on one 4000x4000 canvas: giflib keeps all 320M pixels.
    big = frame(0, 0, 4000, 4000, ONE_PIXEL)
    with pytest.raises(BombHeaderError, match="320000000 pixels in all"):
        read_header(gif((4000, 4000), *[big] * 20), "GIF")


def test_gif_of_tiny_data_blocks_is_refused_in_bounded_time():
    tiny_blocks = b"\x02" + b"\x01\x00" * (MAX_GIF_BLOCKS + 1) + b"\x00"
    start = time.perf_counter()
    with pytest.raises(BombHeaderError, match="data blocks"):
        read_header(gif((1, 1), frame(0, 0, 1, 1, tiny_blocks)), "GIF")
    assert time.perf_counter() - start < 5


def test_gif_of_empty_extensions_is_refused_in_bounded_time():
    # An extension with no data sub-block is a block too: it still costs a step to walk.
    start = time.perf_counter()
    with pytest.raises(BombHeaderError, match="data blocks"):
        read_header(gif((1, 1), b"\x21\xfe\x00" * (MAX_GIF_BLOCKS + 1)), "GIF")
    assert time.perf_counter() - start < 5


def test_any_gif8_signature_is_a_gif():
    # TensorFlow hands any "GIF8" to giflib, which checks only "GIF": a GIF80a bomb decodes.
    data = b"GIF80a" + bomb_gif()[6:]
    assert header_of(data) == ImageHeader("GIF", 30_000, 30_000)


# -- WebP: the size libwebp reports ----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "chunk"),
    [
        ({"lossless": False}, b"VP8 "),
        ({"lossless": True}, b"VP8L"),
        ({"exif": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00"}, b"VP8X"),
    ],
    ids=["lossy", "lossless", "extended"],
)
def test_pillow_webp_keeps_its_size(options: dict[str, object], chunk: bytes):
    data = pillow_image("WEBP", (40, 30), **options)
    assert data[12:16] == chunk
    assert header_of(data) == ImageHeader("WebP", 40, 30)


def test_lossless_webp_of_one_colour_is_tiny_at_any_size():
    # A real image: Pillow decodes the small one to its colour, libwebp the big one to 768 MB.
    with Image.open(io.BytesIO(webp_solid(40, 30, (10, 200, 30)))) as image:
        assert (image.size, image.getpixel((39, 29))) == ((40, 30), (10, 200, 30))
    data = webp_solid(16_384, 16_384)
    assert len(data) == 32
    assert header_of(data) == ImageHeader("WebP", 16_384, 16_384)


def test_webp_canvas_declared_with_no_image_behind_it_counts():
    # libwebp reports an extended file's canvas before it looks for the image.
    data = webp_canvas_only(30_000, 20_000)
    assert len(data) == 30
    assert header_of(data) == ImageHeader("WebP", 30_000, 20_000)


def test_lossy_webp_is_sized_by_its_frame_header():
    assert header_of(webp_lossy_declaring(9000, 8000)) == ImageHeader("WebP", 9000, 8000)


def test_webp_bitstream_without_a_chunk_header_is_sized_as_libwebp_reads_it():
    bare = b"RIFF" + struct.pack("<I", 16) + b"WEBP" + vp8l_solid(300, 200)
    assert header_of(bare) == ImageHeader("WebP", 300, 200)


@pytest.mark.parametrize(
    "data",
    [
        b"RIFF\x04\x00\x00\x00WEBP",  # nothing after the signature
        webp_canvas_only(300, 200)[:27],  # the canvas cut short
        riff_webp((b"VP8 ", b"\x00" * 10)),  # no start code
        riff_webp((b"VP8L", b"\x2f\x00\x00\x00\xe0")),  # a version libwebp refuses
        riff_webp((b"ALPH", b"\x00" * 10)),  # an optional chunk without VP8X first
    ],
    ids=["signature", "canvas", "start-code", "version", "alpha-first"],
)
def test_webp_header_libwebp_refuses_is_unreadable(data: bytes):
    with pytest.raises(UnreadableHeaderError, match="unreadable WebP header"):
        read_header(data, "WebP")


def test_webp_is_read_from_a_file(tmp_path: Path):
    path = tmp_path / "big.webp"
    path.write_bytes(webp_canvas_only(30_000, 20_000))
    assert read_header(path, "WebP") == ImageHeader("WebP", 30_000, 20_000)


def test_riff_that_is_not_webp_is_no_image():
    assert image_kind(b"RIFF\x24\x00\x00\x00WAVEfmt ") is None


def test_jpeg_xl_is_a_kind_whose_size_is_not_read():
    # TensorFlow decodes JPEG XL; nothing here parses its header, so it is refused instead.
    for data in (jpeg_xl_declaring(9000, 8000), b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(20)):
        assert (image_kind(data[:12]), unsized_kind(data[:12])) == (None, "JPEG XL")
    assert unsized_kind(pillow_image("JPEG", (4, 4))[:12]) is None


# -- the archive extractor follows -----------------------------------------------------------


def test_archive_with_a_bomb_gif_is_refused(tmp_path: Path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cats/ok.gif", pillow_image("GIF", (8, 8)))
        zf.writestr("cats/tiny.gif", bomb_gif())
    settings = Settings(image_max_pixels=1_000_000)
    destination = tmp_path / "out"

    with pytest.raises(ImageTooLargeError) as caught:
        extract_archive(archive, destination, settings)
    assert caught.value.message == (
        "archive member 'cats/tiny.gif' is a 30000x30000 image (900000000 pixels),"
        " more than 1000000 (image_max_pixels)"
    )
    assert not destination.exists()
