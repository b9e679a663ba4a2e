"""Hand-made image bytes for the decompression-bomb tests: GIFs with frames larger than their
screen, PNG headers without pixels, PNGs Pillow refuses but libpng decodes."""

from __future__ import annotations

import struct
import zlib
from functools import cache

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
