"""Vet an uploaded archive before its job is queued, without extracting it.

Every member header is read and judged by the rules ``service.training.archive`` applies
while extracting (member names, member types, member count, declared sizes and compression
ratio), so a bad upload is refused at once with 400/413 instead of failing its job later.
What only extraction can see (actual sizes, image headers) the worker still checks.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from service.config import Settings
from service.errors import InvalidArchiveError

# The extractor's own rules, so that vetting and extracting cannot disagree.
from service.training.archive import (
    _Budget,
    _check_zip_headers,
    _detect,
    _reading,
    _safe_target,
    _tar_members,
    _tar_type_problem,
    _unsafe,
    _zip_mode_problem,
)

_NOWHERE = Path("/nonexistent")  # member paths are only judged, never created


def scan_archive(archive: Path, settings: Settings) -> None:
    """Check every member of a zip or tar (plain, gz, bz2, xz) ``archive``.

    Raises:
        InvalidArchiveError: not an archive, or unreadable, or an encrypted zip member.
        UnsafeArchiveMemberError: a path trick, a link or a special file.
        ArchiveLimitError: too many members, or declared sizes past the limits.
    """
    kind = _detect(archive)
    if kind is None:
        raise InvalidArchiveError("The dataset is not a zip or tar (plain, gz, bz2, xz) archive")
    budget = _Budget(settings, max(archive.stat().st_size, 1))
    if kind == "zip":
        _scan_zip(archive, budget)
    else:
        _scan_tar(archive, budget)


def _scan_zip(archive: Path, budget: _Budget) -> None:
    with _reading(archive):
        zf = zipfile.ZipFile(archive)
    with zf:
        infos = zf.infolist()
        _check_zip_headers(infos, budget)
        for info in infos:
            name = info.filename
            budget.add_member()
            _safe_target(_NOWHERE, name, info.is_dir() or name.endswith("\\"))
            problem = _zip_mode_problem(info)
            if problem is not None:
                raise _unsafe(name, problem)
            if info.flag_bits & 0x1:
                raise InvalidArchiveError(f"archive member {name!r} is encrypted")


def _scan_tar(archive: Path, budget: _Budget) -> None:
    with _reading(archive):
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with below
    with tar:
        for member in _tar_members(tar, archive):
            budget.add_member()
            _safe_target(_NOWHERE, member.name, member.isdir())
            problem = _tar_type_problem(member)
            if problem is not None:
                raise _unsafe(member.name, problem)
            if member.isreg():
                budget.charge(member.size)
