"""Job stores on SQLite (a file per test) and on Postgres (a schema of its own per test).

Every test that takes ``store`` runs on both. The Postgres schema is named per test and
chosen through ``search_path`` in the URL, so parallel runs never see each other's rows;
when Postgres is not running the Postgres half is skipped, saying why.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, update

from service.jobs import JobStore
from service.jobs.tables import JobRow

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
POSTGRES_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"

MakeStore = Callable[..., JobStore]


@functools.cache
def postgres_error() -> str | None:
    """Why Postgres cannot be used, or None; asked once per run."""
    try:
        with psycopg.connect(POSTGRES_DSN):
            return None
    except psycopg.Error as exc:
        return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def postgres_schema(prefix: str = "ftserve_test") -> Iterator[str]:
    """The URL of a fresh Postgres schema, dropped afterwards; skips when Postgres is down."""
    error = postgres_error()
    if error is not None:
        pytest.skip(f"Postgres is not reachable at 127.0.0.1:5432: {error}")
    schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh Postgres schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def make_store(db_url: str) -> Iterator[MakeStore]:
    """Opens more stores on the same database (other workers, other processes' views)."""
    stores: list[JobStore] = []

    def make(**kwargs: Any) -> JobStore:
        store = JobStore(db_url, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> JobStore:
    """A store with its schema, default lease (30 s) and attempts (3)."""
    store = make_store()
    store.create_schema()
    return store


@pytest.fixture
def expire_lease(db_url: str) -> Iterator[Callable[[str], None]]:
    """Moves a job's lease one second into the past, as if its worker had gone quiet."""
    engine = create_engine(db_url)

    def expire(job_id: str) -> None:
        past = datetime.now(UTC) - timedelta(seconds=1)
        with engine.begin() as connection:
            connection.execute(
                update(JobRow).where(JobRow.id == job_id).values(lease_expires_at=past)
            )

    yield expire
    engine.dispose()
