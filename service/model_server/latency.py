"""A model's latency per batch size on this machine, for a few TensorFlow thread settings.

Each setting runs in its own ``latency_worker`` process (TensorFlow sizes its pools once per
process). All of them load the model at once and then take turns: each batch size is timed
in ``rounds`` rounds, every setting once per round, so that other work on the machine hits
every setting alike. A setting stops growing its batches once its median latency passes
the bound: a larger batch only takes longer.

This module imports no TensorFlow; only the workers do.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from service.errors import BadRequestError, FtserveError

WORKER_MODULE = "service.model_server.latency_worker"
# Loading TensorFlow and a model in several processes at once on a busy machine is slow.
LOAD_TIMEOUT_SECONDS = 600.0
MEASURE_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class ThreadConfig:
    """How the model runs: TensorFlow's two pools and how many batches run at once."""

    intra_op: int
    inter_op: int
    parallel: int  # batches run at the same time (the server's num_batch_threads)

    def describe(self) -> str:
        runs = "1 run" if self.parallel == 1 else f"{self.parallel} runs"
        return f"intra-op {self.intra_op}, inter-op {self.inter_op}, {runs} at a time"


@dataclass(frozen=True)
class CurvePoint:
    """Batches of one size: latency of one batch, and rows answered per second overall."""

    batch_size: int
    p50_ms: float
    p99_ms: float
    items_per_second: float

    def as_dict(self) -> dict[str, float]:
        return {
            "batch_size": self.batch_size,
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "items_per_second": round(self.items_per_second, 2),
        }


@dataclass(frozen=True)
class Candidate:
    """One thread setting and its measured curve, smallest batch first."""

    threads: ThreadConfig
    curve: tuple[CurvePoint, ...]

    def point(self, batch_size: int) -> CurvePoint | None:
        return next((p for p in self.curve if p.batch_size == batch_size), None)


@dataclass
class Measurement:
    """What the tuner measured: one curve per thread setting, and what the workers fed."""

    candidates: list[Candidate]
    p99_bound_ms: float
    version_dir: str
    inputs: dict[str, str]


