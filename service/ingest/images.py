"""Image headers: what an image is and how many pixels decoding it would allocate.

Only the header is parsed; no pixel is decoded. The archive extractor (refusing an upload),
the dataset scan (skipping a file), ``POST /predict`` and the model server (refusing a
request) judge images with these functions; the exported serving signature repeats the
judgement in TensorFlow ops (``exporter/image_guard.py``) with the same bounds.
"""

from __future__ import annotations

import io
import mmap
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

# The formats the decoder (tf.io.decode_image) reads, by the first bytes it tells them apart
# by (``ClassifyFileFormat`` in TF 2.21's decode_image_op.cc): any "GIF8" goes to giflib,
# which itself checks only "GIF". WebP is "RIFF", a chunk size, then "WEBP" (``image_kind``).
SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF8": "GIF",
    b"BM": "BMP",
}
# TensorFlow decodes JPEG XL too (codestream, container). Its header is not read here, so
# code that hands bytes to TensorFlow refuses it: nothing judges what it would allocate.
JPEG_XL_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")
HEAD_BYTES = 12  # enough for every signature above and for "RIFF....WEBP"

# Bounds on scanning a GIF, whose size is only known after walking all of it. Past any of
# them the GIF counts as a bomb. giflib keeps every frame's raster (a byte a pixel) until the
# decode ends, so the frames' total is memory too, on top of the canvas.
MAX_GIF_FRAMES = 10_000
MAX_GIF_RASTER_PIXELS = 1 << 28
# Blocks: each extension, each image descriptor and each data sub-block. Sub-blocks hold up
# to 255 bytes; legitimate encoders fill them, so this many blocks is a GIF of hundreds of
# MB. Tiny blocks only make the scan slow (about 0.1 µs a block here, far more in the graph).
MAX_GIF_BLOCKS = 1 << 21

_GIF_SCREEN = struct.Struct("<HHBxx")  # logical screen: width, height, flags (after GIF89a)
_GIF_FRAME = struct.Struct("<HHHHB")  # image descriptor: left, top, width, height, flags
_GIF_IMAGE, _GIF_EXTENSION = 0x2C, 0x21
_Buffer = bytes | mmap.mmap


class ImageHeader(NamedTuple):
    kind: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


class UnreadableHeaderError(ValueError):
    """The bytes start like an image but the header cannot be parsed."""


class BombHeaderError(ValueError):
    """The header declares a size past Pillow's own decompression-bomb limit.

    Also a GIF past the bounds of scanning it (``MAX_GIF_FRAMES``, ``MAX_GIF_RASTER_PIXELS``,
    ``MAX_GIF_BLOCKS``).
    """


def image_kind(head: bytes) -> str | None:
    """``JPEG``, ``PNG``, ``GIF``, ``BMP`` or ``WebP`` from the first bytes, else None."""
    kind = next((kind for sig, kind in SIGNATURES.items() if head.startswith(sig)), None)
    if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return kind


def unsized_kind(head: bytes) -> str | None:
    """``JPEG XL`` for a format TensorFlow decodes but whose size is not read here, else None."""
    return "JPEG XL" if head.startswith(JPEG_XL_SIGNATURES) else None


def read_header(source: Path | bytes, kind: str) -> ImageHeader:
    """The width and height of the canvas the decoder allocates for an image of ``kind``.

    ``kind`` comes from ``image_kind``. For PNG, JPEG and BMP that is the header's size (a
    top-down BMP's negative height counts as its absolute value); for GIF it is not the
    logical screen but follows the frames, see ``_gif_header``; for WebP it is what libwebp
    reports, read by hand, see ``_webp_header``.

    Raises:
        BombHeaderError: past Pillow's bomb limit, or a GIF past the scan's bounds
            (certainly too large).
        UnreadableHeaderError: a header that cannot be parsed. Decoding a GIF or BMP would
            fail too, but TensorFlow may decode a PNG or JPEG whose header Pillow refuses
            (libpng only warns about a bad ancillary checksum), and libwebp reads layouts
            the parser here may not know: code that hands images to TensorFlow refuses
            those rather than pass them on.
    """
    if kind == "GIF":
        return _read_gif(source)
    if kind == "WebP":
        return _webp_header(_read_head(source, _WEBP_HEADER_BYTES))
    # Imported here, not at the top: the API starts without Pillow and pays for it on the
    # first image it judges (GIF and WebP never need it).
    from PIL import Image

    target = io.BytesIO(source) if isinstance(source, bytes) else source
    # Pillow's bomb guard warns on big sizes: the warning is silenced here (setting
    # MAX_IMAGE_PIXELS to None instead would drop the guard for other threads meanwhile),
    # and its error means "too large" anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(target, formats=[kind]) as image:
                width, height = image.size
        except Image.DecompressionBombError as exc:
            raise BombHeaderError(str(exc)) from exc
        except Exception as exc:  # Pillow raises assorted types for damaged headers
            raise UnreadableHeaderError(f"unreadable {kind} header") from exc
    return ImageHeader(kind, width, height)


