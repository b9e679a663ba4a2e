"""Picking the misclassified held-out images and writing their thumbnails."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.training.mistakes import Mistake, find_mistakes, save_thumbnail, write_thumbnails

CLASSES = ("cat", "dog", "fox")


def write_picture(path: Path, size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(sum(size))
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode == "P":
        image = image.quantize(16)
        image.info["transparency"] = 0
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def jpeg_size(path: Path) -> tuple[str, str, tuple[int, int]]:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return image.format, image.mode, image.size


def test_mistakes_are_the_wrong_answers_most_confident_first():
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],  # cat, right
            [0.2, 0.7, 0.1],  # cat as dog, 0.7
            [0.6, 0.3, 0.1],  # dog as cat, 0.6
            [0.1, 0.1, 0.8],  # dog as fox, 0.8
            [0.3, 0.3, 0.4],  # fox, right
            [0.1, 0.7, 0.2],  # fox as dog, 0.7: ties with row 1, comes after it
        ],
        dtype=np.float32,
    )
    labels = np.array([0, 0, 1, 1, 2, 2])
    paths = [f"img{i}.png" for i in range(6)]

    found = find_mistakes(probabilities, labels, paths)

    assert [(m.path.name, m.true_index, m.predicted_index) for m in found] == [
        ("img3.png", 1, 2),
        ("img1.png", 0, 1),
        ("img5.png", 2, 1),
        ("img2.png", 1, 0),
    ]
    assert [m.score for m in found] == pytest.approx([0.8, 0.7, 0.7, 0.6], abs=1e-6)


def test_a_perfect_model_has_no_mistakes():
    probabilities = np.eye(3)
    assert find_mistakes(probabilities, np.arange(3), ["a", "b", "c"]) == ()


def test_thumbnails_keep_the_most_confident_mistakes_of_each_class(tmp_path: Path):
    picture = write_picture(tmp_path / "data" / "wide.png", (300, 150))
    # Five cat mistakes and one dog mistake, ranked by score across classes.
    scores = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7]
    true = [0, 0, 1, 0, 0, 0]
    mistakes = [Mistake(picture, t, 2, s) for t, s in zip(true, scores, strict=True)]

    summary = write_thumbnails(mistakes, CLASSES, tmp_path / "out", 10**6, per_class=3)

    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [(i["true_label"], i["predicted_label"], i["score"]) for i in index["items"]] == [
        ("cat", "fox", 0.95),
        ("cat", "fox", 0.9),
        ("dog", "fox", 0.85),
        ("cat", "fox", 0.8),
    ]
    assert [i["file"] for i in index["items"]] == ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg"]
    assert summary == {
        "total": 6,
        "thumbnails": 4,
        "skipped": 0,
        "limit_per_class": 3,
        "max_side": 128,
    }
    assert {k: v for k, v in index.items() if k != "items"} == {"format": 1, **summary}
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg", "index.json"]
    for name in files[:-1]:
        assert jpeg_size(tmp_path / "out" / name) == ("JPEG", "RGB", (128, 64))


def test_an_image_that_cannot_be_used_gives_way_to_the_next_of_its_class(tmp_path: Path):
    good = write_picture(tmp_path / "good.png", (40, 30))
    big = write_picture(tmp_path / "big.png", (200, 100))
    broken = tmp_path / "broken.png"
    broken.write_bytes(big.read_bytes()[:60])  # a valid header, then nothing
    mistakes = [
        Mistake(big, 0, 1, 0.9),  # over the pixel limit below
        Mistake(broken, 0, 1, 0.8),
        Mistake(tmp_path / "gone.png", 0, 1, 0.75),
        Mistake(good, 0, 1, 0.7),
        Mistake(good, 0, 1, 0.6),
    ]

    summary = write_thumbnails(mistakes, CLASSES, tmp_path / "out", 10_000, per_class=1)

    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [(i["file"], i["score"]) for i in index["items"]] == [("0001.jpg", 0.7)]
    assert (summary["total"], summary["thumbnails"], summary["skipped"]) == (5, 1, 3)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0001.jpg", "index.json"]
    assert jpeg_size(tmp_path / "out" / "0001.jpg") == ("JPEG", "RGB", (40, 30))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` over the data of one pixel."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())  # the 1x1 image data stays: far too little
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("width", "max_pixels", "expected"),
    [
        (10_000, 10**7, "PNG is 10000x10000, over the 10000000-pixel limit"),
        (50_000, 10**10, "could be decompression bomb"),  # Pillow's own bound, met first
    ],
)
def test_an_image_over_the_pixel_limit_is_refused_on_its_header(
    tmp_path: Path, width: int, max_pixels: int, expected: str
):
    # Decoding these would fail differently (the data is one pixel) or allocate gigabytes.
    source = png_header_only(tmp_path / "huge.png", width, width)

    why = save_thumbnail(source, tmp_path / "t.jpg", max_pixels=max_pixels)

    assert why is not None and expected in why
    assert not (tmp_path / "t.jpg").exists()


@pytest.mark.parametrize(
    ("mode", "fmt", "size", "expected"),
    [
        ("RGB", "JPEG", (1000, 400), (128, 51)),
        ("L", "PNG", (64, 256), (32, 128)),
        ("P", "PNG", (50, 20), (50, 20)),
        ("RGBA", "PNG", (129, 129), (128, 128)),
        ("P", "GIF", (300, 300), (128, 128)),
        ("RGB", "BMP", (20, 10), (20, 10)),
    ],
)
def test_every_kind_of_image_becomes_a_small_rgb_jpeg(
    tmp_path: Path, mode: str, fmt: str, size: tuple[int, int], expected: tuple[int, int]
):
    source = write_picture(tmp_path / f"source.{fmt.lower()}", size, mode, fmt)

    assert save_thumbnail(source, tmp_path / "t.jpg", max_pixels=10**7) is None

    assert jpeg_size(tmp_path / "t.jpg") == ("JPEG", "RGB", expected)


def test_not_an_image_is_skipped(tmp_path: Path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert save_thumbnail(text, tmp_path / "t.jpg", 10**6) == (
        "not a JPEG, PNG, GIF, BMP or WebP image"
    )
