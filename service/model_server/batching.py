"""Server-side request batching, like TensorFlow Serving's ``--enable_batching``.

Scheduling follows TensorFlow's ``SharedBatchScheduler``: every (key, input layout) pair has a
queue of batches whose back-most batch is open to new tasks. A batch may run once it is full,
no longer back-most, or its oldest task has waited ``batch_timeout_micros``; queues are served
round-robin by at most ``num_batch_threads`` concurrent runs. Everything but the model call
runs on the server's event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import grpc
import numpy as np

from service.model_server.server_config_pb2 import BatchingParameters
from service.model_server.status import ServingError, invalid_argument

_log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
RunFn = Callable[[Tensors], Tensors]

# Defaults of TensorFlow's SharedBatchScheduler::QueueOptions, which TF Serving keeps for every
# field a batching parameters file leaves unset (GetQueueOptions in
# tensorflow_serving/servables/tensorflow/bundle_factory_util.h).
_DEFAULT_MAX_BATCH_SIZE = 1000
_DEFAULT_BATCH_TIMEOUT_MICROS = 0
_DEFAULT_MAX_ENQUEUED_BATCHES = 10


def _default_num_batch_threads() -> int:
    """TF Serving's default, ``port::MaxParallelism()``: the CPUs this process may use."""
    if hasattr(os, "sched_getaffinity"):  # Linux only
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class BatchingOptions:
    """Batching parameters with TF Serving's defaults filled in and validated.

    Attributes:
        max_batch_size: Largest task accepted, and largest batch run unless splitting is on.
        batch_timeout_micros: How long the oldest task of an open batch waits for company.
        max_enqueued_batches: Batches per queue that may wait (including the open one).
        num_batch_threads: Batches run at the same time.
        allowed_batch_sizes: Sizes a batch is padded up to; empty means any size.
        pad_variable_length_inputs: Accepted but not implemented: tasks whose non-batch
            dimensions differ are put into separate batches instead of being padded.
        enable_large_batch_splitting: Split tasks across batches of at most
            ``execution_batch_size`` rows.
        max_execution_batch_size: Largest batch run when splitting is on; None means
            ``max_batch_size``. Ignored when splitting is off, as in TF Serving.
    """

    max_batch_size: int
    batch_timeout_micros: int
    max_enqueued_batches: int
    num_batch_threads: int
    allowed_batch_sizes: tuple[int, ...]
    pad_variable_length_inputs: bool
    enable_large_batch_splitting: bool
    max_execution_batch_size: int | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def execution_batch_size(self) -> int:
        """The largest batch the model is run on."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            return self.max_execution_batch_size
        return self.max_batch_size

    @classmethod
    def from_proto(cls, params: BatchingParameters) -> BatchingOptions:
        """Builds options from a parsed ``--batching_parameters_file``.

        Args:
            params: The parsed file; unset fields take TF Serving's defaults.

        Raises:
            ValueError: The parameters are inconsistent, e.g. ``allowed_batch_sizes`` is not
                increasing or does not end with the largest batch size.
        """

        def int_field(name: str, default: int) -> int:
            return int(getattr(params, name).value) if params.HasField(name) else default

        splitting = bool(params.enable_large_batch_splitting.value)
        return cls(
            max_batch_size=int_field("max_batch_size", _DEFAULT_MAX_BATCH_SIZE),
            batch_timeout_micros=int_field("batch_timeout_micros", _DEFAULT_BATCH_TIMEOUT_MICROS),
            max_enqueued_batches=int_field("max_enqueued_batches", _DEFAULT_MAX_ENQUEUED_BATCHES),
            num_batch_threads=int_field("num_batch_threads", _default_num_batch_threads()),
            allowed_batch_sizes=tuple(int(size) for size in params.allowed_batch_sizes),
            pad_variable_length_inputs=params.pad_variable_length_inputs,
            enable_large_batch_splitting=splitting,
            max_execution_batch_size=(
                int(params.max_execution_batch_size.value)
                if splitting and params.HasField("max_execution_batch_size")
                else None
            ),
        )


def _validate(options: BatchingOptions) -> None:
    for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(options, name) < 1:
            raise ValueError(f"{name} must be positive; got {getattr(options, name)}")
    if options.batch_timeout_micros < 0:
        raise ValueError(f"batch_timeout_micros must be >= 0; got {options.batch_timeout_micros}")
    limit = options.execution_batch_size
    if not 1 <= limit <= options.max_batch_size:
        raise ValueError(
            f"max_execution_batch_size must be between 1 and max_batch_size "
            f"({options.max_batch_size}); got {limit}"
        )
    sizes = options.allowed_batch_sizes
    if not sizes:
        return
    if sizes[0] < 1 or any(later <= earlier for earlier, later in itertools.pairwise(sizes)):
        raise ValueError(
            f"allowed_batch_sizes entries must be positive and monotonically increasing; "
            f"got {list(sizes)}"
        )
    if sizes[-1] != limit:
        name = "max_batch_size" if limit == options.max_batch_size else "max_execution_batch_size"
        raise ValueError(
            f"Last entry in allowed_batch_sizes must match {name}; last entry was {sizes[-1]}; "
            f"expected {limit}"
        )


class BatchQueueFullError(ServingError):
    """The queue of a model's batches is full; the request is refused with UNAVAILABLE."""

    def __init__(self, num_batches: int, max_enqueued_batches: int) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            "The batch scheduling queue to which this task was submitted is full; currently "
            f"{num_batches} batches enqueued and max_enqueued_batches is {max_enqueued_batches}",
        )


