"""The job store on SQLite and Postgres: lifecycle, queue, leases, cancel, Idempotency-Keys."""

from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy.exc import OperationalError

from service.errors import FtserveError, JobFinishedError, JobNotFoundError, QueueFullError
from service.jobs import (
    FINAL_STATES,
    IdempotencyRecord,
    Job,
    JobState,
    JobStore,
    LeaseLostError,
)

if TYPE_CHECKING:
    from service.config import Settings

CONFIG = {"epochs": 3, "backbone": "mobilenet_v3_small", "fine_tune_at": None}
DATASET = "/srv/data/uploads/0123.zip"
ExpireLease = Callable[[str], None]
MakeStore = Callable[..., JobStore]
REPO_ROOT = Path(__file__).resolve().parents[2]


def enqueue(store: JobStore, model_name: str = "flowers", **kwargs: Any) -> Job:
    return store.enqueue(model_name, CONFIG, DATASET, **kwargs)


def running(store: JobStore, worker_id: str = "w1") -> Job:
    """A job claimed by ``worker_id`` (the only one queued)."""
    enqueue(store)
    job = store.claim(worker_id)
    assert job is not None
    return job


def lease_lost_calls(store: JobStore, job_id: str, worker_id: str) -> dict[str, Callable[[], Any]]:
    """Every call a worker makes about its job, each of which needs the lease."""
    return {
        "heartbeat": lambda: store.heartbeat(job_id, worker_id),
        "update_progress": lambda: store.update_progress(job_id, worker_id, {"phase": "head"}),
        "succeed": lambda: store.succeed(job_id, worker_id, {"version": 1}),
        "fail": lambda: store.fail(job_id, worker_id, "internal", "boom"),
        "mark_cancelled": lambda: store.mark_cancelled(job_id, worker_id),
        "release": lambda: store.release(job_id, worker_id),
    }


# -- enqueue and get ---------------------------------------------------------------------------


def test_enqueue_returns_a_queued_job_with_nothing_else_set(store: JobStore):
    before = datetime.now(UTC)
    job = enqueue(store)
    after = datetime.now(UTC)

    assert re.fullmatch(r"[0-9a-f]{32}", job.id)
    assert before <= job.created_at <= after
    assert job.created_at.tzinfo is UTC
    assert job == Job(
        id=job.id,
        model_name="flowers",
        state=JobState.QUEUED,
        config=CONFIG,
        dataset=DATASET,
        created_at=job.created_at,
        updated_at=job.created_at,
        started_at=None,
        finished_at=None,
        attempts=0,
        max_attempts=3,
        progress=None,
        history=[],
        result=None,
        error=None,
        cancel_requested=False,
        worker_id=None,
        lease_expires_at=None,
    )
    assert store.get(job.id) == job


def test_enqueue_uses_the_given_job_id(store: JobStore):
    job = enqueue(store, job_id="a" * 32)

    assert job.id == "a" * 32
    assert store.get("a" * 32) == job


def test_enqueue_copies_the_stores_max_attempts_into_the_job(make_store: MakeStore):
    store = make_store(max_attempts=5)
    store.create_schema()

    assert enqueue(store).max_attempts == 5


def test_get_unknown_job_raises_job_not_found(store: JobStore):
    with pytest.raises(JobNotFoundError) as caught:
        store.get("0" * 32)

    assert caught.value.to_dict() == {
        "error": {"code": "job_not_found", "message": f"no job with id {'0' * 32!r}"}
    }


# -- the lifecycle -----------------------------------------------------------------------------


