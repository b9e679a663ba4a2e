"""The worker against a real job store, real training and a real model repository."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service.config import Settings
from service.contract.repository import ModelRepository
from service.finetune.worker import EXIT_MEMORY_LIMIT, Worker
from service.jobs import JobState, JobStore
from service.training.sample_data import make_shapes_dataset

# Small and fast, with a fine-tuning phase long enough to interrupt.
CONFIG = {
    "base_model": "small_cnn",
    "weights": "none",
    "image_size": 32,
    "epochs": 2,
    "batch_size": 8,
    "fine_tune_at": 0,
    "fine_tune_epochs": 2,
}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The shared test settings, with a job store of their own."""
    return settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'jobs.db'}"})


@pytest.fixture
def store(settings: Settings):
    store = JobStore.from_settings(settings)
    store.create_schema()
    yield store
    store.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("worker-data") / "shapes"
    return make_shapes_dataset(root, images_per_class=8, image_size=32, seed=11)


def upload(settings: Settings, dataset: Path, name: str) -> Path:
    """A zip of ``dataset`` where the API keeps uploads."""
    settings.uploads_dir().mkdir(parents=True, exist_ok=True)
    archive = shutil.make_archive(str(settings.uploads_dir() / name), "zip", dataset)
    return Path(archive)


def worker_log(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    """What the worker logged about ``job_id``, without the prefix."""
    prefix = f"job {job_id}: "
    return [
        record.getMessage().removeprefix(prefix)
        for record in caplog.records
        if record.name == "service.finetune.worker" and record.getMessage().startswith(prefix)
    ]


def test_worker_trains_publishes_and_reports(store, settings, dataset, caplog):
    archive = upload(settings, dataset, "job-upload")
    job = store.enqueue("shapes", CONFIG, str(archive))

    with caplog.at_level(logging.INFO, logger="service.finetune.worker"):
        Worker(store, settings, "w1").run(once=True)

    done = store.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.result["model"] == "shapes" and done.result["version"] == 1
    assert Path(done.result["saved_model_path"]) == settings.model_repo.resolve() / "shapes" / "1"
    assert Path(done.result["onnx_path"]).is_file()
    assert done.result["classes"] == ["circle", "square", "triangle"]
    assert 0.0 <= done.result["evaluation"]["accuracy"] <= 1.0
    # No model server is configured: the first version is labelled stable at once.
    assert done.result["promotion"]["decision"] == "promoted"
    assert done.result["promotion"]["candidate"]["version"] == 1
    assert done.result["labels"] == {"stable": 1}
    card = ModelRepository(settings.model_repo).model_card("shapes", 1)
    assert card is not None and card["promotion"] == done.result["promotion"]
    phases = [(entry["phase"], entry["epoch"]) for entry in done.history]
    assert ("head", 1) in phases and ("fine_tune", 2) in phases
    assert done.progress is not None and done.attempts == 1
    # The last batch metrics reported travel with the progress.
    assert isinstance(done.progress["metrics"]["loss"], float)
    lines = worker_log(caplog, job.id)
    assert (
        lines[0] == f"claimed: model shapes, base model small_cnn, attempt 1 of {job.max_attempts}"
    )
    assert re.fullmatch(r"succeeded after \d+\.\d s; version 1", lines[-1]), lines
    assert ModelRepository(settings.model_repo).find_job_version("shapes", job.id) == 1
    assert not archive.exists()  # the upload was the job's own copy
    assert not (settings.work_dir / job.id).exists()
    assert dataset.is_dir()


def test_unusable_dataset_fails_the_job_with_its_code(store, settings, tmp_path, caplog):
    lonely = tmp_path / "lonely"
    make_shapes_dataset(lonely, images_per_class=4, image_size=32, classes=("circle",))
    job = store.enqueue("shapes", CONFIG, str(lonely))

    with caplog.at_level(logging.INFO, logger="service.finetune.worker"):
        Worker(store, settings, "w1").run(once=True)

    failed = store.get(job.id)
    assert failed.state == JobState.FAILED
    assert failed.error["code"] == "dataset_unusable"
    assert ModelRepository(settings.model_repo).versions("shapes") == []
    assert lonely.is_dir()  # a data_uri folder is the user's: never removed
    ended = worker_log(caplog, job.id)[-1]
    assert re.fullmatch(r"failed after \d+\.\d s; error dataset_unusable", ended), ended


def test_cancel_while_running_stops_within_a_batch_and_publishes_nothing(
    store, settings, dataset, caplog
):
    job = store.enqueue("shapes", {**CONFIG, "fine_tune_epochs": 200}, str(dataset))
    worker = Worker(store, settings, "w1")
    store.lease_seconds = 0.6  # heartbeats every 0.2 s pick the request up quickly
    thread = threading.Thread(target=worker.run, kwargs={"once": True})
    with caplog.at_level(logging.INFO, logger="service.finetune.worker"):
        thread.start()
        deadline = time.monotonic() + 120
        while (store.get(job.id).progress or {}).get("phase") != "fine_tune":
            assert time.monotonic() < deadline, "training never reached fine-tuning"
            time.sleep(0.1)
        store.cancel(job.id)
        thread.join(timeout=120)

    cancelled = store.get(job.id)
    assert cancelled.state == JobState.CANCELLED
    finished = [e["epoch"] for e in cancelled.history if e["phase"] == "fine_tune"]
    assert max(finished, default=0) < 200
    assert ModelRepository(settings.model_repo).versions("shapes") == []
    assert not (settings.work_dir / job.id).exists()
    assert re.fullmatch(r"cancelled after \d+\.\d s", worker_log(caplog, job.id)[-1])


def test_a_cancel_during_export_wins_and_publishes_nothing(store, settings, dataset):
    """Training is over and the export runs (seconds): a cancel then still wins, because the
    worker checks it in the store under the repository lock right before the rename."""
    job = store.enqueue("shapes", CONFIG, str(upload(settings, dataset, "late")))
    thread = threading.Thread(target=Worker(store, settings, "w1").run, kwargs={"once": True})
    thread.start()
    deadline = time.monotonic() + 120
    while len(store.get(job.id).history) < CONFIG["epochs"] + CONFIG["fine_tune_epochs"]:
        assert time.monotonic() < deadline, "training never finished"
        time.sleep(0.02)
    answered = store.cancel(job.id)  # the last epoch ended: evaluation and export are next
    thread.join(timeout=120)

    assert answered.cancel_requested
    cancelled = store.get(job.id)
    assert cancelled.state == JobState.CANCELLED, cancelled.error
    assert ModelRepository(settings.model_repo).versions("shapes") == []
    assert list((settings.model_repo / "shapes").glob(".staging-*")) == []
    assert not (settings.work_dir / job.id).exists()
    assert list(settings.uploads_dir().iterdir()) == []


def test_a_retried_job_that_already_published_does_not_publish_again(store, settings, dataset):
    job = store.enqueue("shapes", CONFIG, str(dataset))
    Worker(store, settings, "w1").run(once=True)
    assert store.get(job.id).state == JobState.SUCCEEDED
    # Pretend the first worker died after the rename but before reporting success.
    again = store.enqueue("shapes", CONFIG, str(dataset), job_id="second-try")
    card_path = settings.model_repo / "shapes" / "1" / "assets.extra" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["job_id"] = again.id
    card_path.write_text(json.dumps(card))

    Worker(store, settings, "w2").run(once=True)

    retried = store.get(again.id)
    assert retried.state == JobState.SUCCEEDED
    assert retried.result["version"] == 1
    assert retried.result["labels"] == {"stable": 1}
    assert ModelRepository(settings.model_repo).versions("shapes") == [1]


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "FTSERVE_DATA_ROOT": str(settings.data_root),
        "FTSERVE_WORK_DIR": str(settings.work_dir),
        "FTSERVE_MODEL_REPO": str(settings.model_repo),
        "FTSERVE_WEIGHTS_DIR": str(settings.weights_dir),
        "FTSERVE_DATABASE_URL": str(settings.database_url),
        "FTSERVE_LEASE_SECONDS": "2",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **extra,
    }


