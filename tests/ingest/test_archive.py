"""Tests for service.ingest.archive: safe extraction of uploaded zip and tar archives."""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from service.config import Settings
from service.errors import (
    ArchiveLimitError,
    ImageTooLargeError,
    InvalidArchiveError,
    UnsafeArchiveMemberError,
)
from service.ingest import archive as archive_module
from service.ingest.archive import extract_archive, is_archive, scan_archive
from tests.support.images import png_header_only

MiB = 1024 * 1024


# --- helpers -------------------------------------------------------------------------------


def make_settings(
    *,
    archive_max_members: int = 1000,
    archive_max_bytes: int = 64 * MiB,
    archive_max_ratio: float = 100.0,
    image_max_pixels: int = 1_000_000,
) -> Settings:
    """Explicit limits, so that no FTSERVE_* variable in the environment changes a test."""
    return Settings(
        archive_max_members=archive_max_members,
        archive_max_bytes=archive_max_bytes,
        archive_max_ratio=archive_max_ratio,
        image_max_pixels=image_max_pixels,
    )


def png_bytes(size: tuple[int, int] = (8, 8), color: int = 0, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def image_bytes(fmt: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


def make_zip(
    path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def tar_info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            tf.addfile(tar_info(name, size=len(data)), io.BytesIO(data))
    return path


def add_special_tar_member(path: Path, info: tarfile.TarInfo, first: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in first.items():
            tf.addfile(tar_info(name, size=len(data)), io.BytesIO(data))
        tf.addfile(info)
    return path


def extracted_files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file()
    }


def assert_nothing_left(destination: Path) -> None:
    assert not destination.exists() or not any(destination.iterdir())


def patch_zip_field(path: Path, local_offset: int, central_offset: int, fmt: str, value: int):
    """Overwrite one field of the first member in both its local and central headers."""
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, data.find(b"PK\x03\x04") + local_offset, value)
    struct.pack_into(fmt, data, data.find(b"PK\x01\x02") + central_offset, value)
    path.write_bytes(bytes(data))


LAYOUT = {
    "cats/a.png": png_bytes(color=10),
    "cats/b.png": png_bytes(color=20),
    "dogs/c.png": png_bytes(color=30),
}
SAFE_FIRST = {"cats/ok.png": png_bytes()}


# --- normal extraction ---------------------------------------------------------------------


def test_zip_with_class_layout_extracts_exact_files(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "data.zip", LAYOUT)
    destination = tmp_path / "out"

    assert extract_archive(archive, destination, make_settings()) == destination
    assert extracted_files(destination) == LAYOUT


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_with_class_layout_extracts_exact_files(tmp_path: Path, mode: str) -> None:
    archive = make_tar(tmp_path / "data.tar", LAYOUT, mode)
    destination = tmp_path / "out"

    assert extract_archive(archive, destination, make_settings()) == destination
    assert extracted_files(destination) == LAYOUT


def test_format_is_detected_by_content_not_extension(tmp_path: Path) -> None:
    zip_named_tar = make_zip(tmp_path / "data.tar.gz", LAYOUT)
    tar_named_zip = make_tar(tmp_path / "data.zip", LAYOUT, "w:gz")

    assert (
        extracted_files(extract_archive(zip_named_tar, tmp_path / "a", make_settings())) == LAYOUT
    )
    assert (
        extracted_files(extract_archive(tar_named_zip, tmp_path / "b", make_settings())) == LAYOUT
    )


def test_directory_members_are_created_including_empty_ones(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats/", b"")
        zf.writestr("empty/", b"")
        zf.writestr("cats/a.png", LAYOUT["cats/a.png"])

    destination = extract_archive(archive, tmp_path / "out", make_settings())

    assert (destination / "empty").is_dir()
    assert extracted_files(destination) == {"cats/a.png": LAYOUT["cats/a.png"]}


def test_backslash_separators_in_zip_names_make_directories(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "data.zip", {"cats\\a.png": LAYOUT["cats/a.png"]})

    destination = extract_archive(archive, tmp_path / "out", make_settings())
    assert extracted_files(destination) == {"cats/a.png": LAYOUT["cats/a.png"]}


def test_hidden_files_and_macosx_folder_are_still_extracted(tmp_path: Path) -> None:
    members = {"cats/.DS_Store": b"junk", "__MACOSX/cats/._a.png": b"junk", **LAYOUT}
    archive = make_zip(tmp_path / "data.zip", members)

    assert extracted_files(extract_archive(archive, tmp_path / "out", make_settings())) == members


def test_existing_empty_destination_is_used(tmp_path: Path) -> None:
    destination = tmp_path / "out"
    destination.mkdir()
    archive = make_zip(tmp_path / "data.zip", LAYOUT)

    assert extracted_files(extract_archive(archive, destination, make_settings())) == LAYOUT


def test_non_empty_destination_is_refused_and_left_alone(tmp_path: Path) -> None:
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "keep.txt").write_bytes(b"keep")
    archive = make_zip(tmp_path / "data.zip", LAYOUT)

    with pytest.raises(FileExistsError):
        extract_archive(archive, destination, make_settings())
    assert extracted_files(destination) == {"keep.txt": b"keep"}


def test_is_archive_judges_by_content(tmp_path: Path) -> None:
    image = tmp_path / "image.zip"
    image.write_bytes(png_bytes())

    assert is_archive(make_zip(tmp_path / "a.bin", LAYOUT))
    assert is_archive(make_tar(tmp_path / "b.bin", LAYOUT, "w:xz"))
    assert not is_archive(image)
    assert not is_archive(tmp_path / "missing.zip")
    assert not is_archive(tmp_path)


# --- unsafe members ------------------------------------------------------------------------

UNSAFE_NAMES = [
    "../evil.png",
    "cats/../../evil.png",
    "..\\evil.png",
    "cats\\..\\..\\evil.png",
    "/etc/evil.png",
    "\\evil.png",
    "C:/evil.png",
    "c:evil.png",
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_zip_member_with_unsafe_path_is_rejected(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "data.zip", {**SAFE_FIRST, name: b"evil"})
    destination = tmp_path / "out"

    with pytest.raises(UnsafeArchiveMemberError) as caught:
        extract_archive(archive, destination, make_settings())
    assert repr(name) in caught.value.message
    assert_nothing_left(destination)
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_tar_member_with_unsafe_path_is_rejected(tmp_path: Path, name: str) -> None:
    archive = make_tar(tmp_path / "data.tar.gz", {**SAFE_FIRST, name: b"evil"}, "w:gz")
    destination = tmp_path / "out"

    with pytest.raises(UnsafeArchiveMemberError) as caught:
        extract_archive(archive, destination, make_settings())
    assert repr(name) in caught.value.message
    assert_nothing_left(destination)
    assert not (tmp_path / "evil.png").exists()


def test_zip_member_with_dotdot_message_names_the_member(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "data.zip", {"../evil.png": b"evil"})

    with pytest.raises(
        UnsafeArchiveMemberError, match=re.escape("archive member '../evil.png' escapes")
    ):
        extract_archive(archive, tmp_path / "out", make_settings())


def test_tar_member_with_nul_byte_in_name_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tar_info("placeholder.png", size=4)
        info.pax_headers = {"path": "cats/a.png\x00.txt"}
        tf.addfile(info, io.BytesIO(b"evil"))
    destination = tmp_path / "out"

    with pytest.raises(UnsafeArchiveMemberError, match="NUL") as caught:
        extract_archive(archive, destination, make_settings())
    assert repr("cats/a.png\x00.txt") in caught.value.message
    assert_nothing_left(destination)


def test_zip_symlink_member_is_rejected(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "data.zip", SAFE_FIRST)
    with zipfile.ZipFile(archive, "a") as zf:
        link = zipfile.ZipInfo("cats/link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "../../../etc/passwd")
    destination = tmp_path / "out"

    with pytest.raises(UnsafeArchiveMemberError, match="symbolic link") as caught:
        extract_archive(archive, destination, make_settings())
    assert "'cats/link.png'" in caught.value.message
    assert_nothing_left(destination)


def test_zip_fifo_member_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        fifo = zipfile.ZipInfo("cats/pipe")
        fifo.create_system = 3
        fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(fifo, b"")
    destination = tmp_path / "out"

    with pytest.raises(UnsafeArchiveMemberError, match="'cats/pipe' is a special file"):
        extract_archive(archive, destination, make_settings())
    assert_nothing_left(destination)


def link_member(kind: bytes) -> tarfile.TarInfo:
    info = tar_info("cats/link.png", kind)
    info.linkname = "../../etc/passwd" if kind == tarfile.SYMTYPE else "cats/ok.png"
    return info


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        (tarfile.SYMTYPE, "is a symbolic link"),
        (tarfile.LNKTYPE, "is a hard link"),
        (tarfile.CHRTYPE, "is a device file"),
        (tarfile.BLKTYPE, "is a device file"),
        (tarfile.FIFOTYPE, "is a FIFO"),
    ],
)
def test_tar_special_member_is_rejected(tmp_path: Path, kind: bytes, problem: str) -> None:
    archive = add_special_tar_member(tmp_path / "data.tar", link_member(kind), SAFE_FIRST)
    destination = tmp_path / "out"

    with pytest.raises(UnsafeArchiveMemberError) as caught:
        extract_archive(archive, destination, make_settings())
    assert caught.value.message == f"archive member 'cats/link.png' {problem}"
    assert_nothing_left(destination)


def test_zip_duplicate_member_is_rejected(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "data.zip", SAFE_FIRST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr("cats/ok.png", b"overwrite")
    destination = tmp_path / "out"

    with pytest.raises(UnsafeArchiveMemberError, match=re.escape("'cats/ok.png' duplicates")):
        extract_archive(archive, destination, make_settings())
    assert_nothing_left(destination)


def test_tar_duplicate_member_is_rejected_even_when_spelled_differently(tmp_path: Path) -> None:
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tf:
        for name in ("cats/ok.png", "./cats//ok.png"):
            tf.addfile(tar_info(name, size=4), io.BytesIO(b"data"))
    destination = tmp_path / "out"

    with pytest.raises(UnsafeArchiveMemberError, match=re.escape("'./cats//ok.png' duplicates")):
        extract_archive(archive, destination, make_settings())
    assert_nothing_left(destination)


def test_tar_member_below_an_earlier_file_is_rejected(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "data.tar", {"cats": b"file", "cats/a.png": png_bytes()})
    destination = tmp_path / "out"

    with pytest.raises(UnsafeArchiveMemberError, match=re.escape("'cats/a.png'")):
        extract_archive(archive, destination, make_settings())
    assert_nothing_left(destination)


def test_failure_empties_but_keeps_a_destination_that_existed(tmp_path: Path) -> None:
    destination = tmp_path / "out"
    destination.mkdir()
    archive = make_zip(tmp_path / "data.zip", {**LAYOUT, "../evil.png": b"evil"})

    with pytest.raises(UnsafeArchiveMemberError):
        extract_archive(archive, destination, make_settings())
    assert destination.is_dir()
    assert list(destination.iterdir()) == []


# --- limits --------------------------------------------------------------------------------


def test_zip_with_too_many_members_is_rejected(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "data.zip", LAYOUT)
    destination = tmp_path / "out"

    with pytest.raises(ArchiveLimitError, match="archive_max_members"):
        extract_archive(archive, destination, make_settings(archive_max_members=2))
    assert_nothing_left(destination)


def test_tar_with_too_many_members_is_rejected_while_extracting(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "data.tar.gz", LAYOUT, "w:gz")
    destination = tmp_path / "out"

    with pytest.raises(ArchiveLimitError, match="more than 2 members"):
        extract_archive(archive, destination, make_settings(archive_max_members=2))
    assert_nothing_left(destination)


def test_member_count_includes_directories(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats/", b"")
        zf.writestr("cats/a.png", LAYOUT["cats/a.png"])

    with pytest.raises(ArchiveLimitError, match="archive_max_members"):
        extract_archive(archive, tmp_path / "out", make_settings(archive_max_members=1))


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_archive_over_total_bytes_is_rejected(tmp_path: Path, fmt: str) -> None:
    members = {"cats/a.bin": os.urandom(600_000), "cats/b.bin": os.urandom(600_000)}
    path = tmp_path / f"data.{fmt}"
    archive = make_zip(path, members) if fmt == "zip" else make_tar(path, members)
    destination = tmp_path / "out"

    with pytest.raises(ArchiveLimitError, match="archive_max_bytes"):
        extract_archive(archive, destination, make_settings(archive_max_bytes=1_000_000))
    assert_nothing_left(destination)


def test_zip_bomb_is_rejected_by_compression_ratio(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"cats/zeros.png": bytes(20 * MiB)})
    destination = tmp_path / "out"

    with pytest.raises(
        ArchiveLimitError, match=r"compression ratio of .+ \(\d+\.\d\) exceeds 10\.0"
    ):
        extract_archive(archive, destination, make_settings(archive_max_ratio=10))
    assert_nothing_left(destination)


def test_tar_gz_bomb_is_rejected_by_compression_ratio(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "bomb.tar.gz", {"cats/zeros.png": bytes(20 * MiB)}, "w:gz")
    destination = tmp_path / "out"

    with pytest.raises(ArchiveLimitError, match="compression ratio"):
        extract_archive(archive, destination, make_settings(archive_max_ratio=10))
    assert_nothing_left(destination)


def test_zip_bomb_behind_incompressible_padding_is_caught_per_member(tmp_path: Path) -> None:
    # The stored padding keeps the archive-wide ratio under 10; the bomb member alone is not.
    members = {"pad.bin": os.urandom(3 * MiB), "cats/zeros.png": bytes(20 * MiB)}
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pad.bin", members["pad.bin"], zipfile.ZIP_STORED)
        zf.writestr("cats/zeros.png", members["cats/zeros.png"], zipfile.ZIP_DEFLATED)
    destination = tmp_path / "out"

    with pytest.raises(ArchiveLimitError, match=re.escape("compression ratio of 'cats/zeros.png'")):
        extract_archive(archive, destination, make_settings(archive_max_ratio=10))
    assert_nothing_left(destination)


def test_small_highly_compressible_member_is_not_flagged(tmp_path: Path) -> None:
    members = {"cats/notes.txt": bytes(200_000)}
    archive = make_zip(tmp_path / "data.zip", members)

    destination = extract_archive(archive, tmp_path / "out", make_settings(archive_max_ratio=10))
    assert extracted_files(destination) == members


@pytest.mark.parametrize(
    ("settings", "message", "most_written"),
    [
        (make_settings(archive_max_ratio=10), "compression ratio", 2 * MiB),
        (
            make_settings(archive_max_bytes=5 * MiB, archive_max_ratio=1e6),
            "archive_max_bytes",
            5 * MiB,
        ),
    ],
)
def test_zip_limits_hold_while_streaming_even_if_headers_pass(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    message: str,
    most_written: int,
) -> None:
    # Disable the up-front header check, so only the byte counting during extraction is left,
    # and measure what was on disk at the moment of the clean-up.
    monkeypatch.setattr(archive_module, "_check_zip_headers", lambda infos, budget: None)
    on_disk: list[int] = []
    clean_up = archive_module._clean_up

    def measuring_clean_up(destination: Path, created: bool) -> None:
        on_disk.append(sum(len(data) for data in extracted_files(destination).values()))
        clean_up(destination, created)

    monkeypatch.setattr(archive_module, "_clean_up", measuring_clean_up)
    archive = make_zip(tmp_path / "bomb.zip", {"cats/zeros.png": bytes(20 * MiB)})
    destination = tmp_path / "out"

    with pytest.raises(ArchiveLimitError, match=message):
        extract_archive(archive, destination, settings)
    assert 0 < on_disk[0] <= most_written
    assert_nothing_left(destination)


def test_zip_member_whose_header_understates_its_size_is_rejected(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "liar.zip", {"cats/a.png": bytes(5 * MiB)})
    # Claim 100 bytes uncompressed in both headers; the data still inflates to 5 MiB.
    patch_zip_field(archive, 22, 24, "<I", 100)
    destination = tmp_path / "out"

    with pytest.raises(InvalidArchiveError, match=re.escape("liar.zip is corrupt")):
        extract_archive(archive, destination, make_settings(archive_max_bytes=MiB))
    assert_nothing_left(destination)


# --- images --------------------------------------------------------------------------------


def test_png_over_pixel_limit_is_rejected_with_its_dimensions(tmp_path: Path) -> None:
    bomb = png_bytes((4000, 4000))
    assert len(bomb) < 100_000  # the point: tiny on disk, huge once decoded
    archive = make_zip(tmp_path / "data.zip", {**LAYOUT, "cats/huge.png": bomb})
    destination = tmp_path / "out"

    with pytest.raises(ImageTooLargeError) as caught:
        extract_archive(archive, destination, make_settings(image_max_pixels=1_000_000))
    assert "'cats/huge.png'" in caught.value.message
    assert "4000x4000" in caught.value.message
    assert_nothing_left(destination)


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "BMP", "PNG", "WEBP"])
def test_each_image_format_is_checked_against_pixel_limit(tmp_path: Path, fmt: str) -> None:
    archive = make_tar(tmp_path / "data.tar", {"cats/big.img": image_bytes(fmt, (40, 30))})
    destination = tmp_path / "out"

    with pytest.raises(ImageTooLargeError, match=r"'cats/big.img' is a 40x30 image"):
        extract_archive(archive, destination, make_settings(image_max_pixels=1000))
    assert_nothing_left(destination)


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_image_past_pillow_bomb_limits_is_rejected_without_warnings(
    tmp_path: Path, side: int
) -> None:
    # 10000^2 is past Pillow's warning threshold, 20000^2 past its error threshold.
    archive = make_zip(tmp_path / "data.zip", {"cats/bomb.png": png_header_only(side, side)})
    destination = tmp_path / "out"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLargeError, match=re.escape("'cats/bomb.png'")):
            extract_archive(archive, destination, make_settings(image_max_pixels=1_000_000))
    assert_nothing_left(destination)