def test_full_lifecycle_from_queued_to_succeeded_sets_each_timestamp(store: JobStore):
    queued = enqueue(store)

    claimed = store.claim("w1")
    assert claimed is not None
    assert claimed.id == queued.id
    assert claimed.state is JobState.RUNNING
    assert claimed.worker_id == "w1"
    assert claimed.attempts == 1
    assert claimed.started_at is not None
    assert claimed.started_at >= queued.created_at
    assert claimed.updated_at == claimed.started_at
    assert claimed.lease_expires_at == claimed.started_at + timedelta(seconds=30)
    assert claimed.finished_at is None

    assert store.heartbeat(queued.id, "w1") is False
    progress = {"phase": "head", "epoch": 1, "epochs": 3, "step": 4, "steps": 4, "eta_seconds": 2}
    store.update_progress(queued.id, "w1", progress, {"epoch": 1, "loss": 0.5, "accuracy": 0.75})
    result = {"model": "flowers", "version": 1, "evaluation": {"accuracy": 0.75}}
    succeeded = store.succeed(queued.id, "w1", result)

    assert succeeded.state is JobState.SUCCEEDED
    assert succeeded.result == result
    assert succeeded.progress == progress
    assert succeeded.history == [{"epoch": 1, "loss": 0.5, "accuracy": 0.75}]
    assert succeeded.started_at == claimed.started_at
    assert succeeded.finished_at is not None
    assert succeeded.finished_at >= claimed.started_at
    assert succeeded.updated_at == succeeded.finished_at
    assert succeeded.lease_expires_at is None
    assert succeeded.worker_id == "w1"
    assert succeeded.error is None
    assert store.get(queued.id) == succeeded


def test_fail_records_the_error_and_finishes_the_job(store: JobStore):
    job = running(store)

    failed = store.fail(job.id, "w1", "dataset_unusable", "class 'cat' has no images")

    assert failed.state is JobState.FAILED
    assert failed.error == {"code": "dataset_unusable", "message": "class 'cat' has no images"}
    assert failed.finished_at == failed.updated_at
    assert failed.lease_expires_at is None
    assert failed.result is None
    assert store.get(job.id) == failed


def test_update_progress_appends_only_the_epochs_given(store: JobStore):
    job = running(store)

    store.update_progress(job.id, "w1", {"epoch": 1, "step": 1}, {"epoch": 1, "loss": 0.9})
    store.update_progress(job.id, "w1", {"epoch": 2, "step": 1})
    store.update_progress(job.id, "w1", {"epoch": 2, "step": 2}, {"epoch": 2, "loss": 0.4})

    stored = store.get(job.id)
    assert stored.progress == {"epoch": 2, "step": 2}
    assert stored.history == [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.4}]


def test_a_finished_job_refuses_further_worker_calls(store: JobStore):
    job = running(store)
    finished = store.succeed(job.id, "w1", {"version": 1})

    for name, call in lease_lost_calls(store, job.id, "w1").items():
        with pytest.raises(LeaseLostError):
            call()
        assert store.get(job.id) == finished, name


def test_worker_calls_on_an_unknown_job_raise_job_not_found(store: JobStore):
    for call in lease_lost_calls(store, "0" * 32, "w1").values():
        with pytest.raises(JobNotFoundError):
            call()


# -- listing -----------------------------------------------------------------------------------


def test_list_returns_newest_first_with_the_total(store: JobStore):
    ids = [enqueue(store).id for _ in range(3)]

    jobs, total = store.list()

    assert [job.id for job in jobs] == ids[::-1]
    assert total == 3


def test_list_filters_by_state_and_model_name(store: JobStore):
    a1 = enqueue(store, "a")
    enqueue(store, "a")
    b1 = enqueue(store, "b")
    assert store.claim("w1") == store.get(a1.id)  # a1 is running now

    def ids(**filters: Any) -> tuple[list[str], int]:
        jobs, total = store.list(**filters)
        return [job.id for job in jobs], total

    assert ids(state=JobState.RUNNING) == ([a1.id], 1)
    assert ids(model_name="b") == ([b1.id], 1)
    assert ids(state=JobState.QUEUED, model_name="a")[1] == 1
    assert ids(state=JobState.QUEUED, model_name="b") == ([b1.id], 1)
    assert ids(state=JobState.FAILED) == ([], 0)
    assert ids(model_name="c") == ([], 0)


def test_list_pages_with_limit_and_offset_and_keeps_the_total(store: JobStore):
    newest_first = [enqueue(store).id for _ in range(5)][::-1]

    pages = [store.list(limit=2, offset=offset) for offset in (0, 2, 4, 6)]

    assert [[job.id for job in jobs] for jobs, _ in pages] == [
        newest_first[0:2],
        newest_first[2:4],
        newest_first[4:5],
        [],
    ]
    assert [total for _, total in pages] == [5, 5, 5, 5]


