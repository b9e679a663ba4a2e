"""Safe extraction of uploaded zip and tar archives.

Uploads are untrusted: member paths must stay under the destination, only regular files and
directories are created, and the member-count, byte, compression-ratio and image-pixel limits
from ``Settings`` are enforced on the bytes actually produced, not only on what headers claim.
Standard library and Pillow only, so that the API process can import it without TensorFlow.
"""

from __future__ import annotations

import errno
import hashlib
import lzma
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from service.config import Settings
from service.errors import (
    ArchiveLimitError,
    ImageTooLargeError,
    InvalidArchiveError,
    UnsafeArchiveMemberError,
)
from service.ingest.images import (
    HEAD_BYTES,
    BombHeaderError,
    UnreadableHeaderError,
    image_kind,
    read_header,
)

__all__ = ["extract_archive", "is_archive"]

_CHUNK = 1024 * 1024
# Ratios are only judged past this many bytes: tiny outputs (a short text file in a tar.gz)
# compress far better than any sane limit without being a threat.
_RATIO_FLOOR = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
# The zip end records (APPNOTE 4.3.16, 4.3.14, 4.3.15) and how far from the end they can be.
_EOCD = struct.Struct("<4sHHHHIIH")
_EOCD_SIGNATURE = b"PK\x05\x06"
_EOCD_MAX = _EOCD.size + 0xFFFF  # the record plus the longest comment
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
# A central directory entry is 46 bytes plus its name and extras; real ones stay far below.
_MAX_DIRECTORY_BYTES_PER_MEMBER = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Folders within folders an archive member may sit in: a class folder, an optional folder
# around the classes, and sub-folders of a class, with plenty of room.
MAX_DEPTH = 32
# What decoders raise on damaged input (gzip and bz2 use OSError, zipfile NotImplementedError
# for unknown methods). Only read calls are wrapped, so an OSError from writing (a full disk)
# is never mistaken for a bad upload.
_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    NotImplementedError,
    ValueError,
)
_TAR_TYPE_PROBLEMS = {
    tarfile.SYMTYPE: "is a symbolic link",
    tarfile.LNKTYPE: "is a hard link",
    tarfile.CHRTYPE: "is a device file",
    tarfile.BLKTYPE: "is a device file",
    tarfile.FIFOTYPE: "is a FIFO",
}
# Failures to create a path that the member's name, not the server, is to blame for.
_BAD_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL})


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a file that :func:`extract_archive` would open (judged by content)."""
    return _detect(path) is not None


def extract_archive(archive: Path, destination: Path, settings: Settings) -> Path:
    """Extract a zip or tar (plain, gz, bz2 or xz) ``archive`` into ``destination``.

    ``destination`` must not exist or be an empty directory; the format is judged by content.
    Raises ``InvalidArchiveError`` for unreadable input, ``UnsafeArchiveMemberError`` for path
    tricks and special files, ``ArchiveLimitError`` / ``ImageTooLargeError`` when a limit in
    ``settings`` is exceeded. On any error nothing extracted is left behind. Returns
    ``destination``.
    """
    kind = _detect(archive)
    if kind is None:
        raise InvalidArchiveError(f"{archive.name} is not a zip or tar archive")
    budget = _Budget(settings, max(archive.stat().st_size, 1))
    created = _prepare_destination(destination)
    try:
        if kind == "zip":
            _extract_zip(archive, destination, budget)
        else:
            _extract_tar(archive, destination, budget)
    except BaseException:
        _clean_up(destination, created)
        raise
    return destination


def _detect(path: Path) -> str | None:
    # Tar first: its header sits at offset 0 and carries a checksum, whereas zip detection
    # looks for a trailer anywhere in the last 64 KiB, which a tar ending in a .zip has too.
    with suppress(*_READ_ERRORS):
        if not path.is_file():
            return None
        if tarfile.is_tarfile(path):
            return "tar"
        if zipfile.is_zipfile(path):
            return "zip"
    return None


@contextmanager
def _reading(archive: Path) -> Iterator[None]:
    """Turn any decoder failure inside the block into ``InvalidArchiveError``."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise InvalidArchiveError(f"{archive.name} is corrupt or truncated: {exc}") from exc


def _check_member_count(count: int, settings: Settings) -> None:
    limit = settings.archive_max_members
    if count > limit:
        raise ArchiveLimitError(f"archive has more than {limit} members (archive_max_members)")


def _check_ratio(produced: int, packed: int, limit: float, what: str) -> None:
    ratio = produced / max(packed, 1)
    if produced > _RATIO_FLOOR and ratio > limit:
        raise ArchiveLimitError(
            f"compression ratio of {what} ({ratio:.1f}) exceeds {limit} (archive_max_ratio)"
        )


