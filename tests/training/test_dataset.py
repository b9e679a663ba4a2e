from __future__ import annotations

import shutil
import tarfile
import zipfile

import numpy as np
import pytest

from service.errors import DatasetError, UnsafeArchiveMemberError
from service.training.dataset import open_dataset, scan_dataset, stratified_split, validate_image
from tests.training.images import image_bytes, write_classes, write_image


def test_directory_dataset_is_indexed_with_sorted_classes(tmp_path, settings):
    write_classes(tmp_path / "ds", {"dogs": 3, "cats": 2})

    index = scan_dataset(tmp_path / "ds", settings)

    assert index.classes == ("cats", "dogs")
    assert index.class_counts == {"cats": 2, "dogs": 3}
    assert [p.relative_to(tmp_path / "ds").as_posix() for p in index.paths] == [
        "cats/img0.png",
        "cats/img1.png",
        "dogs/img0.png",
        "dogs/img1.png",
        "dogs/img2.png",
    ]
    assert index.labels == (0, 0, 1, 1, 1)
    assert index.skipped == ()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_every_supported_format_is_accepted(tmp_path, settings, fmt):
    write_classes(tmp_path / "ds", {"a": 2, "b": 2}, fmt=fmt)

    index = scan_dataset(tmp_path / "ds", settings)

    assert len(index.paths) == 4 and index.skipped == ()


def test_images_in_subfolders_of_a_class_belong_to_it(tmp_path, settings):
    write_classes(tmp_path / "ds", {"a": 2, "b": 2})
    write_image(tmp_path / "ds" / "a" / "nested" / "deep.png", seed=99)

    index = scan_dataset(tmp_path / "ds", settings)

    assert index.class_counts == {"a": 3, "b": 2}


def test_one_wrapping_top_level_folder_is_stepped_into(tmp_path, settings):
    write_classes(tmp_path / "ds" / "my_photos", {"a": 2, "b": 2})
    (tmp_path / "ds" / ".DS_Store").write_bytes(b"junk")

    index = scan_dataset(tmp_path / "ds", settings)

    assert index.classes == ("a", "b")
    assert index.root == tmp_path / "ds" / "my_photos"


def test_os_junk_and_hidden_files_are_ignored_silently(tmp_path, settings):
    root = write_classes(tmp_path / "ds", {"a": 2, "b": 2})
    (root / "a" / ".DS_Store").write_bytes(b"\0\0")
    (root / "a" / "Thumbs.db").write_bytes(b"\0\0")
    (root / "a" / "._img0.png").write_bytes(b"\0\0")
    write_image(root / "__MACOSX" / "a" / "img0.png")
    write_image(root / ".hidden_class" / "x.png")

    index = scan_dataset(root, settings)

    assert index.classes == ("a", "b")
    assert len(index.paths) == 4
    assert index.skipped == ()


def test_corrupt_and_non_image_files_are_skipped_with_reasons(tmp_path, settings):
    root = write_classes(tmp_path / "ds", {"a": 2, "b": 2})
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / "broken.jpg").write_bytes(image_bytes("JPEG")[:40])
    (root / "b" / "empty.png").write_bytes(b"")
    (root / "stray.png").write_bytes(image_bytes())

    index = scan_dataset(root, settings)

    reasons = {s.path: s.reason for s in index.skipped}
    assert set(reasons) == {"a/notes.txt", "b/broken.jpg", "b/empty.png", "stray.png"}
    assert reasons["a/notes.txt"] == "not a JPEG, PNG, GIF, BMP or WebP image"
    assert reasons["b/empty.png"] == "not a JPEG, PNG, GIF, BMP or WebP image"
    assert reasons["b/broken.jpg"].startswith(("cannot decode JPEG", "unreadable JPEG"))
    assert reasons["stray.png"] == "not inside a class folder"
    assert index.class_counts == {"a": 2, "b": 2}


def test_image_over_the_pixel_limit_is_skipped(tmp_path, settings):
    root = write_classes(tmp_path / "ds", {"a": 2, "b": 2})
    write_image(root / "a" / "huge.png", size=(300, 300))

    index = scan_dataset(root, settings.model_copy(update={"image_max_pixels": 50_000}))

    assert [(s.path, s.reason) for s in index.skipped] == [
        ("a/huge.png", "PNG is 300x300, over the 50000-pixel limit")
    ]