def test_list_rejects_a_negative_limit_or_offset(store: JobStore):
    with pytest.raises(ValueError, match="must not be negative"):
        store.list(limit=-1)
    with pytest.raises(ValueError, match="must not be negative"):
        store.list(offset=-1)


# -- queue depth -------------------------------------------------------------------------------


def test_enqueue_beyond_max_queue_depth_raises_queue_full(store: JobStore):
    enqueue(store, max_queue_depth=2)
    enqueue(store, max_queue_depth=2)

    with pytest.raises(QueueFullError) as caught:
        enqueue(store, max_queue_depth=2)

    assert caught.value.to_dict() == {
        "error": {
            "code": "queue_full",
            "message": "the queue is full (2 jobs waiting, at most 2); retry later",
        }
    }
    assert store.queue_depth() == 2
    assert store.list()[1] == 2


def test_claimed_and_cancelled_jobs_free_their_queue_slots(store: JobStore):
    first = enqueue(store, max_queue_depth=2)
    enqueue(store, max_queue_depth=2)
    store.claim("w1")
    enqueue(store, max_queue_depth=2)
    store.cancel(store.list(state=JobState.QUEUED)[0][0].id)

    enqueue(store, max_queue_depth=2)

    assert store.queue_depth() == 2
    assert store.get(first.id).state is JobState.RUNNING


def test_concurrent_enqueues_never_exceed_max_queue_depth(make_store: MakeStore):
    stores = [make_store() for _ in range(8)]
    stores[0].create_schema()
    start = threading.Barrier(len(stores))

    def try_enqueue(store: JobStore) -> bool:
        start.wait()
        try:
            enqueue(store, max_queue_depth=5)
        except QueueFullError:
            return False
        return True

    with ThreadPoolExecutor(len(stores)) as pool:
        accepted = list(pool.map(try_enqueue, stores))

    assert accepted.count(True) == 5
    assert stores[0].queue_depth() == 5


# -- claiming ----------------------------------------------------------------------------------


def test_claim_takes_the_oldest_queued_job_first(store: JobStore):
    ids = [enqueue(store).id for _ in range(3)]

    claimed = [store.claim(f"w{n}") for n in range(4)]

    assert [job.id if job else None for job in claimed] == [*ids, None]


def test_claim_on_an_empty_queue_returns_none(store: JobStore):
    assert store.claim("w1") is None


def test_claim_passes_over_cancelled_jobs(store: JobStore):
    cancelled = enqueue(store)
    waiting = enqueue(store)
    store.cancel(cancelled.id)

    claimed = store.claim("w1")

    assert claimed is not None
    assert claimed.id == waiting.id
    assert store.claim("w2") is None


def test_concurrent_claims_from_eight_threads_claim_each_job_once(
    store: JobStore, make_store: MakeStore
):
    ids = {enqueue(store).id for _ in range(20)}
    workers = {f"w{n}": make_store() for n in range(8)}
    start = threading.Barrier(len(workers))

    def claim_all(worker_id: str) -> list[str]:
        start.wait()
        claimed = []
        while (job := workers[worker_id].claim(worker_id)) is not None:
            claimed.append(job.id)
        return claimed

    with ThreadPoolExecutor(len(workers)) as pool:
        by_worker = dict(zip(workers, pool.map(claim_all, workers), strict=True))

    claimed = [job_id for job_ids in by_worker.values() for job_id in job_ids]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    for worker_id, job_ids in by_worker.items():
        assert {store.get(job_id).worker_id for job_id in job_ids} <= {worker_id}
    assert store.counts_by_state()[JobState.RUNNING] == 20


def _claim_until_empty(url: str, worker_id: str, start: Any, results: Any) -> None:
    """Runs in a spawned process: claim jobs until none is left, report their ids."""
    store = JobStore(url)
    try:
        start.wait()
        claimed = []
        while (job := store.claim(worker_id)) is not None:
            claimed.append(job.id)
        results.put((worker_id, claimed))
    finally:
        store.close()


