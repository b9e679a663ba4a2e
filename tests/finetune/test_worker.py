"""The worker against a real job store, real training and a real model repository."""

from __future__ import annotations

import json
import os
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
from service.finetune.worker import Worker
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


def test_worker_trains_publishes_and_reports(store, settings, dataset):
    archive = upload(settings, dataset, "job-upload")
    job = store.enqueue("shapes", CONFIG, str(archive))

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
    assert ModelRepository(settings.model_repo).find_job_version("shapes", job.id) == 1
    assert not archive.exists()  # the upload was the job's own copy
    assert not (settings.work_dir / job.id).exists()
    assert dataset.is_dir()


def test_unusable_dataset_fails_the_job_with_its_code(store, settings, tmp_path):
    lonely = tmp_path / "lonely"
    make_shapes_dataset(lonely, images_per_class=4, image_size=32, classes=("circle",))
    job = store.enqueue("shapes", CONFIG, str(lonely))

    Worker(store, settings, "w1").run(once=True)

    failed = store.get(job.id)
    assert failed.state == JobState.FAILED
    assert failed.error["code"] == "dataset_unusable"
    assert ModelRepository(settings.model_repo).versions("shapes") == []
    assert lonely.is_dir()  # a data_uri folder is the user's: never removed


def test_cancel_while_running_stops_within_a_batch_and_publishes_nothing(store, settings, dataset):
    job = store.enqueue("shapes", {**CONFIG, "fine_tune_epochs": 200}, str(dataset))
    worker = Worker(store, settings, "w1")
    store.lease_seconds = 0.6  # heartbeats every 0.2 s pick the request up quickly
    thread = threading.Thread(target=worker.run, kwargs={"once": True})
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


def worker_process(settings: Settings, worker_id: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FTSERVE_DATA_ROOT": str(settings.data_root),
        "FTSERVE_WORK_DIR": str(settings.work_dir),
        "FTSERVE_MODEL_REPO": str(settings.model_repo),
        "FTSERVE_WEIGHTS_DIR": str(settings.weights_dir),
        "FTSERVE_DATABASE_URL": str(settings.database_url),
        "FTSERVE_LEASE_SECONDS": "2",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    command = [sys.executable, "-m", "service.cli", "worker", f"--worker-id={worker_id}"]
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("source", ["folder", "upload"])
def test_a_killed_worker_s_job_is_resumed_by_another_and_published_once(
    store, settings, dataset, tmp_path, source: str
):
    if source == "upload":  # an archive the API kept in the uploads folder
        dataset = upload(settings, dataset, "job")
    job = store.enqueue("shapes", {**CONFIG, "fine_tune_epochs": 12}, str(dataset))
    first = worker_process(settings, "first", tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 180
        while True:
            progress = store.get(job.id).progress or {}
            if progress.get("phase") == "fine_tune" and progress.get("epoch", 0) >= 4:
                break
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the first worker never got to fine-tuning"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = store.get(job.id)
        assert killed_at.state == JobState.RUNNING and killed_at.worker_id == "first"

        second = worker_process(settings, "second", tmp_path / "second.log")
        try:
            deadline = time.monotonic() + 240
            while store.get(job.id).state not in (JobState.SUCCEEDED, JobState.FAILED):
                assert second.poll() is None, (tmp_path / "second.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "second.log").read_text()
                time.sleep(0.2)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()

    done = store.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.attempts == 2 and done.worker_id == "second"
    fine_tune = [e["epoch"] for e in done.history if e["phase"] == "fine_tune"]
    # Resumed from the checkpoint: no fine-tuning epoch was started over from 1.
    assert fine_tune.count(1) == 1
    assert fine_tune[-1] == 12
    assert ModelRepository(settings.model_repo).versions("shapes") == [1]
    # Nothing is left behind: the job folder (extraction, caches) and the upload are gone.
    assert not (settings.work_dir / job.id).exists()
    if source == "upload":
        assert not dataset.exists()


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