@dataclass
class _Budget:
    """Running totals for one extraction, checked against the limits in ``Settings``."""

    settings: Settings
    archive_size: int
    members: int = 0
    written: int = 0

    def add_member(self) -> None:
        self.members += 1
        _check_member_count(self.members, self.settings)

    def check_total(self, total: int) -> None:
        """Reject a total output size, whether declared by headers or already written."""
        limit = self.settings.archive_max_bytes
        if total > limit:
            raise ArchiveLimitError(f"archive expands past {limit} bytes (archive_max_bytes)")
        _check_ratio(total, self.archive_size, self.settings.archive_max_ratio, "the archive")

    def charge(self, size: int) -> None:
        """Account for ``size`` bytes about to be written; raises before they are."""
        self.check_total(self.written + size)
        self.written += size


def _prepare_destination(destination: Path) -> bool:
    """Create ``destination`` if needed; returns whether it was created here."""
    if destination.exists() or destination.is_symlink():
        if not destination.is_dir() or any(destination.iterdir()):
            raise FileExistsError(f"{destination} exists and is not an empty directory")
        return False
    destination.mkdir(parents=True)
    return True


def _clean_up(destination: Path, created: bool) -> None:
    # Best effort, so a failure here cannot hide the error being raised. No symlinks are ever
    # created under destination, so rmtree cannot wander outside it.
    if created:
        shutil.rmtree(destination, ignore_errors=True)
        return
    for child in destination.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _unsafe(name: str, problem: str) -> UnsafeArchiveMemberError:
    return UnsafeArchiveMemberError(f"archive member {name!r} {problem}")


