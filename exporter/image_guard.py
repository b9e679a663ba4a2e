"""The pixel limit, judged in TensorFlow ops inside the exported graph, before any decoding.

A SavedModel served by TensorFlow Serving never runs our Python, so ``serving_default`` judges
each image the way ``service.ingest.images`` does for the API and ``ftserve model-server``:
by the canvas the decoder (``tf.io.decode_image``, TF 2.21) will allocate, read from the
header alone, and for a GIF from a walk over its blocks with the same bounds. An image past
the limit fails the request with an InvalidArgumentError that names it; bytes of no known
format go on to the decoder, which refuses them itself.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from exporter.gif_walk import gif_canvas
from service.config import Settings
from service.contract.signatures import BYTES_INPUT
from service.ingest.images import (
    JPEG_XL_SIGNATURES,
    MAX_GIF_BLOCKS,
    MAX_GIF_FRAMES,
    MAX_GIF_RASTER_PIXELS,
    SIGNATURES,
)

# What an exported model refuses wherever it is served: the image_max_pixels default.
DEFAULT_MAX_PIXELS: int = Settings.model_fields["image_max_pixels"].default

_HEAD_BYTES = 32  # every field read outside a GIF lies in the first 30 bytes
# Why an image is refused, besides its size.
_FINE, _FRAMES, _BLOCKS, _RASTER, _UNSIZED = range(5)
_TOO_LARGE_GIF = "is a GIF too large to decode: GIF"
_PROBLEMS = {
    _FRAMES: f"{_TOO_LARGE_GIF} has more than {MAX_GIF_FRAMES} frames",
    _BLOCKS: f"{_TOO_LARGE_GIF} has more than {MAX_GIF_BLOCKS} data blocks",
    _RASTER: f"{_TOO_LARGE_GIF} frames hold more than {MAX_GIF_RASTER_PIXELS} pixels in all",
    _UNSIZED: "is a JPEG XL image, which is refused: its size is not judged",
}

# (width, height, problem) of one image, from its bytes and its first bytes as int64.
_Size = tuple[tf.Tensor, tf.Tensor, tf.Tensor]
_Measure = Callable[[tf.Tensor, tf.Tensor], _Size]


def checked_image(image_bytes: tf.Tensor, index: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """``image_bytes`` (one encoded image) again, once its canvas is judged.

    Args:
        image_bytes: a scalar string.
        index: its position in the request, for the message.
        max_pixels: the most pixels its canvas may hold.

    Returns:
        ``image_bytes``, to decode; where it is too large the step fails instead, with an
        InvalidArgumentError such as ``image_bytes[3] is a 30000x30000 GIF (900000000
        pixels), more than the limit 40000000``.
    """
    head = _head(image_bytes)
    kind = _kind(image_bytes, head)
    branches = [_no_size, *(measure for _, measure in _FORMATS)]
    width, height, problem = tf.switch_case(
        kind, [_branch(measure, image_bytes, head) for measure in branches]
    )
    pixels = tf.cast(width, tf.uint64) * tf.cast(height, tf.uint64)
    fits = (problem == _FINE) & (pixels <= tf.constant(max_pixels, tf.uint64))

    def refuse() -> tf.Tensor:
        name = tf.gather(tf.constant(["", *(name for name, _ in _FORMATS)]), kind)
        size = tf.strings.format("{}x{} ", (width, height))
        count = tf.strings.format(" ({} pixels), more than the limit {}", (pixels, max_pixels))
        reasons = [tf.strings.join(["is a ", size, name, count])]
        reasons += [tf.constant(_PROBLEMS[code]) for code in (_FRAMES, _BLOCKS, _RASTER, _UNSIZED)]
        image = tf.strings.format(f"{BYTES_INPUT}[{{}}] ", (index,))
        message = tf.strings.join([image, tf.gather(tf.stack(reasons), problem)])
        with tf.control_dependencies([tf.debugging.Assert(fits, [message])]):
            return tf.identity(image_bytes)

    return tf.cond(fits, lambda: image_bytes, refuse)


def _branch(measure: _Measure, image_bytes: tf.Tensor, head: tf.Tensor) -> Callable[[], _Size]:
    return lambda: measure(image_bytes, head)


def _head(image_bytes: tf.Tensor) -> tf.Tensor:
    """The first bytes as int64 [_HEAD_BYTES], zeros past the end of a shorter image."""
    start = tf.strings.substr(image_bytes, 0, _HEAD_BYTES)
    padded = tf.strings.join([start, tf.constant(b"\0" * _HEAD_BYTES)])
    head = tf.io.decode_raw(tf.strings.substr(padded, 0, _HEAD_BYTES), tf.uint8)
    return tf.cast(tf.reshape(head, [_HEAD_BYTES]), tf.int64)


def _kind(image_bytes: tf.Tensor, head: tf.Tensor) -> tf.Tensor:
    """The branch for the format the decoder would pick (``ClassifyFileFormat``), 0 for none.

    Its tests run in the same order, so the first that matches wins.
    """
    formats = [name for name, _ in _FORMATS]
    tests = [
        (_starts(head, signature), formats.index(kind)) for signature, kind in SIGNATURES.items()
    ]
    # The decoder reads WebP only past 12 bytes: "RIFF", the size, "WEBP", then the data.
    riff = _starts(head, b"RIFF") & _starts(head[8:], b"WEBP")
    tests.append((riff & (tf.strings.length(image_bytes) > 12), formats.index("WebP")))
    jpeg_xl = tf.reduce_any([_starts(head, signature) for signature in JPEG_XL_SIGNATURES])
    tests.append((jpeg_xl, formats.index("JPEG XL")))
    branch = tf.constant(0)
    for matches, position in reversed(tests):
        branch = tf.where(matches, position + 1, branch)
    return branch


def _starts(head: tf.Tensor, signature: bytes) -> tf.Tensor:
    return tf.reduce_all(head[: len(signature)] == tf.constant(list(signature), tf.int64))


def _le(head: tf.Tensor, start: int, count: int) -> tf.Tensor:
    """The little-endian unsigned number in ``head[start:start + count]``."""
    shifts = tf.constant([8 * i for i in range(count)], tf.int64)
    return tf.reduce_sum(tf.bitwise.left_shift(head[start : start + count], shifts))


def _be(head: tf.Tensor, start: int, count: int) -> tf.Tensor:
    return _le(tf.reverse(head[start : start + count], [0]), 0, count)


def _sized(width: tf.Tensor, height: tf.Tensor, problem: int = _FINE) -> _Size:
    return width, height, tf.constant(problem, tf.int64)


# -- formats read from their first bytes -----------------------------------------------------


def _no_size(image_bytes: tf.Tensor, head: tf.Tensor) -> _Size:
    """Bytes of no format the decoder knows: it refuses them before allocating anything."""
    return _sized(tf.constant(0, tf.int64), tf.constant(0, tf.int64))


def _jpeg(image_bytes: tf.Tensor, head: tf.Tensor) -> _Size:
    # Reads the frame header only (libjpeg's jpeg_read_header); fails on a damaged one, as
    # the decoder would.
    height, width, _ = tf.unstack(tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64))
    return _sized(width, height)


def _png(image_bytes: tf.Tensor, head: tf.Tensor) -> _Size:
    return _sized(_be(head, 16, 4), _be(head, 20, 4))  # IHDR: width, height


def _bmp(image_bytes: tf.Tensor, head: tf.Tensor) -> _Size:
    # Signed 32-bit width and height; a top-down BMP's height is negative.
    width, height = (tf.abs(_signed32(_le(head, at, 4))) for at in (18, 22))
    return _sized(width, height)


def _signed32(value: tf.Tensor) -> tf.Tensor:
    return tf.where(value >= 1 << 31, value - (1 << 32), value)


def _webp(image_bytes: tf.Tensor, head: tf.Tensor) -> _Size:
    """libwebp's ``WebPGetFeatures`` size, as ``service.ingest.images._webp_header`` reads it.

    An extended file's VP8X canvas; else the lossy (VP8) or lossless (VP8L) frame header,
    in its chunk at byte 20 or bare after "WEBP" at byte 12. A frame header that libwebp
    would refuse counts as 0x0: the decoder fails before allocating.
    """
    chunk = head[12:16]
    extended, lossy, lossless = (_starts(chunk, tag) for tag in (b"VP8X", b"VP8 ", b"VP8L"))
    canvas = (_le(head, 24, 3) + 1, _le(head, 27, 3) + 1)
    bare_lossless = _is_vp8l(head, 12)
    sizes = [
        (extended, canvas),
        (lossy, _vp8(head, 20)),
        (lossless, _vp8l(head, 20)),
        (bare_lossless, _vp8l(head, 12)),
    ]
    width, height = _vp8(head, 12)
    for chosen, (chosen_width, chosen_height) in reversed(sizes):
        width = tf.where(chosen, chosen_width, width)
        height = tf.where(chosen, chosen_height, height)
    return _sized(width, height)


def _vp8(head: tf.Tensor, at: int) -> tuple[tf.Tensor, tf.Tensor]:
    start_code = _starts(head[at + 3 :], b"\x9d\x01\x2a")
    width, height = (tf.bitwise.bitwise_and(_le(head, at + i, 2), 0x3FFF) for i in (6, 8))
    zero = tf.constant(0, tf.int64)
    return tf.where(start_code, width, zero), tf.where(start_code, height, zero)


def _vp8l(head: tf.Tensor, at: int) -> tuple[tf.Tensor, tf.Tensor]:
    bits = _le(head, at + 1, 4)
    width = tf.bitwise.bitwise_and(bits, 0x3FFF) + 1
    height = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1
    zero = tf.constant(0, tf.int64)
    signed = _is_vp8l(head, at)
    return tf.where(signed, width, zero), tf.where(signed, height, zero)


def _is_vp8l(head: tf.Tensor, at: int) -> tf.Tensor:
    return (head[at] == 0x2F) & (tf.bitwise.right_shift(head[at + 4], 5) == 0)


def _jpeg_xl(image_bytes: tf.Tensor, head: tf.Tensor) -> _Size:
    """JPEG XL, which the decoder reads but nothing here sizes: refused."""
    return _sized(tf.constant(0, tf.int64), tf.constant(0, tf.int64), _UNSIZED)


# -- GIF -------------------------------------------------------------------------------------


def _gif(image_bytes: tf.Tensor, head: tf.Tensor) -> _Size:
    """The canvas the walk over the GIF's blocks finds, refused past the walk's bounds."""
    canvas = gif_canvas(image_bytes)
    problem = tf.where(canvas.frames > MAX_GIF_FRAMES, _FRAMES, _FINE)
    problem = tf.where((problem == _FINE) & (canvas.blocks > MAX_GIF_BLOCKS), _BLOCKS, problem)
    # The canvas costs 3 bytes a pixel, the frames' rasters one (see _gif_header).
    bound = tf.maximum(
        tf.constant(MAX_GIF_RASTER_PIXELS, tf.int64), 3 * canvas.width * canvas.height
    )
    problem = tf.where((problem == _FINE) & (canvas.raster > bound), _RASTER, problem)
    return canvas.width, canvas.height, tf.cast(problem, tf.int64)


_FORMATS: list[tuple[str, _Measure]] = [
    ("JPEG", _jpeg),
    ("PNG", _png),
    ("GIF", _gif),
    ("BMP", _bmp),
    ("WebP", _webp),
    ("JPEG XL", _jpeg_xl),
]