@dataclass(eq=False)
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0  # rows
    expired: bool = False  # the oldest task has waited batch_timeout_micros
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Task:
    queue_key: tuple[Hashable, Hashable]  # (the caller's key, input layout)
    inputs: Tensors
    size: int
    run: RunFn
    future: asyncio.Future[Tensors]
    batch: _Batch | None = None  # set while waiting in a batch that has not started


class BatchScheduler:
    """Merges concurrent model calls into batches on one asyncio event loop.

    Args:
        options: Batching parameters.
        executor: Where the blocking model calls run.
        on_batch: Called as ``on_batch(key, batch_size, padded_size)`` after each model run
            that returned outputs for its batch (for metrics).
    """

    def __init__(
        self,
        options: BatchingOptions,
        executor: concurrent.futures.Executor,
        on_batch: Callable[[Hashable, int, int], None] | None = None,
    ) -> None:
        self._options = options
        self._executor = executor
        self._on_batch = on_batch
        self._queues: OrderedDict[Hashable, deque[_Batch]] = OrderedDict()
        self._running = 0
        self._inflight: set[asyncio.Task[None]] = set()
        self._pump_handle: asyncio.Handle | None = None
        self._closed = False

    async def submit(self, key: Hashable, inputs: Tensors, run: RunFn) -> Tensors:
        """Runs ``run(inputs)`` as part of a batch and returns the outputs of these rows.

        Args:
            key: Identifies the model, version and signature. Tasks merge only when their keys
                are equal and their inputs have the same names, dtypes and non-batch shapes.
            inputs: Input tensors whose dimension 0 is the batch.
            run: The blocking model call. A batch runs its first task's ``run``, so all calls
                with one key must pass equivalent functions.

        Raises:
            ServingError: INVALID_ARGUMENT for inputs that cannot be batched or are too large.
            BatchQueueFullError: Too many batches are already waiting for this key.
            RuntimeError: The scheduler is closed.
            Exception: Whatever ``run`` raised for these inputs when run on their own.
        """
        if self._closed:
            raise RuntimeError("BatchScheduler is closed")
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        size = _task_size(arrays)
        if size > self._options.max_batch_size:
            raise invalid_argument(
                f"Task size {size} is larger than maximum input batch size "
                f"{self._options.max_batch_size}"
            )
        tasks = self._enqueue((key, _layout(arrays)), arrays, size, run)
        self._pump_soon()
        return await self._collect(tasks)

    async def close(self) -> None:
        """Runs everything already submitted, then stops; later submits raise RuntimeError."""
        self._closed = True
        for queue in self._queues.values():
            for batch in queue:
                self._expire(batch, pump=False)  # nothing more will join: run them now
        while True:
            self._pump()
            if not self._inflight:
                break
            await asyncio.wait(set(self._inflight))

    def _enqueue(
        self, queue_key: tuple[Hashable, Hashable], inputs: Tensors, size: int, run: RunFn
    ) -> list[_Task]:
        queue = self._queues.get(queue_key, deque())
        limit = self._options.execution_batch_size
        room = limit - queue[-1].size if queue else 0
        self._check_capacity(queue, size, room)
        pieces = _piece_sizes(size, room, limit, self._options.enable_large_batch_splitting)
        self._queues[queue_key] = queue
        tasks: list[_Task] = []
        start = 0
        for piece in pieces:
            rows = {name: array[start : start + piece] for name, array in inputs.items()}
            future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
            tasks.append(_Task(queue_key, rows, piece, run, future))
            self._add(queue, tasks[-1])
            start += piece
        return tasks

    def _check_capacity(self, queue: deque[_Batch], size: int, room: int) -> None:
        """Refuses a task that would need more than max_enqueued_batches waiting batches."""
        maximum = self._options.max_enqueued_batches
        if self._options.enable_large_batch_splitting:
            free_batches = maximum - len(queue)
            full = size > free_batches * self._options.execution_batch_size + room
        else:
            full = size > room and len(queue) >= maximum
        if full:
            raise BatchQueueFullError(len(queue), maximum)

    def _add(self, queue: deque[_Batch], task: _Task) -> None:
        if not queue or queue[-1].size + task.size > self._options.execution_batch_size:
            queue.append(self._new_batch())
        batch = queue[-1]
        batch.tasks.append(task)
        batch.size += task.size
        task.batch = batch

    def _new_batch(self) -> _Batch:
        batch = _Batch()
        timeout = self._options.batch_timeout_micros / 1e6
        if timeout == 0:
            batch.expired = True  # still merges with tasks submitted before the next pump
        else:
            batch.timer = asyncio.get_running_loop().call_later(timeout, self._expire, batch)
        return batch

    def _expire(self, batch: _Batch, pump: bool = True) -> None:
        # Marked by the timer rather than compared with the clock, since asyncio may fire a
        # timer a clock tick early.
        batch.expired = True
        _stop_timer(batch)
        if pump:
            self._pump()

    async def _collect(self, tasks: list[_Task]) -> Tensors:
        try:
            parts = [await task.future for task in tasks]
        except BaseException:
            for task in tasks:
                self._discard(task)
            raise
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _discard(self, task: _Task) -> None:
        """Drops a task whose caller went away or whose sibling piece failed."""
        if task.future.done():
            if not task.future.cancelled():
                task.future.exception()  # mark retrieved so asyncio does not log it
        else:
            task.future.cancel()
        batch, task.batch = task.batch, None
        if batch is None:
            return  # already running; its result is ignored
        batch.tasks.remove(task)
        batch.size -= task.size
        queue = self._queues.get(task.queue_key)
        if not batch.tasks and queue is not None:
            queue.remove(batch)
            _stop_timer(batch)
            if not queue:
                del self._queues[task.queue_key]

    def _pump_soon(self) -> None:
        # Deferred to the next loop iteration so that requests arriving together merge.
        if self._pump_handle is None:
            self._pump_handle = asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        if self._pump_handle is not None:
            self._pump_handle.cancel()
            self._pump_handle = None
        while self._running < self._options.num_batch_threads:
            batch = self._next_batch()
            if batch is None:
                return
            self._running += 1
            runner = asyncio.get_running_loop().create_task(self._execute(batch))
            self._inflight.add(runner)
            runner.add_done_callback(self._inflight.discard)

    def _next_batch(self) -> _Batch | None:
        """Takes a ready batch, visiting queues round-robin like SharedBatchScheduler."""
        for queue_key in list(self._queues):
            queue = self._queues[queue_key]
            self._queues.move_to_end(queue_key)
            front = queue[0]
            ready = len(queue) > 1 or front.expired
            if not ready and front.size < self._options.execution_batch_size:
                continue
            queue.popleft()
            if not queue:
                del self._queues[queue_key]
            _stop_timer(front)
            for task in front.tasks:
                task.batch = None
            return front
        return None

    async def _execute(self, batch: _Batch) -> None:
        tasks = [task for task in batch.tasks if not task.future.done()]
        try:
            if tasks:
                await self._run(tasks)
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            _log.exception("Processing a batch of %d tasks failed", len(tasks))
            for task in tasks:
                _fail(task, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running -= 1
            self._pump_soon()

    async def _run(self, tasks: list[_Task]) -> None:
        sizes = [task.size for task in tasks]
        merged, padded_size = _merge([task.inputs for task in tasks], self._options)
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, tasks[0].run, merged)
        except Exception as exc:
            if len(tasks) == 1:
                _fail(tasks[0], exc)
                return
            # Rerun each task on its own so that only the bad one gets the exception.
            for task in tasks:
                if not task.future.done():
                    await self._run([task])
            return
        try:
            results = _split(outputs, sizes, padded_size)
        except ServingError as exc:
            for task in tasks:
                _fail(task, exc)
            return
        for task, result in zip(tasks, results, strict=True):
            if not task.future.done():
                task.future.set_result(result)
        if self._on_batch is not None:  # after the results: its failure only gets logged
            key, _layout = tasks[0].queue_key
            try:
                self._on_batch(key, sum(sizes), padded_size)
            except Exception:
                _log.exception("on_batch failed")