def _safe_target(root: Path, name: str, is_dir: bool) -> Path:
    """The path under ``root`` for member ``name``; rejects names that could escape it."""
    if "\x00" in name:
        raise _unsafe(name, "has a NUL byte in its name")
    if _CONTROL.search(name):
        # A newline in a class folder's name would split labels.txt into extra classes.
        raise _unsafe(name, "has a control character in its name")
    # Archives made on Windows may use backslashes; treat them as separators everywhere.
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise _unsafe(name, "has an absolute path")
    parts = [part for part in posix.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(name, "escapes the destination")
    if not parts and not is_dir:
        raise _unsafe(name, "is a file with no name")
    if len(parts) > MAX_DEPTH:
        raise ArchiveLimitError(
            f"archive member {name[:200]!r} is {len(parts)} folders deep; at most {MAX_DEPTH}"
            " are allowed (a dataset is class folders of images)"
        )
    return root.joinpath(*parts)


@contextmanager
def _creating(name: str) -> Iterator[None]:
    """Blame the archive, not the server, when a member's path cannot be created."""
    try:
        yield
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
        raise _unsafe(name, "duplicates or conflicts with an earlier member") from exc
    except OSError as exc:
        if exc.errno not in _BAD_NAME_ERRNOS:
            raise  # e.g. a full disk: the server's problem, not the upload's
        raise InvalidArchiveError(f"archive member {name!r} has an unusable name") from exc


def _make_dir(path: Path, name: str) -> None:
    with _creating(name):
        path.mkdir(parents=True, exist_ok=True)


def _create_file(path: Path, name: str) -> IO[bytes]:
    """Open a new file for a member; "xb" so that a repeated name cannot overwrite anything."""
    _make_dir(path.parent, name)
    with _creating(name):
        return path.open("xb")


def _stream_member(
    source: IO[bytes], target: Path, name: str, budget: _Budget, archive: Path, packed: int | None
) -> None:
    """Copy one member in chunks, charging each chunk before writing it; then vet images.

    ``packed`` is the member's compressed size where the format records one (zip).
    """
    head = b""
    produced = 0
    with _create_file(target, name) as out:
        while True:
            with _reading(archive):
                chunk = source.read(_CHUNK)
            if not chunk:
                break
            produced += len(chunk)
            budget.charge(len(chunk))
            if packed is not None:
                _check_ratio(produced, packed, budget.settings.archive_max_ratio, repr(name))
            head = (head + chunk[:HEAD_BYTES])[:HEAD_BYTES]
            out.write(chunk)
    _check_image(target, name, head, budget.settings.image_max_pixels)


def _check_image(path: Path, name: str, head: bytes, max_pixels: int) -> None:
    """Reject a written image whose header declares more than ``max_pixels``."""
    kind = image_kind(head)
    if kind is None:
        return
    try:
        header = read_header(path, kind)
    except BombHeaderError as exc:
        raise ImageTooLargeError(f"archive member {name!r} is too large: {exc}") from exc
    except UnreadableHeaderError:
        return  # the dataset scan reports unreadable images; they are no threat here
    if header.pixels > max_pixels:
        raise ImageTooLargeError(
            f"archive member {name!r} is a {header.width}x{header.height} image "
            f"({header.pixels} pixels), "
            f"more than {max_pixels} (image_max_pixels)"
        )


def _check_zip_directory(archive: Path, settings: Settings) -> None:
    """Refuse a zip by its end-of-central-directory record, before the directory is parsed.

    zipfile reads and parses the whole central directory on open (a forged one listing 20M
    entries took gigabytes); its declared entry count and size are judged first.
    """
    entries, directory_bytes = _zip_directory_size(archive)
    _check_member_count(entries, settings)
    limit = settings.archive_max_members * _MAX_DIRECTORY_BYTES_PER_MEMBER
    if directory_bytes > limit:
        raise ArchiveLimitError(
            f"the zip's central directory is {directory_bytes} bytes; at most {limit} for"
            f" {settings.archive_max_members} members (archive_max_members)"
        )


def _zip_directory_size(archive: Path) -> tuple[int, int]:
    """(entries, central directory bytes) as the end record (or its ZIP64 twin) declares."""
    size = archive.stat().st_size
    with open(archive, "rb") as f:
        f.seek(max(0, size - _EOCD_MAX))
        tail = f.read()
        at = tail.rfind(_EOCD_SIGNATURE)
        if at < 0 or len(tail) - at < _EOCD.size:
            raise zipfile.BadZipFile("no end of central directory record")
        fields = _EOCD.unpack_from(tail, at)
        entries, directory_bytes = fields[4], fields[5]
        locator = at - _ZIP64_LOCATOR.size
        if locator >= 0 and tail[locator : locator + 4] == _ZIP64_LOCATOR_SIGNATURE:
            f.seek(_ZIP64_LOCATOR.unpack_from(tail, locator)[2])
            record = f.read(_ZIP64_EOCD.size)
            if len(record) < _ZIP64_EOCD.size or record[:4] != _ZIP64_EOCD_SIGNATURE:
                raise zipfile.BadZipFile("a broken ZIP64 end of central directory record")
            fields = _ZIP64_EOCD.unpack(record)
            entries, directory_bytes = fields[7], fields[8]
    return entries, directory_bytes


def _zip_mode_problem(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16  # the Unix st_mode, or 0 for zips made elsewhere
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    return None if stat.S_IFMT(mode) in (0, stat.S_IFREG, stat.S_IFDIR) else "is a special file"


def _check_zip_headers(infos: list[zipfile.ZipInfo], budget: _Budget) -> None:
    """Fail fast on what the central directory declares, before writing anything."""
    _check_member_count(len(infos), budget.settings)
    budget.check_total(sum(info.file_size for info in infos))
    for info in infos:
        limit = budget.settings.archive_max_ratio
        _check_ratio(info.file_size, info.compress_size, limit, repr(info.filename))


@contextmanager
def _checked_zip(
    archive: Path, budget: _Budget
) -> Iterator[tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]]:
    """The open zip and its members, once its end record and headers passed the limits."""
    with _reading(archive):
        _check_zip_directory(archive, budget.settings)
        zf = zipfile.ZipFile(archive)
    with zf:
        infos = zf.infolist()
        _check_zip_headers(infos, budget)
        yield zf, infos


def _extract_zip(archive: Path, root: Path, budget: _Budget) -> None:
    with _checked_zip(archive, budget) as (zf, infos):
        for info in infos:
            target = _check_zip_member(info, root, budget)
            if _zip_is_dir(info):
                _make_dir(target, info.filename)
                continue
            with _reading(archive):
                source = zf.open(info)
            with source:
                _stream_member(source, target, info.filename, budget, archive, info.compress_size)


def _zip_is_dir(info: zipfile.ZipInfo) -> bool:
    return info.is_dir() or info.filename.endswith("\\")


def _check_zip_member(info: zipfile.ZipInfo, root: Path, budget: _Budget) -> Path:
    """Judge one zip member by its header alone; return where it would be written."""
    name = info.filename
    is_dir = _zip_is_dir(info)
    budget.add_member()
    target = _safe_target(root, name, is_dir)
    problem = _zip_mode_problem(info)
    if problem is not None:
        raise _unsafe(name, problem)
    if not is_dir and info.flag_bits & 0x1:
        raise InvalidArchiveError(f"archive member {name!r} is encrypted")
    return target


def _tar_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    # Walk with next() so that a broken header half-way through counts as a bad archive.
    while True:
        with _reading(archive):
            member = tar.next()
        if member is None:
            return
        yield member


def _tar_type_problem(member: tarfile.TarInfo) -> str | None:
    if member.isreg() or member.isdir():
        return None
    return _TAR_TYPE_PROBLEMS.get(member.type, "has an unsupported type")


def _extract_tar(archive: Path, root: Path, budget: _Budget) -> None:
    with _reading(archive):
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with below
    with tar:
        for member in _tar_members(tar, archive):
            target = _check_tar_member(member, root, budget)
            if member.isdir():
                _make_dir(target, member.name)
                continue
            with _reading(archive):
                source = tar.extractfile(member)
            if source is None:
                raise InvalidArchiveError(f"archive member {member.name!r} has no data")
            with source:
                _stream_member(source, target, member.name, budget, archive, None)


def _check_tar_member(member: tarfile.TarInfo, root: Path, budget: _Budget) -> Path:
    """Judge one tar member by its header alone; return where it would be written."""
    budget.add_member()
    target = _safe_target(root, member.name, member.isdir())
    problem = _tar_type_problem(member)
    if problem is not None:
        raise _unsafe(member.name, problem)
    if not member.isdir():
        # A tar has no index, so each member's declared size is judged as it comes.
        budget.check_total(budget.written + member.size)
    return target


# -- checking without extracting ------------------------------------------------------------

# Member paths are only judged against this root, never created.
_NOWHERE = Path("/nonexistent")


class _MemberPaths:
    """The paths members would take, to refuse what extraction's ``_creating`` refuses.

    That is a second member at a path already taken (directories aside: extraction merges a
    directory listed twice), a file where a directory was, and a member under a file. Each
    path, and each directory a path implies, is kept as a 16-byte digest of its normalised
    parts, so that memory does not grow with the length of names. Paths are bounded too:
    members and the directories they imply together at most twice ``archive_max_members``.
    """

    def __init__(self, settings: Settings) -> None:
        self._is_dir: dict[bytes, bool] = {}
        self._limit = 2 * settings.archive_max_members

    def add(self, name: str, target: Path, is_dir: bool) -> None:
        parts = target.relative_to(_NOWHERE).parts
        prefix = hashlib.blake2b(digest_size=16)
        for depth, part in enumerate(parts, start=1):
            # No part holds a "/", so the digest of "a/b/" is that of the path a/b alone.
            prefix.update(part.encode("utf-8", "surrogatepass") + b"/")
            key = prefix.digest()
            known = self._is_dir.get(key)
            wanted_dir = is_dir or depth < len(parts)
            if known is None:
                self._remember(key, wanted_dir)
            elif not (known and wanted_dir):
                raise _unsafe(name, "duplicates or conflicts with an earlier member")

    def _remember(self, key: bytes, is_dir: bool) -> None:
        if len(self._is_dir) >= self._limit:
            raise ArchiveLimitError(
                f"archive members make more than {self._limit} files and folders"
                " (twice archive_max_members)"
            )
        self._is_dir[key] = is_dir


def scan_archive(archive: Path, settings: Settings) -> None:
    """Judge every member header of ``archive`` by the rules extraction applies.

    Nothing is written: the API refuses a bad upload with this before queueing its job.
    What only extraction sees (actual sizes, the images themselves) the worker checks.

    Raises:
        InvalidArchiveError: not a zip or tar (plain, gz, bz2, xz), unreadable, or an
            encrypted zip member.
        UnsafeArchiveMemberError: a path trick, a link or a special file; a member that
            duplicates or conflicts with an earlier one (a file where a file or directory
            was, or a member under a file).
        ArchiveLimitError: too many members, or declared sizes past the limits.
    """
    kind = _detect(archive)
    if kind is None:
        raise InvalidArchiveError("The dataset is not a zip or tar (plain, gz, bz2, xz) archive")
    budget = _Budget(settings, max(archive.stat().st_size, 1))
    paths = _MemberPaths(settings)
    if kind == "zip":
        with _checked_zip(archive, budget) as (_, infos):
            for info in infos:
                target = _check_zip_member(info, _NOWHERE, budget)
                paths.add(info.filename, target, _zip_is_dir(info))
        return
    with _reading(archive):
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with below
    with tar:
        for member in _tar_members(tar, archive):
            target = _check_tar_member(member, _NOWHERE, budget)
            paths.add(member.name, target, member.isdir())
            if member.isreg():
                budget.charge(member.size)