# -- GIF -------------------------------------------------------------------------------------


def _read_gif(source: Path | bytes) -> ImageHeader:
    if isinstance(source, bytes):
        return _gif_header(source)
    # Mapped, not read: only the block headers are touched, however large the file.
    try:
        with source.open("rb") as file:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
        raise UnreadableHeaderError("unreadable GIF header") from exc
    with data:
        return _gif_header(data)


def _gif_header(data: _Buffer) -> ImageHeader:
    """The GIF's canvas, judged from its image descriptors without decoding a pixel.

    TensorFlow's decoder (``tensorflow/core/lib/gif/gif_io.cc``, TF 2.21) has giflib slurp
    every frame, keeping each frame's raster, then allocates a canvas of the largest frame
    width by the largest frame height, ignoring the logical screen and the frames' offsets
    (checked with tf.io.decode_image: a 100x100 screen with one 1x1 frame decodes to 1x1, a
    1x1 screen with a 30x20 frame at (50, 60) to 20x30). Older TensorFlow allocated the
    logical screen instead, and decoders that place frames at their offsets need left + width
    by top + height. The size here is the largest of all of these, so it bounds them all.
    """
    if len(data) < 6 + _GIF_SCREEN.size:
        raise UnreadableHeaderError("truncated GIF header")
    width, height, flags = _GIF_SCREEN.unpack_from(data, 6)
    start = 6 + _GIF_SCREEN.size + _color_table_bytes(flags)
    frames = raster = 0
    for left, top, frame_width, frame_height in _gif_frames(data, start):
        frames += 1
        if frames > MAX_GIF_FRAMES:
            raise BombHeaderError(f"GIF has more than {MAX_GIF_FRAMES} frames")
        raster += frame_width * frame_height
        width, height = max(width, left + frame_width), max(height, top + frame_height)
    if frames == 0:
        # giflib fails the decode before allocating anything: no frame to decode.
        raise UnreadableHeaderError("GIF has no complete image descriptor")
    # The canvas costs 3 bytes a pixel, the rasters one: where they cost more than the
    # canvas, its size alone would understate the memory.
    if raster > max(MAX_GIF_RASTER_PIXELS, 3 * width * height):
        raise BombHeaderError(
            f"GIF frames hold {raster} pixels in all, more than {MAX_GIF_RASTER_PIXELS}"
        )
    return ImageHeader("GIF", width, height)


def _gif_frames(data: _Buffer, pos: int) -> Iterator[tuple[int, int, int, int]]:
    """``(left, top, width, height)`` of each frame giflib allocates, from offset ``pos``.

    The walk ends where giflib's does: at the trailer, a block it does not know, a frame it
    refuses (zero width or height) or the end of the data. A frame whose descriptor is
    complete counts even when its pixel data is cut short: giflib allocates its raster first.
    """
    blocks = 0
    while pos < len(data):
        if data[pos] == _GIF_EXTENSION:
            pos, count = _skip_sub_blocks(data, pos + 2)  # after the introducer and label
        elif data[pos] == _GIF_IMAGE:
            found = _frame_at(data, pos + 1)
            if found is None:
                return
            box, pos = found
            yield box
            pos, count = _skip_sub_blocks(data, pos + 1)  # after the LZW minimum code size
        else:
            return  # the trailer (0x3B), or a byte giflib stops at
        blocks += 1 + count  # the block itself counts too: empty extensions are blocks
        if blocks > MAX_GIF_BLOCKS:
            raise BombHeaderError(f"GIF has more than {MAX_GIF_BLOCKS} data blocks")