def test_symlinked_file_is_not_followed(tmp_path, settings):
    root = write_classes(tmp_path / "ds", {"a": 2, "b": 2})
    outside = write_image(tmp_path / "secret.png")
    (root / "a" / "link.png").symlink_to(outside)

    index = scan_dataset(root, settings)

    assert [(s.path, s.reason) for s in index.skipped] == [
        ("a/link.png", "symbolic links are not followed")
    ]


def test_single_class_is_rejected_naming_it(tmp_path, settings):
    write_classes(tmp_path / "ds", {"only": 5})

    with pytest.raises(DatasetError, match="at least 2 class folders, found 1: 'only'"):
        scan_dataset(tmp_path / "ds", settings)


def test_class_with_too_few_usable_images_is_named(tmp_path, settings):
    root = write_classes(tmp_path / "ds", {"big": 4, "tiny": 1})
    (root / "empty").mkdir()
    (root / "tiny" / "bad.png").write_text("nope")

    with pytest.raises(DatasetError) as caught:
        scan_dataset(root, settings)

    assert caught.value.message == (
        "every class needs at least 2 usable images; too few in: 'empty' (0), 'tiny' (1)"
    )
    assert caught.value.status == 422


def test_minimum_per_class_comes_from_settings(tmp_path, settings):
    write_classes(tmp_path / "ds", {"a": 3, "b": 3})

    with pytest.raises(DatasetError, match=r"'a' \(3\), 'b' \(3\)"):
        scan_dataset(tmp_path / "ds", settings.model_copy(update={"min_images_per_class": 4}))


def test_fingerprint_is_stable_and_tracks_names_and_contents(tmp_path, settings):
    root = write_classes(tmp_path / "ds", {"a": 2, "b": 2})
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    first = scan_dataset(root, settings).fingerprint

    assert scan_dataset(copy, settings).fingerprint == first
    (copy / "a" / "img0.png").rename(copy / "a" / "renamed.png")
    renamed = scan_dataset(copy, settings).fingerprint
    write_image(root / "a" / "img0.png", seed=1234)
    changed = scan_dataset(root, settings).fingerprint

    assert len({first, renamed, changed}) == 3
    assert len(first) == 64


def test_zip_and_tar_archives_give_the_same_dataset_as_the_folder(tmp_path, settings):
    root = write_classes(tmp_path / "ds", {"a": 2, "b": 3})
    zip_path = tmp_path / "ds.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(root.rglob("*.png")):
            archive.write(path, f"ds/{path.relative_to(root).as_posix()}")
    tar_path = tmp_path / "ds.tar.gz"
    with tarfile.open(tar_path, "w:gz") as archive:
        archive.add(root, arcname="ds")
    folder = scan_dataset(root, settings)

    from_zip = open_dataset(zip_path, tmp_path / "job-zip", settings)
    from_tar = open_dataset(tar_path, tmp_path / "job-tar", settings)

    for index in (from_zip, from_tar):
        assert index.classes == folder.classes
        assert index.labels == folder.labels
        assert index.fingerprint == folder.fingerprint


def test_unsafe_archive_is_rejected_before_indexing(tmp_path, settings):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("a/ok.png", image_bytes())
        archive.writestr("../escape.png", image_bytes())

    with pytest.raises(UnsafeArchiveMemberError, match=r"escape\.png"):
        open_dataset(evil, tmp_path / "job", settings)
    assert not (tmp_path / "escape.png").exists()


def test_missing_dataset_path_is_a_clear_error(tmp_path, settings):
    with pytest.raises(DatasetError, match="neither a folder nor an archive"):
        open_dataset(tmp_path / "nope", tmp_path / "job", settings)


def test_validate_image_accepts_gif_and_bmp_bytes():
    assert validate_image(image_bytes("GIF"), 10_000) is None
    assert validate_image(image_bytes("BMP"), 10_000) is None
    assert validate_image(b"GIF89a-truncated", 10_000) is not None


def test_stratified_split_is_seeded_disjoint_and_keeps_every_class():
    labels = [0] * 10 + [1] * 5 + [2] * 2

    train, val = stratified_split(labels, 0.2, seed=7)
    again_train, again_val = stratified_split(labels, 0.2, seed=7)
    _, other_val = stratified_split(labels, 0.2, seed=8)

    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert not np.array_equal(np.sort(val), np.sort(other_val))
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(labels)
    val_labels = np.asarray(labels)[val]
    assert sorted(np.bincount(val_labels).tolist()) == [1, 1, 2]
    assert set(np.asarray(labels)[train]) == {0, 1, 2}