def test_image_within_pixel_limit_is_kept(tmp_path: Path) -> None:
    members = {"cats/ok.png": png_bytes((1000, 1000))}
    archive = make_zip(tmp_path / "data.zip", members)

    destination = extract_archive(archive, tmp_path / "out", make_settings(image_max_pixels=10**6))
    assert extracted_files(destination) == members


def test_files_with_unreadable_image_headers_are_left_alone(tmp_path: Path) -> None:
    members = {
        "cats/broken.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,
        "cats/notes.txt": b"BMW is not a bitmap",
        "cats/cut.jpg": b"\xff\xd8\xff",
    }
    archive = make_zip(tmp_path / "data.zip", members)

    destination = extract_archive(archive, tmp_path / "out", make_settings(image_max_pixels=1))
    assert extracted_files(destination) == members


# --- invalid archives ----------------------------------------------------------------------


def test_non_archive_file_is_rejected(tmp_path: Path) -> None:
    upload = tmp_path / "upload.zip"
    upload.write_bytes(png_bytes())
    destination = tmp_path / "out"

    with pytest.raises(
        InvalidArchiveError, match=re.escape("upload.zip is not a zip or tar archive")
    ):
        extract_archive(upload, destination, make_settings())
    assert not destination.exists()


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    upload = tmp_path / "upload.tar"
    upload.write_bytes(b"")

    with pytest.raises(InvalidArchiveError, match="not a zip or tar archive"):
        extract_archive(upload, tmp_path / "out", make_settings())