def _frame_at(data: _Buffer, pos: int) -> tuple[tuple[int, int, int, int], int] | None:
    """The box of the image descriptor at ``pos`` and the offset of its pixel data.

    None where giflib allocates no raster: a cut-off descriptor or color table, no byte
    left for the LZW minimum code size, or a zero width or height.
    """
    if pos + _GIF_FRAME.size > len(data):
        return None
    left, top, width, height, flags = _GIF_FRAME.unpack_from(data, pos)
    pos += _GIF_FRAME.size + _color_table_bytes(flags)
    if pos >= len(data) or width == 0 or height == 0:
        return None
    return (left, top, width, height), pos


def _skip_sub_blocks(data: _Buffer, pos: int) -> tuple[int, int]:
    """The offset after the sub-blocks at ``pos`` (past the end when cut short), and their count.

    The walk is capped: past ``MAX_GIF_BLOCKS`` blocks it stops early, leaving the count over
    the cap for the caller to refuse.
    """
    end, count = len(data), 0
    while pos < end and count <= MAX_GIF_BLOCKS:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos, count
        count += 1
    return pos, count


def _color_table_bytes(flags: int) -> int:
    """Bytes of the color table a screen or image descriptor's ``flags`` announce."""
    return 3 << ((flags & 0x07) + 1) if flags & 0x80 else 0


# -- WebP ------------------------------------------------------------------------------------

# "RIFF", size, "WEBP" (12 bytes), a chunk header (8), and a VP8X chunk's 10 bytes of payload.
_WEBP_HEADER_BYTES = 30
_VP8_START_CODE = b"\x9d\x01\x2a"
_VP8L_SIGNATURE = 0x2F


def _webp_header(head: bytes) -> ImageHeader:
    """The size libwebp's ``WebPGetFeatures`` reports, which TensorFlow allocates.

    An extended file (a VP8X chunk first) is sized by the canvas it declares: libwebp
    answers it even when no image data follows, and refuses an image of another size. A
    simple file is sized by its bitstream's frame header, lossy (VP8) or lossless (VP8L),
    in its chunk or, as libwebp also reads it, bare after "WEBP" (TF 2.21, libwebp 1.x).
    """
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= _WEBP_HEADER_BYTES:
        width, height = (int.from_bytes(head[at : at + 3], "little") + 1 for at in (24, 27))
        return ImageHeader("WebP", width, height)
    if chunk == b"VP8 ":
        size = _vp8_size(head[20:])
    elif chunk == b"VP8L":
        size = _vp8l_size(head[20:])
    else:
        bare = head[12:]
        size = _vp8l_size(bare) if _is_vp8l(bare) else _vp8_size(bare)
    if size is None:
        raise UnreadableHeaderError("unreadable WebP header")
    return ImageHeader("WebP", *size)


def _vp8_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a lossy key frame's header: 14 bits each after the start code."""
    if len(frame) < 10 or frame[3:6] != _VP8_START_CODE:
        return None
    width, height = (int.from_bytes(frame[at : at + 2], "little") & 0x3FFF for at in (6, 8))
    return (width, height) if width and height else None


def _vp8l_size(bitstream: bytes) -> tuple[int, int] | None:
    """Width and height from a lossless header: 14 bits each, minus one, after the signature."""
    if not _is_vp8l(bitstream):
        return None
    bits = int.from_bytes(bitstream[1:5], "little")
    return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1


def _is_vp8l(bitstream: bytes) -> bool:
    # libwebp's VP8LCheckSignature: the signature byte, then version bits that must be 0.
    return len(bitstream) >= 5 and bitstream[0] == _VP8L_SIGNATURE and bitstream[4] >> 5 == 0


def _read_head(source: Path | bytes, size: int) -> bytes:
    if isinstance(source, bytes):
        return source[:size]
    try:
        with source.open("rb") as file:
            return file.read(size)
    except OSError as exc:
        raise UnreadableHeaderError("unreadable image header") from exc
