"""``ftserve worker``: claim one queued job at a time, train, export, publish, report.

A claim is a lease; a heartbeat thread renews it and picks up cancellation. If this
process dies, the lease runs out, the job is re-queued and the next worker resumes it from
the checkpoints in ``<work_dir>/<job id>/`` (the trainer's resume). The job id is written
into the model card before the version's rename, so a job retried after publishing finds
its version instead of publishing a second one.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.config import Settings, get_settings
from service.contract.repository import ModelRepository
from service.contract.train_config import DEFAULT_BASE_MODEL, TrainConfig
from service.errors import FtserveError, MemoryLimitError, TrainingCancelledError
from service.finetune.memory import MemoryWatch
from service.finetune.run import finetune, published_result
from service.ingest.retention import discard_upload
from service.jobs import Job, JobStore, LeaseLostError
from service.training.callbacks import Progress
from service.training.trainer import Hooks, TrainingResult

log = logging.getLogger(__name__)

# Progress is written to the store at most this often mid-epoch (epoch ends always are).
PROGRESS_INTERVAL_SECONDS = 1.0
# The status a worker exits with after failing a job for passing its memory limit.
EXIT_MEMORY_LIMIT = 3
LEASE_LOST = "lease lost"  # how the log names the end of a job another worker took over


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class _JobControl:
    """What the heartbeat thread learns, read by the training hooks every batch."""

    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    shutdown: threading.Event = field(default_factory=threading.Event)

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set() or self.shutdown.is_set()


class Worker:
    """Runs jobs from ``store`` until ``stop`` is set.

    Args:
        store: the job store shared with the API and other workers.
        settings: folders and limits (work_dir, model_repo, data_root, ...).
        worker_id: this worker's name in the store; defaults to host-pid.
        poll_seconds: how long to wait when the queue is empty.
    """

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        worker_id: str | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.poll_seconds = poll_seconds
        self.stop = threading.Event()
        self.repository = ModelRepository(settings.model_repo.resolve())

    def run(self, once: bool = False) -> None:
        """Claim and run jobs; with ``once``, return after the first job (or an empty queue)."""
        self._clean_repository()
        while not self.stop.is_set():
            job = self.store.claim(self.worker_id)
            if job is None:
                if once:
                    return
                self.stop.wait(self.poll_seconds)
                continue
            self.run_job(job)
            if once:
                return

    def run_job(self, job: Job) -> None:
        """Train, export and publish ``job``, keeping its row in the store up to date."""
        base_model = job.config.get("base_model", DEFAULT_BASE_MODEL)
        log.info(
            "job %s: claimed: model %s, base model %s, attempt %d of %d",
            job.id,
            job.model_name,
            base_model,
            job.attempts,
            job.max_attempts,
        )
        started = time.monotonic()
        control = _JobControl(shutdown=self.stop)
        beat = threading.Thread(target=self._heartbeat, args=(job, control), daemon=True)
        beat.start()
        limit = self.settings.job_memory_limit_bytes
        try:
            with MemoryWatch(limit, lambda rss: self._out_of_memory(job, rss, limit)):
                state, detail = self._finish(job, control)
        except LeaseLostError:
            state, detail = LEASE_LOST, "another worker owns it now"
        finally:
            control.lost.set()  # stops the heartbeat
            beat.join()
        elapsed = time.monotonic() - started
        suffix = f"; {detail}" if detail else ""
        level = logging.WARNING if state == LEASE_LOST else logging.INFO
        log.log(level, "job %s: %s after %.1f s%s", job.id, state, elapsed, suffix)

    def _finish(self, job: Job, control: _JobControl) -> tuple[str, str]:
        """Run the job to an end and record it; returns that end and a detail, for the log."""
        work_dir = self.settings.work_dir / job.id
        try:
            result = self._train_and_publish(job, work_dir, control)
        except TrainingCancelledError:
            if control.lost.is_set():
                raise LeaseLostError(job.id) from None
            if control.shutdown.is_set() and not control.cancel.is_set():
                # Stopping, not cancelled: give the job back with its checkpoints kept.
                self.store.release(job.id, self.worker_id)
                return "released", "the worker is stopping; the job is queued again"
            self.store.mark_cancelled(job.id, self.worker_id)
            ended = ("cancelled", "")
        except FtserveError as exc:
            self.store.fail(job.id, self.worker_id, exc.code, exc.message)
            ended = ("failed", f"error {exc.code}")
        except Exception as exc:  # a bug must fail the job, not kill the worker
            log.exception("job %s failed", job.id)
            message = f"training failed unexpectedly ({type(exc).__name__}); see worker logs"
            self.store.fail(job.id, self.worker_id, "internal", message)
            ended = ("failed", "error internal")
        else:
            self.store.succeed(job.id, self.worker_id, result)
            ended = ("succeeded", f"version {result.get('version')}")
        # A final state: nothing of the job is needed any more.
        _remove(work_dir)
        self._remove_upload(job)
        return ended

    def _train_and_publish(self, job: Job, work_dir: Path, control: _JobControl) -> dict[str, Any]:
        config = TrainConfig.parse({**job.config, "model_name": job.model_name})
        published = self.repository.find_job_version(job.model_name, job.id)
        if published is not None:  # a previous attempt got as far as publishing
            log.info("job %s: version %d was already published", job.id, published)
            return published_result(self.repository, job.model_name, published, self.settings)
        reporter = _ProgressReporter(self.store, job, self.worker_id)
        hooks = Hooks(progress=reporter, should_cancel=control.should_stop)

        def before_publish(_result: TrainingResult) -> None:
            if control.should_stop():
                raise TrainingCancelledError("the job was stopped before publishing")

        def last_check() -> None:
            # Atomic with the store: a cancel either lands before this (nothing is
            # published) or after it (the API answers 409, the version is coming).
            if control.should_stop():
                raise TrainingCancelledError("the job was stopped before publishing")
            if not self.store.begin_publish(job.id, self.worker_id):
                control.cancel.set()
                raise TrainingCancelledError("the job was cancelled before its version's rename")

        done = finetune(
            Path(job.dataset),
            config,
            work_dir,
            self.settings,
            self.repository,
            hooks=hooks,
            job_id=job.id,
            before_publish=before_publish,
            last_check=last_check,
        )
        return done.job_result()

    def _out_of_memory(self, job: Job, rss: int, limit: int) -> None:
        """Past the memory limit: fail the job, free its folders, and exit at once."""
        error = MemoryLimitError(
            f"the job needed more than {_mib(limit)} MiB of memory (the worker reached"
            f" {_mib(rss)} MiB; the limit is FTSERVE_JOB_MEMORY_LIMIT_BYTES): use fewer or"
            " smaller images, a smaller image_size or batch_size, or a lighter base_model"
        )
        log.error("job %s: %s; the worker exits", job.id, error.message)
        try:
            self.store.fail(job.id, self.worker_id, error.code, error.message)
        except Exception:  # the lease may be gone; exiting matters more than reporting
            log.exception("job %s: could not record the failure", job.id)
        _remove(self.settings.work_dir / job.id)
        self._remove_upload(job)
        logging.shutdown()
        # Not sys.exit: other threads (the training loop) hold the memory and keep going.
        os._exit(EXIT_MEMORY_LIMIT)

    def _remove_upload(self, job: Job) -> None:
        discard_upload(job.dataset, self.settings.uploads_dir())

    def _heartbeat(self, job: Job, control: _JobControl) -> None:
        every = self.store.lease_seconds / 3
        while not control.lost.wait(every):
            try:
                if self.store.heartbeat(job.id, self.worker_id):
                    control.cancel.set()
            except LeaseLostError:
                control.lost.set()
            except Exception:  # the database may blip; the lease leaves room for retries
                log.exception("job %s: heartbeat failed", job.id)

    def _clean_repository(self) -> None:
        removed = self.repository.clean_stale_staging()
        for path in removed:
            log.info("removed a crashed publish's leftovers: %s", path)


class _ProgressReporter:
    """Writes training progress to the store: each epoch end, and mid-epoch now and then."""

    def __init__(self, store: JobStore, job: Job, worker_id: str) -> None:
        self.store, self.job_id, self.worker_id = store, job.id, worker_id
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if not progress.epoch_end and now - self._last < PROGRESS_INTERVAL_SECONDS:
            return
        self._last = now
        state = {
            "phase": progress.phase,
            "epoch": progress.epoch,
            "epochs": progress.epochs,
            "step": progress.step,
            "steps": progress.steps,
            "eta_seconds": progress.eta_seconds,
            # The latest batch's, so that a watcher sees the loss move within an epoch.
            "metrics": {name: round(value, 6) for name, value in progress.metrics.items()},
        }
        epoch = None
        if progress.epoch_end:
            epoch = {"phase": progress.phase, "epoch": progress.epoch, **progress.metrics}
        self.store.update_progress(self.job_id, self.worker_id, state, epoch)


def _mib(size: int) -> int:
    return size // 2**20


def _remove(work_dir: Path) -> None:
    shutil.rmtree(work_dir, ignore_errors=True)


def run_worker(worker_id: str | None, once: bool, poll_seconds: float) -> int:
    """The ``ftserve worker`` command: run jobs until SIGTERM/SIGINT, then hand back the job."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    store = JobStore.from_settings(settings)
    store.create_schema()
    worker = Worker(store, settings, worker_id, poll_seconds)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop.set())
    try:
        worker.run(once=once)
    finally:
        store.close()
    return 0