@dataclass
class _Samples:
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    batches: int = 0

    def point(self, batch_size: int) -> CurvePoint:
        ordered = sorted(self.latencies_ms)
        return CurvePoint(
            batch_size=batch_size,
            p50_ms=statistics.median(ordered),
            p99_ms=percentile(ordered, 0.99),
            items_per_second=batch_size * self.batches / self.wall_s,
        )


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values (with few samples, p99 is the maximum)."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def candidate_configs(cores: int) -> list[ThreadConfig]:
    """The settings worth trying on ``cores`` CPUs; the first is TensorFlow's usual one.

    One batch on every core is what a lone request gets; one core per batch with a batch
    per core suits models whose ops do not spread over cores; every core for each of a
    batch per core lets TensorFlow share its pools between the runs.
    """
    configs = [ThreadConfig(cores, cores, 1)]
    if cores > 1:
        configs.append(ThreadConfig(1, cores, cores))
        if cores >= 4:
            configs.append(ThreadConfig(cores // 2, cores, 2))
        configs.append(ThreadConfig(cores, cores, cores))
    return configs


def batch_sizes(limit: int) -> list[int]:
    """1, 2, 4, ... up to ``limit``, and ``limit`` itself."""
    sizes = [1 << power for power in range(limit.bit_length()) if 1 << power <= limit]
    return sizes if sizes[-1] == limit else [*sizes, limit]


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux only
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _Worker:
    """One ``latency_worker`` process and its line protocol."""

    def __init__(
        self,
        model_dir: Path,
        signature: str,
        threads: ThreadConfig,
        extra: list[str],
        log: IO[bytes],
    ) -> None:
        self.threads = threads
        self._log = log  # the worker's stderr, for the message when it fails
        # Absolute: the worker may resolve it from another folder.
        command = [sys.executable, "-m", WORKER_MODULE, str(model_dir.absolute())]
        command += ["--signature", signature]
        command += ["--intra", str(threads.intra_op), "--inter", str(threads.inter_op)]
        command += ["--parallel", str(threads.parallel), *extra]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        self._process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def ready(self) -> dict[str, Any]:
        """Waits for the model to load; what the worker loaded and feeds it."""
        reply = self._read(LOAD_TIMEOUT_SECONDS)
        if "error" in reply:
            raise BadRequestError(f"cannot measure the model: {reply['error']}")
        return dict(reply["ready"])

    def time(self, batch_size: int, runs: int, min_seconds: float) -> tuple[list[float], float]:
        assert self._process.stdin is not None
        request = {"batch_size": batch_size, "runs": runs, "min_seconds": min_seconds}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        reply = self._read(MEASURE_TIMEOUT_SECONDS)
        return list(reply["latencies_ms"]), float(reply["wall_s"])

    def kill(self) -> None:
        self._process.kill()

    def close(self) -> None:
        """Ends the worker (end of stdin), killing it if it does not stop soon."""
        with contextlib.suppress(BrokenPipeError):  # it may be dead already
            if self._process.stdin is not None:
                self._process.stdin.close()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def _read(self, timeout: float) -> dict[str, Any]:
        stdout: IO[str] | None = self._process.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if readable else ""
        if not line:
            self._process.kill()
            self._process.wait()
            why = "timed out" if not readable else f"exited with {self._process.returncode}"
            raise FtserveError(
                f"the latency worker ({self.threads.describe()}) {why}: {self._tail()}"
            )
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _tail(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-5:]) or "no output"


@contextmanager
def _workers(
    model_dir: Path, signature: str, configs: list[ThreadConfig], extra: list[str]
) -> Iterator[list[_Worker]]:
    with ExitStack() as stack:
        workers = []
        for config in configs:
            log = stack.enter_context(tempfile.TemporaryFile())
            worker = _Worker(model_dir, signature, config, extra, log)
            stack.callback(worker.close)
            workers.append(worker)
        try:
            yield workers
        except BaseException:
            for worker in workers:  # the others' results are of no use now
                worker.kill()
            raise


def measure(
    model_dir: Path,
    signature: str,
    max_batch_size: int,
    runs: int,
    min_seconds: float = 0.0,
    p99_bound_ms: float | None = None,
    configs: list[ThreadConfig] | None = None,
    image_size: int | None = None,
    rounds: int = 4,
    progress: Callable[[str], None] | None = None,
) -> Measurement:
    """Times batches of 1, 2, 4, ... rows for each thread setting.

    Args:
        model_dir: A SavedModel folder, or a base path whose newest version is measured.
        signature: The signature to run.
        max_batch_size: The largest batch timed.
        runs: Batches timed at least, per size and setting, split over ``rounds``.
        min_seconds: Time spent at least per size and setting (more samples for fast
            models), split over ``rounds``.
        p99_bound_ms: The latency a batch may take; None: twice the p99 of one row on the
            first setting, which is how a lone request runs on an idle server.
        configs: The settings to try (default: ``candidate_configs`` of this machine).
        image_size: The side of the JPEGs fed to string inputs (default: the model's own).
        rounds: How many turns each setting takes at each size.
        progress: Told a line after each batch size, for people watching.

    Raises:
        BadRequestError: The model cannot be found, loaded or fed.
        FtserveError: A worker failed while timing.
    """
    if not model_dir.is_dir():
        raise BadRequestError(f"{model_dir} is not a folder")
    configs = configs or candidate_configs(usable_cores())
    extra = ["--image-size", str(image_size)] if image_size else []
    with _workers(model_dir, signature, configs, extra) as workers:
        ready = [worker.ready() for worker in workers]  # every setting must load
        loaded = ready[0]
        curves: dict[ThreadConfig, list[CurvePoint]] = {config: [] for config in configs}
        active = list(workers)
        bound = p99_bound_ms
        for size in batch_sizes(max_batch_size):
            samples = _interleaved(active, size, runs, min_seconds, rounds)
            for worker in active:
                curves[worker.threads].append(samples[worker.threads].point(size))
            if bound is None:
                bound = 2 * curves[configs[0]][0].p99_ms
            if progress is not None:
                progress(_progress_line(size, active, curves))
            # Once the median passes the bound, larger batches cannot fit under it; the p99
            # alone is too noisy on a shared machine to stop at.
            active = [w for w in active if curves[w.threads][-1].p50_ms <= bound]
            if not active:
                break
    assert bound is not None
    candidates = [Candidate(config, tuple(curves[config])) for config in configs]
    return Measurement(candidates, bound, loaded["version_dir"], loaded["inputs"])


def _interleaved(
    workers: list[_Worker], size: int, runs: int, min_seconds: float, rounds: int
) -> dict[ThreadConfig, _Samples]:
    samples = {worker.threads: _Samples() for worker in workers}
    per_round = max(1, math.ceil(runs / rounds))
    for _ in range(rounds):
        for worker in workers:
            latencies, wall = worker.time(size, per_round, min_seconds / rounds)
            found = samples[worker.threads]
            found.latencies_ms += latencies
            found.wall_s += wall
            found.batches += len(latencies)
    return samples


def _progress_line(
    size: int, workers: list[_Worker], curves: dict[ThreadConfig, list[CurvePoint]]
) -> str:
    parts = [
        f"{w.threads.describe()}: p99 {curves[w.threads][-1].p99_ms:.1f} ms, "
        f"{curves[w.threads][-1].items_per_second:.1f}/s"
        for w in workers
    ]
    return f"batch {size}: " + "; ".join(parts)
