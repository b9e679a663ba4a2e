"""Fill the Keras cache with the ImageNet weights of every registered backbone.

An image build step (it needs the network). Each backbone is built once for each distinct
weights file it can ask for, with ``weights="imagenet"``: Keras downloads the file into
``$KERAS_HOME/models/`` and checks its hash. Then every file is looked up where
``service.training.backbones`` resolves it, so a worker never needs the network for
``weights: imagenet`` and a renamed file fails the build rather than the first job.

    python fetch_weights.py          download, then check
    python fetch_weights.py --list   print the files it would fetch; download nothing
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# Image sizes at which a backbone may use a different weights file: MobileNetV2 has one per
# size; the other backbones use one file whatever the size.
CANDIDATE_SIZES = (96, 128, 160, 192, 224)


def plan() -> dict[Path, tuple[Any, int]]:
    """Each weights file the registry can resolve → (a backbone that uses it, an image size)."""
    from service.training.backbones import BACKBONES

    files: dict[Path, tuple[Any, int]] = {}
    for backbone in BACKBONES.values():
        if backbone.imagenet_file is None:
            continue  # random initialisation or the user's own weights files only
        # The default size first, so the common file is fetched at the size jobs use.
        for size in (backbone.default_size, *CANDIDATE_SIZES):
            if size >= backbone.min_size:
                files.setdefault(backbone.imagenet_path(size), (backbone, size))
    return files


def fetch(files: dict[Path, tuple[Any, int]]) -> list[Path]:
    """Build each backbone with ImageNet weights; return the files still missing afterwards."""
    for path, (backbone, size) in files.items():
        if path.is_file():
            continue
        print(f"fetching {path.name} ({backbone.name}, {size} px)", flush=True)
        backbone.build((size, size, 3), "imagenet")
    return [path for path in files if not path.is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the files; fetch nothing")
    args = parser.parse_args(argv)
    files = plan()
    if not files:
        print("no backbone has ImageNet weights: nothing to fetch", file=sys.stderr)
        return 1
    if args.list:
        for path, (backbone, size) in files.items():
            print(f"{backbone.name}\t{size}\t{path}")
        return 0
    missing = fetch(files)
    for path in missing:
        print(f"missing after download: {path}", file=sys.stderr)
    if missing:
        return 1
    print(f"{len(files)} weights files in {next(iter(files)).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