def test_truncated_zip_is_rejected(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "data.zip", LAYOUT)
    archive.write_bytes(archive.read_bytes()[:-40])
    destination = tmp_path / "out"

    with pytest.raises(InvalidArchiveError):
        extract_archive(archive, destination, make_settings())
    assert_nothing_left(destination)


def test_zip_with_corrupt_member_data_is_rejected(tmp_path: Path) -> None:
    members = {"cats/a.txt": b"first member", "cats/b.txt": b"hello " * 2000}
    archive = make_zip(tmp_path / "data.zip", members)
    data = bytearray(archive.read_bytes())
    second = data.find(b"PK\x03\x04", 4)
    start = second + 30 + len("cats/b.txt")
    data[start + 2 : start + 12] = b"\xff" * 10  # scramble the deflate stream
    archive.write_bytes(bytes(data))
    destination = tmp_path / "out"

    with pytest.raises(InvalidArchiveError, match=re.escape("data.zip is corrupt")):
        extract_archive(archive, destination, make_settings())
    assert_nothing_left(destination)


def test_encrypted_zip_member_is_rejected(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "data.zip", {"cats/a.png": png_bytes()})
    patch_zip_field(archive, 6, 8, "<H", 0x1)  # the "encrypted" general-purpose flag
    destination = tmp_path / "out"

    with pytest.raises(InvalidArchiveError, match=re.escape("'cats/a.png' is encrypted")):
        extract_archive(archive, destination, make_settings())
    assert_nothing_left(destination)


