"""Hand-made image bytes for the decompression-bomb tests: GIFs with frames larger than their
screen, PNG, JPEG, BMP, WebP and JPEG XL headers declaring sizes their data does not hold,
PNGs Pillow refuses but libpng decodes, and lossless WebPs of any size in 32 bytes."""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

from PIL import Image

ONE_PIXEL = b"\x02\x02\x44\x01\x00"
GRAPHIC_CONTROL = b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # a 0.1 s delay
LOOP_FOREVER = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
COMMENT = b"\x21\xfe\x05hello\x03abc\x00"


def lzw_zeros(pixels: int) -> bytes:
    """``pixels`` copies of colour 0 as giflib's encoder (``EGifCompressLine``) writes them.

    Minimum code size 2. In a run of one colour every code stands for one pixel more than
    the last, so a 30000x30000 frame takes about 600 KB.
    """
    out = bytearray()
    acc = filled = 0
    running, bits = 6, 3  # next free code (after clear 4 and end 5), code width

    def emit(code: int) -> None:
        nonlocal acc, filled, bits
        acc |= code << filled
        filled += bits
        while filled >= 8:
            out.append(acc & 0xFF)
            acc, filled = acc >> 8, filled - 8
        if running >= 1 << bits and code <= 4095:
            bits += 1

    emit(4)
    longest, remaining = 1, pixels
    while True:
        run = min(longest, remaining)
        remaining -= run
        emit(0 if run == 1 else run + 4)  # the code of run zeros: 0, then 6, 7, ...
        if remaining == 0:
            break
        if running >= 4095:  # the table is full: giflib clears it
            emit(4)
            running, bits, longest = 6, 3, 1
        else:
            running, longest = running + 1, run + 1
    emit(5)
    out += bytes([acc]) if filled else b""
    return b"\x02" + sub_blocks(bytes(out))


def sub_blocks(data: bytes, size: int = 255) -> bytes:
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(bytes([len(chunk)]) + chunk for chunk in chunks) + b"\x00"


def frame(left: int, top: int, width: int, height: int, data: bytes | None = None) -> bytes:
    """An image descriptor (no local colour table) and its pixel data (all colour 0)."""
    pixels = lzw_zeros(width * height) if data is None else data
    return b"\x2c" + struct.pack("<HHHHB", left, top, width, height, 0) + pixels


def gif(screen: tuple[int, int], *blocks: bytes, trailer: bytes = b"\x3b") -> bytes:
    """GIF89a with a 2-colour global table, then ``blocks`` (frames, extensions)."""
    head = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    return head + b"".join(blocks) + trailer


@cache
def bomb_gif() -> bytes:
    """A 1x1 GIF whose second frame is a complete 30000x30000: 600 KB, 3.4 GiB to decode.

    Pillow sizes a GIF by its screen and first frame, and saw a 1x1 image here.
    """
    return gif((1, 1), frame(0, 0, 1, 1, ONE_PIXEL), frame(0, 0, 30_000, 30_000))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with no real pixel data behind it."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + body))
        return struct.pack(">I", len(body)) + tag + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_pillow_cannot_read(width: int, height: int) -> bytes:
    """A black 1-bit PNG with a bad checksum on a text chunk before its pixels.

    libpng, and so TensorFlow, only warns about an ancillary chunk's checksum and decodes
    the image; Pillow refuses the header.
    """

    def chunk(tag: bytes, body: bytes, crc: int | None = None) -> bytes:
        checksum = zlib.crc32(tag + body) if crc is None else crc
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", checksum)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = (b"\x00" + bytes((width + 7) // 8)) * height
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", b"a\x00b", crc=1)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


# -- WebP, JPEG, BMP and JPEG XL headers -----------------------------------------------------


def bits_le(fields: list[tuple[int, int]]) -> bytes:
    """``(value, width)`` fields packed least significant bit first, as VP8L and JPEG XL do."""
    packed = filled = 0
    for value, width in fields:
        packed |= value << filled
        filled += width
    return packed.to_bytes((filled + 7) // 8, "little")


def riff_webp(*chunks: tuple[bytes, bytes]) -> bytes:
    """A WebP file of ``(tag, payload)`` chunks."""
    body = b"".join(
        tag + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) % 2)
        for tag, data in chunks
    )
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def vp8l_solid(width: int, height: int, rgb: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    """A lossless bitstream of one colour: each of its five prefix codes has a single symbol,
    which costs no bits, so any size up to 16384x16384 takes 12 bytes."""
    red, green, blue = rgb
    header = [(0x2F, 8), (width - 1, 14), (height - 1, 14), (0, 1), (0, 3)]
    # No transform, no colour cache, no meta prefix codes.
    flags = [(0, 1), (0, 1), (0, 1)]
    # Simple prefix codes of one 8-bit symbol: green, red, blue, alpha; then the distance
    # code's one 1-bit symbol.
    codes = [field for symbol in (green, red, blue, 255) for field in _one_symbol(symbol, 8)]
    codes += _one_symbol(0, 1)
    return bits_le(header + flags + codes)


def _one_symbol(symbol: int, width: int) -> list[tuple[int, int]]:
    return [(1, 1), (0, 1), (int(width == 8), 1), (symbol, width)]


def webp_solid(width: int, height: int, rgb: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    """A real lossless WebP of one colour: 32 bytes however large (libwebp decodes it)."""
    return riff_webp((b"VP8L", vp8l_solid(width, height, rgb)))


def webp_canvas_only(width: int, height: int) -> bytes:
    """An extended WebP (VP8X) declaring a canvas, with no image after it.

    libwebp reports the canvas all the same, and TensorFlow allocates it before failing.
    """
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return riff_webp((b"VP8X", bytes(4) + canvas))


def webp_lossy_declaring(width: int, height: int) -> bytes:
    """A small lossy WebP from Pillow whose VP8 frame header declares ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format="WEBP", lossless=False)
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
    struct.pack_into("<HH", data, 26, width, height)
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small baseline JPEG from Pillow whose frame header (SOF0) declares another size."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring ``width`` x ``height``, with one row of pixels behind it."""
    pixels = bytes((3 * width + 3) // 4 * 4)
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info + pixels


def jpeg_xl_declaring(width: int, height: int) -> bytes:
    """A JPEG XL codestream header declaring ``width`` x ``height`` (each up to 2**18).

    The size header: not a multiple of 8, the height in 18 bits, no aspect ratio, the width
    in 18 bits; then default image metadata. libjxl reads the size from this alone.
    """
    size = [(0, 1), (2, 2), (height - 1, 18), (0, 3), (2, 2), (width - 1, 18), (1, 1)]
    return b"\xff\x0a" + bits_le(size) + bytes(16)
