"""One Settings class for the whole service, read from ``FTSERVE_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1024**3


def _default_job_memory_bytes() -> int:
    """Three quarters of this machine's memory (or its cgroup limit, when lower)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = "max"
    if limit.isdigit():
        total = min(total, int(limit))
    return total * 3 // 4


class Settings(BaseSettings):
    """Operator-level configuration. Per-job knobs live in ``TrainConfig`` instead."""

    model_config = SettingsConfigDict(env_prefix="FTSERVE_", extra="ignore")

    data_root: Path = Path("var/data")
    work_dir: Path = Path("var/jobs")
    model_repo: Path = Path("var/models")
    weights_dir: Path = Path("var/weights")
    # ImageNet weights come from the Keras cache (KERAS_HOME). Downloading them at run time
    # is opt-in: a server without network access should fail at once, not hang on a socket.
    weights_download: bool = False

    # Archive limits, enforced while extracting (decompression bombs, path tricks).
    archive_max_members: int = Field(default=100_000, gt=0)
    archive_max_bytes: int = Field(default=8 * GiB, gt=0)
    archive_max_ratio: float = Field(default=100.0, gt=1.0)
    image_max_pixels: int = Field(default=40_000_000, gt=0)

    min_images_per_class: int = Field(default=2, ge=1)
    # Decoded images (and base features) are cached in memory up to this size, else on disk.
    cache_memory_bytes: int = Field(default=2 * GiB, ge=0)

    # Job store: SQLite (WAL) under the data folder unless a SQLAlchemy URL says otherwise,
    # e.g. postgresql+psycopg://user@host:5432/ftserve.
    database_url: str | None = None
    max_queue_depth: int = Field(default=100, gt=0)  # queued jobs before POST /finetune → 429
    max_attempts: int = Field(default=3, gt=0)  # a job whose workers keep dying fails after this
    lease_seconds: float = Field(default=30.0, gt=0)  # a worker renews its claim this often / 3
    # A worker whose resident memory passes this fails its job (memory_limit_exceeded) and
    # exits, to be restarted: one job cannot take the host.
    job_memory_limit_bytes: int = Field(default_factory=_default_job_memory_bytes, gt=0)
    # Bytes the uploads folder may hold (queued and running jobs' archives, uploads in
    # flight) before POST /finetune answers 429, like max_queue_depth for jobs.
    max_held_upload_bytes: int = Field(default=32 * GiB, gt=0)

    # API
    api_token: str | None = None  # when set, every route but health and metrics needs it
    # With api_token set: whether /docs, /redoc and /openapi.json need it too. The schema
    # holds no secret, so by default it stays readable.
    docs_require_token: bool = False
    max_upload_bytes: int = Field(default=2 * GiB, gt=0)
    # The model server's gRPC target; `ftserve serve` starts one when unset. host:port, or a
    # name or list of several, which calls take turns over (round_robin): in a cluster
    # dns:///<headless service>:8500, or ipv4:10.0.0.1:8500,10.0.0.2:8500.
    model_server: str | None = None
    predict_timeout_seconds: float = Field(default=10.0, gt=0)
    predict_max_instances: int = Field(default=64, gt=0)
    predict_max_bytes: int = Field(default=32 * 1024**2, gt=0)  # encoded images per request
    # How long a label move waits for the model server to load the version (then 504).
    label_move_timeout_seconds: float = Field(default=300.0, gt=0)

    def sqlalchemy_url(self) -> str:
        """The job store's URL: ``database_url``, else SQLite in ``<data_root>/ftserve.db``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_root / 'ftserve.db').absolute()}"

    def uploads_dir(self) -> Path:
        """Where the API keeps uploaded datasets, one file per job, until the job ends."""
        return self.data_root / "uploads"

    def model_server_address(self) -> str:
        return self.model_server or "127.0.0.1:8500"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests override them rather than mutate this."""
    return Settings()
