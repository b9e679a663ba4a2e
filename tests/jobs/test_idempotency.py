"""Idempotency-Key leases on SQLite and Postgres: renewals, takeovers, and the owner guard."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    inspect,
    update,
)

from service.jobs import IdempotencyRecord, JobStore
from service.jobs.tables import IdempotencyRow

LEASE = 10.0
RESPONSE = {"job_id": "j1", "status": "queued"}
AgeKey = Callable[[str, float], None]
MakeStore = Callable[..., JobStore]


@pytest.fixture
def age_key(db_url: str) -> Iterator[AgeKey]:
    """Moves a key's last renewal ``seconds`` into the past, as if its owner had gone quiet."""
    engine = create_engine(db_url)

    def age(key: str, seconds: float) -> None:
        past = datetime.now(UTC) - timedelta(seconds=seconds)
        with engine.begin() as connection:
            changed = connection.execute(
                update(IdempotencyRow).where(IdempotencyRow.key == key).values(updated_at=past)
            )
            assert changed.rowcount == 1

    yield age
    engine.dispose()


def accepting(key: str) -> IdempotencyRecord:
    return IdempotencyRecord(
        key=key, state="accepting", request_hash=None, job_id=None, response=None
    )


def test_a_key_renewed_within_the_lease_stays_with_its_owner(store: JobStore, age_key: AgeKey):
    assert store.begin_idempotent("k", "a", stale_after=LEASE) is None
    age_key("k", LEASE + 5)

    assert store.renew_idempotent("k", "a") is True

    assert store.begin_idempotent("k", "b", stale_after=LEASE) == accepting("k")
    assert store.renew_idempotent("k", "a") is True


def test_a_key_not_renewed_for_the_lease_is_taken_over(store: JobStore, age_key: AgeKey):
    assert store.begin_idempotent("k", "a", stale_after=LEASE) is None
    age_key("k", LEASE - 2)
    assert store.begin_idempotent("k", "b", stale_after=LEASE) == accepting("k")

    age_key("k", LEASE + 1)
    assert store.begin_idempotent("k", "b", stale_after=LEASE) is None

    assert store.begin_idempotent("k", "c", stale_after=LEASE) == accepting("k")  # b's now
    assert store.renew_idempotent("k", "b") is True


def test_the_owner_that_lost_its_key_can_no_longer_touch_it(store: JobStore, age_key: AgeKey):
    store.begin_idempotent("k", "a", stale_after=LEASE)
    age_key("k", LEASE + 1)
    assert store.begin_idempotent("k", "b", stale_after=LEASE) is None

    assert store.renew_idempotent("k", "a") is False
    store.abandon_idempotent("k", "a")
    assert store.complete_idempotent("k", "a", "hash-a", "job-a", {"job_id": "job-a"}) is False
    assert store.begin_idempotent("k", "c", stale_after=LEASE) == accepting("k")

    assert store.complete_idempotent("k", "b", "hash-b", "job-b", {"job_id": "job-b"}) is True
    assert store.begin_idempotent("k", "c", stale_after=LEASE) == IdempotencyRecord(
        key="k", state="done", request_hash="hash-b", job_id="job-b", response={"job_id": "job-b"}
    )
    assert store.complete_idempotent("k", "a", "hash-a", "job-a", {"job_id": "job-a"}) is False


def test_a_done_key_is_neither_renewed_nor_taken_over(store: JobStore, age_key: AgeKey):
    store.begin_idempotent("k", "a")
    assert store.complete_idempotent("k", "a", "h", "j1", RESPONSE) is True
    age_key("k", 10 * LEASE)

    assert store.renew_idempotent("k", "a") is False
    record = store.begin_idempotent("k", "b", stale_after=LEASE)
    assert record == IdempotencyRecord(
        key="k", state="done", request_hash="h", job_id="j1", response=RESPONSE
    )


def test_without_stale_after_a_key_is_never_taken_over(store: JobStore, age_key: AgeKey):
    store.begin_idempotent("k", "a")
    age_key("k", 10 * LEASE)
    assert store.begin_idempotent("k", "b") == accepting("k")
    assert store.renew_idempotent("k", "a") is True


def test_completing_a_key_taken_over_then_abandoned_records_it(store: JobStore, age_key: AgeKey):
    """The job of the first owner exists; the key is free again: it is recorded after all."""
    store.begin_idempotent("k", "a", stale_after=LEASE)
    age_key("k", LEASE + 1)
    assert store.begin_idempotent("k", "b", stale_after=LEASE) is None
    store.abandon_idempotent("k", "b")

    assert store.complete_idempotent("k", "a", "h", "j1", RESPONSE) is True
    assert store.begin_idempotent("k", "c", stale_after=LEASE) == IdempotencyRecord(
        key="k", state="done", request_hash="h", job_id="j1", response=RESPONSE
    )


def test_renewing_a_key_nobody_holds_says_so(store: JobStore):
    assert store.renew_idempotent("never-seen", "a") is False


def test_concurrent_takeovers_of_a_stale_key_let_exactly_one_caller_proceed(
    make_store: MakeStore, age_key: AgeKey
):
    stores = [make_store() for _ in range(6)]
    stores[0].create_schema()
    stores[0].begin_idempotent("k", "dead")
    age_key("k", LEASE + 1)
    start = threading.Barrier(len(stores))

    def take_over(numbered: tuple[int, JobStore]) -> IdempotencyRecord | None:
        number, store = numbered
        start.wait()
        return store.begin_idempotent("k", f"owner-{number}", stale_after=LEASE)

    with ThreadPoolExecutor(len(stores)) as pool:
        records = list(pool.map(take_over, enumerate(stores)))

    assert records.count(None) == 1
    assert records.count(accepting("k")) == len(stores) - 1
    winner = f"owner-{records.index(None)}"
    assert [stores[0].renew_idempotent("k", f"owner-{n}") for n in range(len(stores))] == [
        f"owner-{n}" == winner for n in range(len(stores))
    ]


def test_create_schema_adds_the_owner_column_to_a_table_made_before_it(
    db_url: str, make_store: MakeStore
):
    """A database created by an earlier version keeps its keys and gains the lease guard."""
    engine = create_engine(db_url)
    before = MetaData()
    old_table = Table(
        "idempotency_keys",
        before,
        Column("key", String(255), primary_key=True),
        Column("state", String(16), nullable=False),
        Column("request_hash", String(128)),
        Column("job_id", String(64)),
        Column("response", JSON),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    now = datetime.now(UTC)
    with engine.begin() as connection:
        before.create_all(connection)
        connection.execute(
            insert(old_table).values(
                key="old",
                state="done",
                request_hash="h",
                job_id="j1",
                response=RESPONSE,
                created_at=now,
                updated_at=now,
            )
        )

    store = make_store()
    store.create_schema()
    store.create_schema()  # and a second time changes nothing

    columns = [column["name"] for column in inspect(engine).get_columns("idempotency_keys")]
    engine.dispose()
    assert columns.count("owner") == 1
    assert store.begin_idempotent("old", "a", stale_after=LEASE) == IdempotencyRecord(
        key="old", state="done", request_hash="h", job_id="j1", response=RESPONSE
    )
    assert store.begin_idempotent("new", "a", stale_after=LEASE) is None
    assert store.renew_idempotent("new", "a") is True
    assert store.complete_idempotent("new", "a", "h2", "j2", {"job_id": "j2"}) is True
