"""Helpers that write small real image files for tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (12, 10), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, fmt: str = "PNG", size: tuple[int, int] = (12, 10), seed: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(fmt, size, seed))
    return path


def write_classes(root: Path, counts: dict[str, int], fmt: str = "PNG") -> Path:
    """``root/<class>/img<i>.<fmt>`` with ``counts[class]`` distinct images each."""
    seed = 0
    for name, count in counts.items():
        for i in range(count):
            seed += 1
            write_image(root / name / f"img{i}.{fmt.lower()}", fmt, seed=seed)
    return root