def worker_process(
    settings: Settings, worker_id: str, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "service.cli", "worker", f"--worker-id={worker_id}"]
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, env=worker_env(settings, **env), stdout=out, stderr=subprocess.STDOUT
        )


def wait_until(condition, worker: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert worker.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


# Where the first worker is stopped: (phase, epoch reached, signal, dataset source).
# Phase 1 ("head") trains on cached features, many short epochs; phase 2 ("fine_tune")
# trains the whole model.
INTERRUPTIONS = [
    pytest.param("fine_tune", 4, signal.SIGKILL, "folder", id="kill-fine_tune-folder"),
    pytest.param("fine_tune", 4, signal.SIGKILL, "upload", id="kill-fine_tune-upload"),
    pytest.param("head", 15, signal.SIGKILL, "upload", id="kill-head-upload"),
    pytest.param("head", 15, signal.SIGTERM, "upload", id="sigterm-head-upload"),
]


@pytest.mark.parametrize(("phase", "reached", "signum", "source"), INTERRUPTIONS)
def test_an_interrupted_job_is_resumed_by_another_worker_and_published_once(
    store, settings, dataset, tmp_path, phase: str, reached: int, signum: int, source: str
):
    if source == "upload":  # an archive the API kept in the uploads folder
        dataset = upload(settings, dataset, "job")
    # Every planned epoch runs (no early stopping): the history below lists them all.
    config = {**CONFIG, "fine_tune_epochs": 12, "early_stopping_patience": 1000}
    if phase == "head":
        config.update(epochs=60)
    job = store.enqueue("shapes", config, str(dataset))
    first_log = tmp_path / "first.log"
    first = worker_process(settings, "first", first_log)
    try:

        def reached_the_phase() -> bool:
            progress = store.get(job.id).progress or {}
            return progress.get("phase") == phase and progress.get("epoch", 0) >= reached

        wait_until(reached_the_phase, first, first_log, 180)
        first.send_signal(signum)
        first.wait(timeout=60)
        interrupted = store.get(job.id)
        if signum == signal.SIGKILL:  # the lease lapses, then a claim re-queues the job
            assert interrupted.state == JobState.RUNNING and interrupted.worker_id == "first"
        else:  # handed back at once, the attempt returned
            assert (first.returncode, interrupted.state) == (0, JobState.QUEUED)
            assert interrupted.attempts == 0

        second_log = tmp_path / "second.log"
        second = worker_process(settings, "second", second_log)
        try:
            finished = (JobState.SUCCEEDED, JobState.FAILED)
            wait_until(lambda: store.get(job.id).state in finished, second, second_log, 240)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()

    done = store.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.worker_id == "second"
    assert done.attempts == (2 if signum == signal.SIGKILL else 1)
    # Every epoch once, in order, in the job and in the model card: the resumed phase went
    # on from its checkpoint, and epochs redone since it are not listed twice.
    expected = [("head", e) for e in range(1, config["epochs"] + 1)] + [
        ("fine_tune", e) for e in range(1, 13)
    ]
    assert [(e["phase"], e["epoch"]) for e in done.history] == expected
    card = ModelRepository(settings.model_repo).model_card("shapes", 1)
    assert card is not None
    assert [(e["phase"], e["epoch"]) for e in card["training"]["history"]] == expected
    assert ModelRepository(settings.model_repo).versions("shapes") == [1]
    # Nothing is left behind: the job folder (extraction, caches) and the upload are gone.
    assert not (settings.work_dir / job.id).exists()
    if source == "upload":
        assert not dataset.exists()
        assert list(settings.uploads_dir().iterdir()) == []


def test_a_job_past_the_memory_limit_fails_and_its_worker_exits(store, settings, dataset, tmp_path):
    archive = upload(settings, dataset, "hungry")
    job = store.enqueue("shapes", CONFIG, str(archive))
    log = tmp_path / "worker.log"
    # TensorFlow alone takes more than this: the first sample in the job is over it.
    limit = 64 * 2**20
    worker = worker_process(settings, "bounded", log, FTSERVE_JOB_MEMORY_LIMIT_BYTES=str(limit))
    assert worker.wait(timeout=120) == EXIT_MEMORY_LIMIT, log.read_text()

    failed = store.get(job.id)
    assert failed.state == JobState.FAILED
    assert failed.error["code"] == "memory_limit_exceeded"
    assert failed.error["message"].startswith("the job needed more than 64 MiB of memory")
    assert "the limit is FTSERVE_JOB_MEMORY_LIMIT_BYTES" in failed.error["message"]
    assert f"job {job.id}: the job needed more than 64 MiB" in log.read_text()
    assert not (settings.work_dir / job.id).exists()
    assert list(settings.uploads_dir().iterdir()) == []
    assert ModelRepository(settings.model_repo).versions("shapes") == []


def test_sigterm_hands_the_running_job_back_to_the_queue(store, settings, dataset, tmp_path):
    job = store.enqueue("shapes", {**CONFIG, "fine_tune_epochs": 200}, str(dataset))
    worker = worker_process(settings, "rolling", tmp_path / "worker.log")
    deadline = time.monotonic() + 180
    while (store.get(job.id).progress or {}).get("phase") != "fine_tune":
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()

    released = store.get(job.id)
    assert released.state == JobState.QUEUED
    assert released.attempts == 0  # a rolling restart does not use up an attempt
    assert (settings.work_dir / job.id).is_dir()  # checkpoints kept for the next worker


def test_an_unusable_model_repository_fails_the_job_before_training(store, settings, dataset):
    # A file where the repository should be: no folder can be made there (root or not).
    settings.model_repo.parent.mkdir(parents=True, exist_ok=True)
    settings.model_repo.write_text("not a folder")
    job = store.enqueue("shapes", CONFIG, str(upload(settings, dataset, "nowhere")))

    Worker(store, settings, "w1").run(once=True)

    failed = store.get(job.id)
    assert failed.state == JobState.FAILED
    assert failed.error["code"] == "storage_unavailable"
    assert "model repository" in failed.error["message"]
    assert failed.history == []  # refused before the first epoch, not after training
    assert not (settings.work_dir / job.id).exists()
    assert list(settings.uploads_dir().iterdir()) == []
