"""Engines for the job store: SQLite tuned for several processes, or Postgres as it comes.

SQLite allows one writer at a time. Every write transaction of the store starts with
``BEGIN IMMEDIATE``, which takes the write lock up front (waiting up to the busy timeout),
so a read-then-write sequence such as "count the queue, then insert" or "find the oldest
queued job, then claim it" cannot interleave with another process doing the same. A
deferred transaction that upgrades to writing later could instead fail at once with
``database is locked`` when another writer got in between. WAL journaling lets readers
carry on while one writer works.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

# How long a SQLite connection waits for the write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000

# Execution option read by the SQLite "begin" listener: "IMMEDIATE" for writers.
_SQLITE_BEGIN = "ftserve_sqlite_begin"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_store_engines(url: str, *, echo: bool = False) -> tuple[Engine, Engine]:
    """A reading and a writing engine for ``url``, sharing one connection pool.

    Returns:
        ``(reader, writer)``. On SQLite the writer's transactions begin ``IMMEDIATE``;
        on Postgres both are the same engine.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(parsed, echo=echo, pool_pre_ping=True)
        return engine, engine
    engine = _sqlite_engine(parsed, echo)
    return engine, engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})


def _sqlite_engine(url: URL, echo: bool) -> Engine:
    kwargs: dict[str, Any] = {"echo": echo, "connect_args": {"check_same_thread": False}}
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        # Every pooled connection to ":memory:" would be a database of its own; share one.
        # Fine for single-threaded tests; use a file for anything concurrent.
        kwargs["poolclass"] = StaticPool
    elif not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # Stop the sqlite3 module from issuing its own (deferred) BEGIN, so that the "begin"
    # listener below decides how each transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
    finally:
        cursor.close()


def _use_wal(cursor: sqlite3.Cursor) -> None:
    # WAL is a property of the file: once one connection set it, the others find it set.
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    # Switching needs an exclusive lock, and SQLite can answer "locked" at once instead of
    # waiting for it (busy_timeout does not cover every path), e.g. while another process
    # creates the schema in a brand-new file. So wait here, as busy_timeout would.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _begin_sqlite_transaction(connection: Connection) -> None:
    mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")
