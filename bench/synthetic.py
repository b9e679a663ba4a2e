"""Drawn shapes on textured backgrounds: class folders of many classes, at any size.

Every image is one shape (rotated, scaled, placed at random) filled with one texture on a
background of another (stripes at any angle, checks, dots, smooth noise, flat colour), so a
classifier has to learn the outline, not a colour, a texture or a place. Two disjoint sets
of shapes make a pretraining task and a different transfer task with the same image
statistics, the way ImageNet and a user's own classes relate. Deterministic per seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Outlines as polygons on the unit circle (angle in turns -> radius), so rotating is cheap.
Outline = Callable[[int], list[tuple[float, float]]]


def _regular(sides: int, turn: float = 0.0) -> list[tuple[float, float]]:
    return [(turn + k / sides, 1.0) for k in range(sides)]


def _star(points: int, inner: float) -> list[tuple[float, float]]:
    return [(k / (2 * points), 1.0 if k % 2 == 0 else inner) for k in range(2 * points)]


def _circle(_: int) -> list[tuple[float, float]]:
    return [(k / 48, 1.0) for k in range(48)]


def _ellipse(_: int) -> list[tuple[float, float]]:
    # Polar radius of an ellipse with axes 1 and 0.5.
    return [
        (
            k / 48,
            0.5 / math.hypot(0.5 * math.cos(2 * math.pi * k / 48), math.sin(2 * math.pi * k / 48)),
        )
        for k in range(48)
    ]


def _cross(_: int) -> list[tuple[float, float]]:
    # A plus sign: 12 corners at alternating radii and angles.
    arm, corner = 1.0, 0.42
    out: list[tuple[float, float]] = []
    for quarter in range(4):
        base = quarter / 4
        out += [(base - 0.065, arm), (base + 0.065, arm), (base + 0.125, corner)]
    return out


def _arrow(_: int) -> list[tuple[float, float]]:
    return [
        (0.0, 1.0),
        (0.17, 0.75),
        (0.2, 0.45),
        (0.42, 0.8),
        (0.58, 0.8),
        (0.8, 0.45),
        (0.83, 0.75),
    ]


def _crescent(_: int) -> list[tuple[float, float]]:
    outer = [(0.1 + 0.8 * k / 24, 1.0) for k in range(25)]
    inner = [(0.9 - 0.8 * k / 24, 0.35 + 0.3 * math.sin(math.pi * k / 24)) for k in range(25)]
    return outer + inner


OUTLINES: dict[str, Outline] = {
    "circle": _circle,
    "square": lambda _: _regular(4, 0.125),
    "triangle": lambda _: _regular(3, 0.25),
    "star": lambda _: _star(5, 0.45),
    "cross": _cross,
    "hexagon": lambda _: _regular(6),
    "pentagon": lambda _: _regular(5, 0.25),
    "diamond": lambda _: [(0.0, 1.0), (0.25, 0.6), (0.5, 1.0), (0.75, 0.6)],
    "ellipse": _ellipse,
    "arrow": _arrow,
    "crescent": _crescent,
    "star8": lambda _: _star(8, 0.6),
}
# Disjoint: a base pretrained on the first is fine-tuned on the second.
PRETRAIN_SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")
TRANSFER_SHAPES = ("pentagon", "diamond", "ellipse", "arrow", "crescent", "star8")
# How often a fill or a background is textured rather than flat.
TEXTURED = 0.5


def _texture(size: int, rng: np.random.Generator, textured: float) -> np.ndarray:
    """A float32 [size, size, 3] texture in 0–255: flat, or of a random kind and palette."""
    a, b = rng.uniform(0, 255, size=(2, 3))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(1, 5) if rng.random() < textured else 0
    if kind == 0:  # flat
        mix = np.zeros((size, size), np.float32)
    elif kind == 1:  # stripes at any angle
        angle, period = rng.uniform(0, math.pi), rng.uniform(0.06, 0.25)
        mix = (np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period) > 0) * 1.0
    elif kind == 2:  # checks
        period = rng.uniform(0.08, 0.25)
        mix = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    elif kind == 3:  # dots
        period = rng.uniform(0.08, 0.2)
        dx, dy = (x % period) / period - 0.5, (y % period) / period - 0.5
        mix = (dx * dx + dy * dy < 0.08) * 1.0
    else:  # smooth noise
        coarse = rng.uniform(0, 1, size=(6, 6)).astype(np.float32)
        mix = np.asarray(
            Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
        )
    mix = np.clip(mix, 0, 1)[..., None]
    return (a * (1 - mix) + b * mix).astype(np.float32)


def draw(
    shape: str, size: int, rng: np.random.Generator, textured: float = TEXTURED
) -> Image.Image:
    """One image of ``shape``: fill and background each textured with this probability."""
    radius = rng.uniform(0.22, 0.42) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    turn = rng.uniform(0, 1)
    points = [
        (
            cx + r * radius * math.cos(2 * math.pi * (t + turn)),
            cy + r * radius * math.sin(2 * math.pi * (t + turn)),
        )
        for t, r in OUTLINES[shape](size)
    ]
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255
    background, fill = _texture(size, rng, textured), _texture(size, rng, textured)
    # Keep the outline visible: lift or darken the fill away from the background's mean.
    if abs(float(fill.mean() - background.mean())) < 40:
        fill = np.clip(fill + (90 if background.mean() < 128 else -90), 0, 255)
    pixels = background * (1 - alpha) + fill * alpha + rng.normal(0, 4, size=(size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def make_dataset(root: Path, shapes: tuple[str, ...], per_class: int, size: int, seed: int) -> Path:
    """Write ``<root>/<shape>/<n>.jpg|png`` (half of each) and return ``root``."""
    rng = np.random.default_rng(seed)
    for shape in shapes:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            suffix = "png" if n % 2 else "jpg"
            draw(shape, size, rng).save(folder / f"{n:05d}.{suffix}", quality=92)
    return root


def make_arrays(
    shapes: tuple[str, ...], per_class: int, size: int, seed: int, textured: float = TEXTURED
) -> tuple[np.ndarray, np.ndarray]:
    """The same images in memory: float32 [N, size, size, 3] in 0–255 and int labels."""
    rng = np.random.default_rng(seed)
    images = np.empty((len(shapes) * per_class, size, size, 3), np.float32)
    labels = np.repeat(np.arange(len(shapes)), per_class)
    for i, label in enumerate(labels):
        images[i] = np.asarray(draw(shapes[label], size, rng, textured), dtype=np.float32)
    order = rng.permutation(len(labels))
    return images[order], labels[order]
