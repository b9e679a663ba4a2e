"""A small synthetic dataset of drawn shapes, for try-outs, tests and benchmarks.

Each class is a shape drawn at a random position, size and colour on a random background,
so a classifier has to learn the shape, not a colour or a place. Deterministic per seed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def make_shapes_dataset(
    root: Path,
    images_per_class: int = 30,
    image_size: int = 64,
    classes: tuple[str, ...] = SHAPES,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write ``<root>/<shape>/<n>.png|jpg`` and return ``root``."""
    unknown = set(classes) - set(SHAPES)
    if unknown:
        raise ValueError(f"unknown shapes: {sorted(unknown)}")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty")
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    for shape in classes:
        folder = root / shape
        folder.mkdir(parents=True)
        for n in range(images_per_class):
            image = draw_shape(shape, image_size, rng)
            # Mix encodings the way real uploads do.
            suffix = "png" if n % 2 == 0 else "jpg"
            image.save(folder / f"{shape}_{n:04d}.{suffix}", quality=95)
    return root


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    background, foreground = _contrasting_colours(rng)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.2, 0.35) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=foreground)
    elif shape == "square":
        draw.rectangle((cx - radius, cy - radius, cx + radius, cy + radius), fill=foreground)
    else:
        points = [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)]
        draw.polygon(points, fill=foreground)
    return image


def _contrasting_colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    dark = tuple(int(v) for v in rng.integers(0, 90, size=3))
    light = tuple(int(v) for v in rng.integers(160, 256, size=3))
    return (dark, light) if rng.random() < 0.5 else (light, dark)


def make_digits_dataset(
    root: Path,
    digits: tuple[int, ...],
    per_class: int | None = None,
    exclude: frozenset[int] = frozenset(),
    seed: int = 0,
) -> tuple[Path, list[int]]:
    """Write scikit-learn's 8x8 handwritten digits as ``<root>/digit_<d>/<n>.png``.

    Args:
        digits: which digits become classes.
        per_class: how many images of each (a seeded sample); all of them when None.
        exclude: indices into scikit-learn's digits that must not be used.

    Returns:
        ``root`` and the indices of the digits written, so another split can exclude them.
    """
    from sklearn.datasets import load_digits  # a development dependency

    data = load_digits()
    pixels = (data.images * (255 / 16)).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for digit in digits:
        candidates = [i for i in np.flatnonzero(data.target == digit) if i not in exclude]
        if per_class is not None:
            candidates = sorted(rng.choice(candidates, per_class, replace=False).tolist())
        chosen.extend(int(i) for i in candidates)
    for i in chosen:
        folder = root / f"digit_{data.target[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).convert("RGB").save(folder / f"{i:04d}.png")
    return root, chosen