def _stop_timer(batch: _Batch) -> None:
    if batch.timer is not None:
        batch.timer.cancel()
        batch.timer = None


def _fail(task: _Task, exc: BaseException) -> None:
    if not task.future.done():
        task.future.set_exception(exc)


def _task_size(inputs: Tensors) -> int:
    """The common dimension 0 of the inputs; messages are TF Serving's (batching_util.h)."""
    if not inputs:
        raise invalid_argument("Batching Run() must have at least one input tensor")
    if any(array.ndim == 0 for array in inputs.values()):
        raise invalid_argument("Batching Run() input tensors must have at least one dimension")
    sizes = {array.shape[0] for array in inputs.values()}
    if len(sizes) > 1:
        raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
    return int(sizes.pop())


def _layout(inputs: Tensors) -> Hashable:
    """What must be equal for tasks to be concatenated (no variable-length padding)."""
    return tuple(sorted((name, array.dtype.str, array.shape[1:]) for name, array in inputs.items()))


def _piece_sizes(size: int, room: int, limit: int, split: bool) -> list[int]:
    """How a task is split: fill the open batch first, then whole batches (TF's eager split)."""
    if not split or size <= room:
        return [size]
    rest = size - room
    tail = [rest % limit] if rest % limit else []
    return ([room] if room else []) + [limit] * (rest // limit) + tail


def _merge(parts: list[Tensors], options: BatchingOptions) -> tuple[Tensors, int]:
    """Concatenates the tasks' inputs and pads them up to the next allowed batch size."""
    size = sum(_task_size(part) for part in parts)
    # The next allowed size, as TF Serving's RoundToLowestAllowedBatchSize (batching_util.cc).
    padded = next((s for s in options.allowed_batch_sizes if s >= size), size) if size else 0
    merged: Tensors = {}
    for name in parts[0]:
        arrays = [part[name] for part in parts]
        if padded > size:
            # Repeat a real row (a task may have none): padding must be valid model input.
            last = next(array for array in reversed(arrays) if len(array))
            arrays.append(np.repeat(last[-1:], padded - size, axis=0))
        merged[name] = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    return merged, padded


def _split(outputs: Tensors, sizes: list[int], padded_size: int) -> list[Tensors]:
    """Cuts the batch's outputs into each task's rows, dropping the padding rows."""
    offsets = np.cumsum(sizes)[:-1]
    per_output: dict[str, list[np.ndarray]] = {}
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.ndim == 0 or array.shape[0] != padded_size:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Batched output tensor '{name}' has shape {array.shape}; its 0th dimension "
                f"must equal the batch size {padded_size}",
            )
        per_output[name] = np.split(array[: sum(sizes)], offsets)
    return [{name: parts[i] for name, parts in per_output.items()} for i in range(len(sizes))]
