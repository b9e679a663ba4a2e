"""Image headers: what an image is and how many pixels decoding it would allocate.

Only the header is parsed; no pixel is decoded. Both the archive extractor (refusing an
upload) and the dataset scan (skipping a file) judge images with these functions.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import NamedTuple

from PIL import Image

# The formats the decoder (tf.io.decode_image) reads, by their first bytes.
SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}
HEAD_BYTES = max(len(signature) for signature in SIGNATURES)


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
    """The header declares a size past Pillow's own decompression-bomb limit."""


def image_kind(head: bytes) -> str | None:
    """``JPEG``, ``PNG``, ``GIF`` or ``BMP`` from the first bytes, or None for anything else."""
    return next((kind for sig, kind in SIGNATURES.items() if head.startswith(sig)), None)


def read_header(source: Path | bytes, kind: str) -> ImageHeader:
    """The declared width and height of an image of ``kind`` (from ``image_kind``).

    Raises:
        BombHeaderError: past Pillow's bomb limit (certainly too large).
        UnreadableHeaderError: a damaged header; decoding it would fail too.
    """
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
