"""What a job holds on disk and when it lets go: its uploaded archive.

An uploaded archive is the job's own copy, kept in the uploads folder only until the job
reaches a final state; a ``data_uri`` folder belongs to the user and is never touched.
"""

from __future__ import annotations

from pathlib import Path


def discard_upload(dataset: str | Path, uploads_dir: Path) -> bool:
    """Delete ``dataset`` if it is an upload in ``uploads_dir``; whether it was one."""
    path = Path(dataset)
    if path.parent.resolve() != uploads_dir.resolve():
        return False
    path.unlink(missing_ok=True)
    return True