def test_truncated_tar_gz_is_rejected_and_cleaned_up(tmp_path: Path) -> None:
    members = {"cats/a.bin": os.urandom(200_000), "cats/b.bin": os.urandom(400_000)}
    archive = make_tar(tmp_path / "data.tar.gz", members, "w:gz")
    archive.write_bytes(archive.read_bytes()[:400_000])  # cuts into the second member
    destination = tmp_path / "out"

    with pytest.raises(InvalidArchiveError, match=re.escape("data.tar.gz is corrupt")):
        extract_archive(archive, destination, make_settings())
    assert_nothing_left(destination)


def test_gzip_with_garbage_stream_is_rejected(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "data.tar.gz", LAYOUT, "w:gz")
    data = bytearray(archive.read_bytes())
    data[20:] = os.urandom(len(data) - 20)  # keep the gzip header, scramble the rest
    archive.write_bytes(bytes(data))
    destination = tmp_path / "out"

    with pytest.raises(InvalidArchiveError):
        extract_archive(archive, destination, make_settings())
    assert_nothing_left(destination)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_scan_refuses_what_extraction_refuses_and_writes_nothing(
    tmp_path: Path, kind: str, name: str
) -> None:
    members = {**SAFE_FIRST, name: b"evil"}
    if kind == "zip":
        archive = make_zip(tmp_path / "data.zip", members)
    else:
        archive = make_tar(tmp_path / "data.tar.gz", members, "w:gz")
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(UnsafeArchiveMemberError) as caught:
        scan_archive(archive, make_settings())
    assert repr(name) in caught.value.message
    assert sorted(tmp_path.rglob("*")) == before