def test_concurrent_claims_from_three_processes_claim_each_job_once_on_sqlite(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = JobStore(url)
    store.create_schema()
    ids = {enqueue(store).id for _ in range(20)}
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(3), context.Queue()
    processes = [
        context.Process(target=_claim_until_empty, args=(url, f"p{n}", start, results))
        for n in range(3)
    ]
    for process in processes:
        process.start()
    try:
        by_worker = dict(results.get(timeout=60) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=10)

    claimed = [job_id for job_ids in by_worker.values() for job_id in job_ids]
    assert sorted(claimed) == sorted(ids)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    for worker_id, job_ids in by_worker.items():
        assert {store.get(job_id).worker_id for job_id in job_ids} <= {worker_id}
    store.close()


# -- leases ------------------------------------------------------------------------------------


def test_heartbeat_moves_the_lease_forward(store: JobStore):
    job = running(store)
    time.sleep(0.01)

    assert store.heartbeat(job.id, "w1") is False

    renewed = store.get(job.id)
    assert job.lease_expires_at is not None
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > job.lease_expires_at
    assert renewed.lease_expires_at == renewed.updated_at + timedelta(seconds=30)
    assert renewed.state is JobState.RUNNING


def test_heartbeat_reports_a_requested_cancel(store: JobStore):
    job = running(store)
    store.cancel(job.id)

    assert store.heartbeat(job.id, "w1") is True
    assert store.get(job.id).state is JobState.RUNNING


def test_update_progress_renews_the_lease(store: JobStore):
    job = running(store)
    time.sleep(0.01)

    store.update_progress(job.id, "w1", {"phase": "head", "epoch": 1})

    renewed = store.get(job.id)
    assert job.lease_expires_at is not None
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > job.lease_expires_at


def test_another_workers_calls_raise_lease_lost_and_change_nothing(store: JobStore):
    job = running(store, "w1")

    for name, call in lease_lost_calls(store, job.id, "w2").items():
        with pytest.raises(LeaseLostError) as caught:
            call()
        assert store.get(job.id) == job, name

    assert caught.value.job_id == job.id
    assert caught.value.worker_id == "w2"
    assert caught.value.state is JobState.RUNNING
    assert caught.value.owner == "w1"
    assert (
        str(caught.value)
        == f"job {job.id} is no longer running under worker w2: it is running, worker w1"
    )


def test_expired_lease_requeues_the_job_keeping_attempts_and_progress(
    store: JobStore, expire_lease: ExpireLease
):
    job = running(store)
    store.update_progress(job.id, "w1", {"phase": "head", "epoch": 1}, {"epoch": 1, "loss": 1.0})
    expire_lease(job.id)

    assert store.requeue_expired() == 1

    requeued = store.get(job.id)
    assert requeued.state is JobState.QUEUED
    assert requeued.attempts == 1
    assert requeued.worker_id is None
    assert requeued.lease_expires_at is None
    assert requeued.started_at == job.started_at
    assert requeued.finished_at is None
    assert requeued.progress == {"phase": "head", "epoch": 1}
    assert requeued.history == [{"epoch": 1, "loss": 1.0}]
    assert store.queue_depth() == 1


def test_requeued_job_goes_to_the_next_worker_and_the_old_one_loses_it(
    store: JobStore, expire_lease: ExpireLease
):
    job = running(store, "w1")
    expire_lease(job.id)

    reclaimed = store.claim("w2")  # re-queues expired leases first

    assert reclaimed is not None
    assert reclaimed.id == job.id
    assert reclaimed.worker_id == "w2"
    assert reclaimed.attempts == 2
    assert reclaimed.started_at == job.started_at
    for call in lease_lost_calls(store, job.id, "w1").values():
        with pytest.raises(LeaseLostError):
            call()
    assert store.get(job.id) == reclaimed
    assert store.succeed(job.id, "w2", {"version": 1}).state is JobState.SUCCEEDED


def test_a_short_lease_runs_out_on_its_own(make_store: MakeStore):
    store = make_store(lease_seconds=0.2)
    store.create_schema()
    job = running(store, "w1")

    time.sleep(0.3)
    reclaimed = store.claim("w2")

    assert reclaimed is not None
    assert (reclaimed.id, reclaimed.worker_id, reclaimed.attempts) == (job.id, "w2", 2)
    with pytest.raises(LeaseLostError):
        store.heartbeat(job.id, "w1")


def test_requeue_expired_leaves_live_leases_alone(store: JobStore):
    job = running(store)

    assert store.requeue_expired() == 0
    assert store.get(job.id) == job


def test_job_fails_with_worker_lost_once_its_attempts_are_spent(
    make_store: MakeStore, expire_lease: ExpireLease
):
    store = make_store(max_attempts=2)
    store.create_schema()
    job = running(store, "w1")
    expire_lease(job.id)
    assert store.claim("w2") is not None
    expire_lease(job.id)

    assert store.requeue_expired() == 1

    failed = store.get(job.id)
    assert failed.state is JobState.FAILED
    assert failed.error == {
        "code": "worker_lost",
        "message": "the worker stopped renewing its lease after 2 attempts (at most 2)",
    }
    assert failed.attempts == 2
    assert failed.finished_at == failed.updated_at
    assert failed.lease_expires_at is None
    assert store.claim("w3") is None


def test_expired_lease_of_a_job_asked_to_cancel_cancels_it(
    store: JobStore, expire_lease: ExpireLease
):
    job = running(store)
    store.cancel(job.id)
    expire_lease(job.id)

    assert store.requeue_expired() == 1

    cancelled = store.get(job.id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.finished_at == cancelled.updated_at
    assert cancelled.error is None
    assert store.claim("w2") is None


def test_concurrent_requeue_expired_changes_each_job_once(
    store: JobStore, make_store: MakeStore, expire_lease: ExpireLease
):
    ids = [running(store, f"w{n}").id for n in range(10)]
    for job_id in ids:
        expire_lease(job_id)
    sweepers = [make_store() for _ in range(4)]
    start = threading.Barrier(len(sweepers))

    def sweep(sweeper: JobStore) -> int:
        start.wait()
        return sweeper.requeue_expired()

    with ThreadPoolExecutor(len(sweepers)) as pool:
        changed = list(pool.map(sweep, sweepers))

    assert sum(changed) == 10
    assert {(store.get(i).state, store.get(i).attempts) for i in ids} == {(JobState.QUEUED, 1)}


def test_release_requeues_the_job_and_gives_back_the_attempt(store: JobStore):
    job = running(store)

    released = store.release(job.id, "w1")

    assert released.state is JobState.QUEUED
    assert released.attempts == 0
    assert released.worker_id is None
    assert released.lease_expires_at is None
    assert released.finished_at is None
    assert store.get(job.id) == released
    reclaimed = store.claim("w2")
    assert reclaimed is not None
    assert (reclaimed.id, reclaimed.attempts) == (job.id, 1)


def test_release_of_a_job_asked_to_cancel_cancels_it(store: JobStore):
    job = running(store)
    store.cancel(job.id)

    released = store.release(job.id, "w1")

    assert released.state is JobState.CANCELLED
    assert released.finished_at == released.updated_at


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_queued_job_cancels_it_at_once(store: JobStore):
    job = enqueue(store)

    cancelled = store.cancel(job.id)

    assert cancelled.state is JobState.CANCELLED
    assert cancelled.cancel_requested is True
    assert cancelled.finished_at is not None
    assert cancelled.finished_at == cancelled.updated_at
    assert cancelled.started_at is None
    assert store.get(job.id) == cancelled
    assert store.claim("w1") is None


def test_cancel_running_job_asks_its_worker_to_stop(store: JobStore):
    job = running(store)

    requested = store.cancel(job.id)

    assert requested.state is JobState.RUNNING
    assert requested.cancel_requested is True
    assert requested.finished_at is None
    assert store.heartbeat(job.id, "w1") is True
    cancelled = store.mark_cancelled(job.id, "w1")
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.finished_at == cancelled.updated_at
    assert cancelled.lease_expires_at is None
    assert store.get(job.id) == cancelled


def test_a_cancel_before_the_publish_point_stops_the_publish(store: JobStore):
    job = running(store)
    store.cancel(job.id)
    assert store.begin_publish(job.id, "w1") is False
    assert store.get(job.id).state is JobState.RUNNING  # the worker marks it cancelled


def test_after_the_publish_point_a_cancel_is_refused(store: JobStore):
    job = running(store)
    assert store.begin_publish(job.id, "w1") is True
    assert store.get(job.id).progress["phase"] == "publishing"
    with pytest.raises(JobFinishedError, match="publishing its version"):
        store.cancel(job.id)
    assert store.get(job.id).cancel_requested is False


def test_only_the_owner_may_reach_the_publish_point(store: JobStore):
    job = running(store)
    with pytest.raises(LeaseLostError):
        store.begin_publish(job.id, "someone-else")


def test_cancel_running_job_twice_changes_nothing_the_second_time(store: JobStore):
    job = running(store)
    first = store.cancel(job.id)

    assert store.cancel(job.id) == first


def test_cancel_cancelled_job_returns_it_unchanged(store: JobStore):
    job = enqueue(store)
    cancelled = store.cancel(job.id)

    assert store.cancel(job.id) == cancelled
    assert store.get(job.id) == cancelled


@pytest.mark.parametrize("outcome", [JobState.SUCCEEDED, JobState.FAILED])
def test_cancel_finished_job_raises_job_finished(store: JobStore, outcome: JobState):
    job = running(store)
    if outcome is JobState.SUCCEEDED:
        finished = store.succeed(job.id, "w1", {"version": 1})
    else:
        finished = store.fail(job.id, "w1", "internal", "boom")

    with pytest.raises(JobFinishedError) as caught:
        store.cancel(job.id)

    assert caught.value.to_dict() == {
        "error": {
            "code": "job_finished",
            "message": f"job {job.id} already {outcome.value}; it cannot be cancelled",
        }
    }
    assert store.get(job.id) == finished


def test_cancel_unknown_job_raises_job_not_found(store: JobStore):
    with pytest.raises(JobNotFoundError):
        store.cancel("0" * 32)


# -- Idempotency-Keys (leases and takeovers: test_idempotency.py) ------------------------------


def test_begin_idempotent_lets_the_first_caller_proceed_and_shows_others_accepting(
    store: JobStore,
):
    assert store.begin_idempotent("key-1", "owner-a") is None

    assert store.begin_idempotent("key-1", "owner-b") == IdempotencyRecord(
        key="key-1", state="accepting", request_hash=None, job_id=None, response=None
    )
    assert store.begin_idempotent("key-2", "owner-b") is None


def test_completed_key_returns_the_done_record_with_hash_job_and_response(store: JobStore):
    response = {"job_id": "j1", "status": "queued"}
    assert store.begin_idempotent("key-1", "owner-a") is None
    assert store.complete_idempotent("key-1", "owner-a", "sha256:abc", "j1", response)

    assert store.begin_idempotent("key-1", "owner-b") == IdempotencyRecord(
        key="key-1", state="done", request_hash="sha256:abc", job_id="j1", response=response
    )


def test_abandoned_key_lets_a_new_begin_proceed(store: JobStore):
    assert store.begin_idempotent("key-1", "owner-a") is None
    store.abandon_idempotent("key-1", "owner-a")

    assert store.begin_idempotent("key-1", "owner-b") is None
    assert store.begin_idempotent("key-1", "owner-c") is not None


def test_abandon_keeps_a_done_key(store: JobStore):
    store.begin_idempotent("key-1", "owner-a")
    store.complete_idempotent("key-1", "owner-a", "h", "j1", {"job_id": "j1"})

    store.abandon_idempotent("key-1", "owner-a")

    record = store.begin_idempotent("key-1", "owner-b")
    assert record is not None
    assert record.state == "done"


def test_concurrent_begin_idempotent_lets_exactly_one_caller_proceed(make_store: MakeStore):
    stores = [make_store() for _ in range(8)]
    stores[0].create_schema()
    start = threading.Barrier(len(stores))

    def begin(numbered: tuple[int, JobStore]) -> IdempotencyRecord | None:
        start.wait()
        number, store = numbered
        return store.begin_idempotent("shared-key", f"owner-{number}")

    with ThreadPoolExecutor(len(stores)) as pool:
        records = list(pool.map(begin, enumerate(stores)))

    assert records.count(None) == 1
    assert {record.state for record in records if record is not None} == {"accepting"}


# -- counts, serialisation, schema, connections ------------------------------------------------


def test_counts_by_state_lists_every_state_with_zeros(store: JobStore):
    assert store.counts_by_state() == dict.fromkeys(JobState, 0)
    assert list(store.counts_by_state()) == list(JobState)

    enqueue(store)
    store.cancel(enqueue(store).id)
    running(store)  # claims the oldest queued one; the new one stays queued

    assert store.counts_by_state() == {
        JobState.QUEUED: 1,
        JobState.RUNNING: 1,
        JobState.SUCCEEDED: 0,
        JobState.FAILED: 0,
        JobState.CANCELLED: 1,
    }
    assert store.queue_depth() == 1


def test_to_dict_is_json_ready_with_iso_timestamps(store: JobStore):
    job = running(store)
    store.update_progress(job.id, "w1", {"epoch": 1}, {"epoch": 1, "loss": 0.5})
    done = store.succeed(job.id, "w1", {"version": 1})

    data = json.loads(json.dumps(done.to_dict()))

    assert done.started_at is not None
    assert done.finished_at is not None
    assert data == {
        "id": job.id,
        "model_name": "flowers",
        "state": "succeeded",
        "config": CONFIG,
        "dataset": DATASET,
        "created_at": done.created_at.isoformat(),
        "updated_at": done.updated_at.isoformat(),
        "started_at": done.started_at.isoformat(),
        "finished_at": done.finished_at.isoformat(),
        "attempts": 1,
        "max_attempts": 3,
        "progress": {"epoch": 1},
        "history": [{"epoch": 1, "loss": 0.5}],
        "result": {"version": 1},
        "error": None,
        "cancel_requested": False,
        "worker_id": "w1",
        "lease_expires_at": None,
    }
    assert data["created_at"].endswith("+00:00")


def test_final_states_are_the_three_outcomes():
    assert frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}) == FINAL_STATES


