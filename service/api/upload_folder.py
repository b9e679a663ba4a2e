"""What the uploads folder holds: archives of jobs not yet finished, and uploads in flight.

An upload in flight is ``<folder>/<name>.<random>.partial``, written by ``FileSink``. The
request writing it holds an exclusive ``flock`` on it from creation until it is renamed to
``<name>`` (committed) or removed (discarded). A partial whose lock anyone can take has no
writer any more: its request ended without cleaning up, or its API process died, and the
kernel dropped the lock with the process. ``sweep_partials`` removes exactly those, at once,
whatever their age.

The limits of flock. It is advisory and kept by the kernel. API processes on one machine
(or containers sharing one mount on one node) always see each other's locks. On a network
file system mounted by several machines, locks are cluster-wide only where the file system
carries them to its server: the Linux NFS client does (flock becomes an NFS lock), unless
mounted with ``local_lock=flock`` or ``local_lock=all``; CephFS does; some FUSE and SMB
mounts keep locks local to each node. There, a sweeper on one node would remove uploads in
progress on another: give each node its own uploads folder, or use a file system whose
locks are cluster-wide.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import IO

from service.errors import BadRequestError, FtserveError, QueueFullError

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
# How often a running API looks for partials left by requests or processes that died.
SWEEP_SECONDS = 5.0
# An upload re-counts the folder every time it has grown by this much, so that concurrent
# uploads see each other's growth, not just their size when they started.
_RECOUNT_BYTES = 8 * 1024 * 1024
# A new partial loses its name only if a sweeper takes it between its creation and its
# lock: a second random name is all but certain to do, a few are plenty.
_CREATE_TRIES = 5


def held_bytes(folder: Path, *, excluding: Path | None = None) -> int:
    """Bytes in the regular files of ``folder``: committed uploads and partials alike."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if excluding is not None and entry.path == str(excluding):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:  # committed, discarded or swept since the listing
            continue
    return total


class HeldUploads:
    """Keeps one upload within ``max_held_upload_bytes``: the folder's bytes plus its own.

    ``admit`` judges the size a request declares before its body is read; ``check`` judges
    what has arrived, for bodies without a Content-Length (and uploads growing side by side).
    Both raise ``QueueFullError`` (429 with Retry-After), like a full job queue.
    """

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self._others = 0
        self._recount_at = _RECOUNT_BYTES

    def admit(self, declared: int | None) -> None:
        self._others = held_bytes(self.folder)
        self._refuse_past_limit(declared or 0)

    def check(self, own: Path, size: int) -> None:
        if size >= self._recount_at:
            self._others = held_bytes(self.folder, excluding=own)
            self._recount_at = size + _RECOUNT_BYTES
        self._refuse_past_limit(size)

    def _refuse_past_limit(self, incoming: int) -> None:
        if self._others + incoming > self.limit:
            raise QueueFullError(
                f"Uploads waiting for training hold {self._others} bytes; this request's"
                f" {incoming} more would pass {self.limit} (max_held_upload_bytes); retry later"
            )


class FileSink:
    """The file of form field ``field_name``, streamed to ``<folder>/<name>.<random>.partial``.

    Counted (``too_large`` past ``limit`` bytes, ``held`` against the folder's limit) and
    hashed as it arrives. The partial stays open and locked from ``open()`` until
    ``commit()`` renames it to ``<folder>/<name>`` or ``discard()`` removes it; one of the
    two must follow ``open()``.
    """

    def __init__(
        self,
        field_name: str,
        folder: Path,
        name: str,
        limit: int,
        too_large: type[FtserveError],
        held: HeldUploads,
    ) -> None:
        self.field_name = field_name
        self.final_path = folder / name
        self.path = self._partial_path()
        self.limit = limit
        self.too_large = too_large
        self.held = held
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.opened = False
        self.committed = False
        self._file: IO[bytes] | None = None

    def open(self) -> FileSink:
        """Start receiving the file; a second file in the same field is an error."""
        if self.opened:
            raise BadRequestError(f"Send one file as {self.field_name!r}, not several")
        self.opened = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(_CREATE_TRIES):
            self._file = _create_locked(self.path)
            if self._file is not None:
                return self
            self.path = self._partial_path()
        raise RuntimeError(f"could not create a partial upload in {self.path.parent}")

    def write(self, data: bytes) -> None:
        assert self._file is not None
        self.size += len(data)
        if self.size > self.limit:
            raise self.too_large(f"The upload is larger than {self.limit} bytes")
        self.held.check(self.path, self.size)
        self.sha256.update(data)
        self._file.write(data)

    def close(self) -> None:
        """The part ended: make the bytes durable. The file stays open, and locked."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def commit(self) -> Path:
        """Give the file its final name and return it."""
        assert self._file is not None
        self.close()
        # Renamed while still locked: a sweeper never sees an unlocked partial of ours.
        os.replace(self.path, self.final_path)
        self.committed = True
        self._release()
        return self.final_path

    def discard(self) -> None:
        """Remove the partial or committed file."""
        self.path.unlink(missing_ok=True)
        if self.committed:
            self.final_path.unlink(missing_ok=True)
        self._release()

    def _partial_path(self) -> Path:
        return self.final_path.with_name(
            f"{self.final_path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
        )

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the last descriptor drops the lock
            self._file = None


def _create_locked(path: Path) -> IO[bytes] | None:
    """Create ``path``, which must not exist, and lock it; None if a sweeper got there first.

    Between the creation and the lock a sweeper may take the lock and remove the file: the
    lock is then either refused, or taken on a file that no longer has this name.
    """
    file = path.open("xb")
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _is_named(path, file.fileno()):
            return file
    except BlockingIOError:
        pass
    except BaseException:
        file.close()
        raise
    file.close()
    return None


def sweep_partials(folder: Path) -> int:
    """Remove every partial upload in ``folder`` whose writer is gone; how many went."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    return sum(
        _remove_if_unlocked(Path(entry.path))
        for entry in entries
        if entry.name.endswith(PARTIAL_SUFFIX)
    )


def _remove_if_unlocked(path: Path) -> bool:
    try:
        # O_NONBLOCK: a FIFO named like a partial must not hang the sweep.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # gone already, or a symbolic link: nothing of ours
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its writer is alive
        if not _is_named(path, fd):
            return False  # committed or removed since it was listed
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not remove the abandoned upload %s: %s", path, exc)
            return False
        return True
    finally:
        os.close(fd)


def _is_named(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)