def test_scan_accepts_a_good_archive_and_counts_declared_sizes(tmp_path: Path) -> None:
    good = make_zip(tmp_path / "good.zip", {"cats/a.png": png_bytes(), "dogs/b.png": png_bytes()})
    scan_archive(good, make_settings())
    big = make_tar(tmp_path / "big.tar", {"cats/a.png": b"x" * 4096})
    with pytest.raises(ArchiveLimitError):
        scan_archive(big, make_settings(archive_max_bytes=1024))
    with pytest.raises(InvalidArchiveError):
        scan_archive(write(tmp_path / "not.zip", b"plain text"), make_settings())


def make_zip_listing(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A zip of ``members`` in order, repeated names included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about a repeated name
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members:
                zf.writestr(name, data)
    return path


def make_tar_listing(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """A tar of ``members`` in order; None makes a directory."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            if data is None:
                tf.addfile(tar_info(name, tarfile.DIRTYPE))
            else:
                tf.addfile(tar_info(name, size=len(data)), io.BytesIO(data))
    return path


PNG = png_bytes()
CONFLICTS = [
    ("zip", [("cats/a.png", PNG), ("cats/a.png", PNG)], "cats/a.png"),
    ("zip", [("cats/a.png", PNG), ("cats\\a.png", PNG)], "cats\\a.png"),
    ("zip", [("cats/a.png", PNG), ("cats/a.png/", b"")], "cats/a.png/"),
    ("zip", [("cats/", b""), ("cats", b"file")], "cats"),
    ("zip", [("cats/a.png", PNG), ("cats", b"file")], "cats"),
    ("zip", [("cats", b"file"), ("cats/a.png", PNG)], "cats/a.png"),
    ("tar", [("cats/ok.png", PNG), ("./cats//ok.png", PNG)], "./cats//ok.png"),
    ("tar", [("cats", b"file"), ("cats/sub/a.png", PNG)], "cats/sub/a.png"),
    ("tar", [("cats", None), ("cats", b"file")], "cats"),
    ("tar", [("cats/a.png", PNG), ("cats/a.png", None)], "cats/a.png"),
]


@pytest.mark.parametrize(("kind", "members", "culprit"), CONFLICTS)
def test_scan_refuses_duplicates_and_conflicts_as_extraction_does(
    tmp_path: Path, kind: str, members: list, culprit: str
) -> None:
    make = make_zip_listing if kind == "zip" else make_tar_listing
    archive = make(tmp_path / f"data.{kind}", [("dogs/b.png", PNG), *members])
    before = sorted(tmp_path.rglob("*"))
    message = f"archive member {culprit!r} duplicates or conflicts with an earlier member"

    with pytest.raises(UnsafeArchiveMemberError) as scanned:
        scan_archive(archive, make_settings())
    assert scanned.value.message == message
    assert sorted(tmp_path.rglob("*")) == before

    destination = tmp_path / "out"
    with pytest.raises(UnsafeArchiveMemberError) as extracted:
        extract_archive(archive, destination, make_settings())
    assert extracted.value.message == message
    assert_nothing_left(destination)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_scan_accepts_a_directory_listed_again_or_before_its_files(
    tmp_path: Path, kind: str
) -> None:
    if kind == "zip":
        members = [("cats/", b""), ("cats/a.png", PNG), ("./cats/", b""), ("cats/b/", b"")]
        archive = make_zip_listing(tmp_path / "data.zip", members)
    else:
        listing = [("cats", None), ("cats/a.png", PNG), ("./cats/", None), ("cats/b", None)]
        archive = make_tar_listing(tmp_path / "data.tar", listing)
    scan_archive(archive, make_settings())
    destination = extract_archive(archive, tmp_path / "out", make_settings())
    assert extracted_files(destination) == {"cats/a.png": PNG}


def test_scan_bounds_the_folders_member_names_imply(tmp_path: Path) -> None:
    """Three members, four allowed, but deep names imply more folders than twice that."""
    names = ["a/b/c/1.png", "d/e/f/2.png", "g/h/i/3.png"]
    settings = make_settings(archive_max_members=4)
    scan_archive(make_zip(tmp_path / "two.zip", dict.fromkeys(names[:2], PNG)), settings)
    archive = make_tar(tmp_path / "three.tar", dict.fromkeys(names, PNG))

    with pytest.raises(ArchiveLimitError) as caught:
        scan_archive(archive, settings)
    assert caught.value.message == (
        "archive members make more than 8 files and folders (twice archive_max_members)"
    )


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- names and depth -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cats\n/a.png", "ca\rts/a.png", "cats/a\x1b.png", "c\x7f/a.png"])
def test_control_characters_in_a_member_name_are_refused(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "data.zip", {**LAYOUT, name: image_bytes("PNG", (4, 4))})
    with pytest.raises(UnsafeArchiveMemberError, match="control character"):
        scan_archive(archive, make_settings())
    destination = tmp_path / "out"
    with pytest.raises(UnsafeArchiveMemberError, match="control character"):
        extract_archive(archive, destination, make_settings())
    assert_nothing_left(destination)


def test_members_nested_past_the_depth_limit_are_refused(tmp_path: Path) -> None:
    deep = "/".join(["d"] * 1500) + "/a.png"
    archive = make_tar(tmp_path / "data.tar", {**LAYOUT, deep: image_bytes("PNG", (4, 4))})
    with pytest.raises(ArchiveLimitError, match="1501 folders deep"):
        scan_archive(archive, make_settings())
    destination = tmp_path / "out"
    with pytest.raises(ArchiveLimitError, match="at most 32"):
        extract_archive(archive, destination, make_settings())
    assert_nothing_left(destination)


def test_members_at_the_depth_limit_are_kept(tmp_path: Path) -> None:
    name = "/".join(["d"] * 31) + "/a.png"
    archive = make_zip(tmp_path / "data.zip", {name: image_bytes("PNG", (4, 4))})
    destination = extract_archive(archive, tmp_path / "out", make_settings())
    assert (destination / name).is_file()


# --- the zip's central directory is judged before it is parsed ----------------------------


def forge_end_record(path: Path, entries: int, directory_bytes: int) -> None:
    """Rewrite the end-of-central-directory record's declared entry count and size."""
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x05\x06")
    struct.pack_into(
        "<HHI", data, at + 8, min(entries, 0xFFFF), min(entries, 0xFFFF), directory_bytes
    )
    path.write_bytes(bytes(data))


def test_a_zip_declaring_more_members_than_allowed_is_refused_before_parsing(tmp_path: Path):
    archive = make_zip(tmp_path / "data.zip", LAYOUT)
    forge_end_record(archive, entries=60_000, directory_bytes=100)
    settings = make_settings(archive_max_members=1000)
    with pytest.raises(ArchiveLimitError, match="more than 1000 members"):
        scan_archive(archive, settings)
    with pytest.raises(ArchiveLimitError):
        extract_archive(archive, tmp_path / "out", settings)


def test_a_zip_declaring_a_huge_central_directory_is_refused(tmp_path: Path):
    archive = make_zip(tmp_path / "data.zip", LAYOUT)
    forge_end_record(archive, entries=3, directory_bytes=940_000_000)
    with pytest.raises(ArchiveLimitError, match="central directory is 940000000 bytes"):
        scan_archive(archive, make_settings(archive_max_members=1000))