def test_create_schema_is_idempotent_and_safe_from_several_stores_at_once(make_store: MakeStore):
    stores = [make_store() for _ in range(4)]
    start = threading.Barrier(len(stores))

    def create(store: JobStore) -> None:
        start.wait()
        store.create_schema()

    with ThreadPoolExecutor(len(stores)) as pool:
        list(pool.map(create, stores))
    stores[0].create_schema()

    assert stores[1].get(enqueue(stores[0]).id).state is JobState.QUEUED


def test_ping_answers_when_the_database_is_up(store: JobStore):
    store.ping()


def test_ping_raises_when_the_database_is_unreachable():
    store = JobStore("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2")
    try:
        with pytest.raises(OperationalError):
            store.ping()
    finally:
        store.close()


def test_from_settings_puts_a_wal_sqlite_file_under_the_data_root(settings: Settings):
    import sqlite3

    tuned = settings.model_copy(update={"lease_seconds": 5.0, "max_attempts": 7})
    store = JobStore.from_settings(tuned)
    try:
        store.create_schema()
        assert (store.lease_seconds, enqueue(store).max_attempts) == (5.0, 7)
    finally:
        store.close()

    database = settings.data_root / "ftserve.db"
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_in_memory_sqlite_store_works_for_a_single_thread():
    store = JobStore("sqlite://")
    try:
        store.create_schema()
        job = enqueue(store)
        assert store.get(job.id) == job
    finally:
        store.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lease_seconds": 0}, "lease_seconds must be positive"),
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
    ],
)
def test_store_rejects_a_useless_lease_or_attempt_limit(
    tmp_path: Path, kwargs: dict[str, Any], message: str
):
    with pytest.raises(ValueError, match=message):
        JobStore(f"sqlite:///{tmp_path / 'jobs.db'}", **kwargs)


def test_lease_lost_is_not_an_error_users_see():
    assert not issubclass(LeaseLostError, FtserveError)
    assert str(LeaseLostError("j1")) == "job j1 is no longer running under this worker"


def test_importing_the_job_store_does_not_import_tensorflow():
    code = "import sys, service.jobs; print('tensorflow' in sys.modules)"

    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )

    assert out.stdout == "False\n"
