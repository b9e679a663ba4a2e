"""The request batcher: merging, timeouts, padding, splitting, failures and TF Serving's options."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from service.model_server.batching import BatchingOptions, BatchQueueFullError, BatchScheduler
from service.model_server.server_config_pb2 import BatchingParameters
from service.model_server.status import ServingError, invalid_argument

LONG_TIMEOUT_MICROS = 60_000_000  # batches leave only when full or on close()
SHORT_TIMEOUT_MICROS = 50_000

BASE = BatchingOptions(
    max_batch_size=4,
    batch_timeout_micros=LONG_TIMEOUT_MICROS,
    max_enqueued_batches=100,
    num_batch_threads=1,
    allowed_batch_sizes=(),
    pad_variable_length_inputs=False,
    enable_large_batch_splitting=False,
)


def rows(task_id: int, count: int, width: int = 2, dtype: Any = np.float32) -> np.ndarray:
    """``count`` rows that name their task in column 0 and their index in column 1."""
    out = np.zeros((count, width), dtype=dtype)
    out[:, 0] = task_id
    out[:, 1] = np.arange(count)
    return out


class Model:
    """``y = 2x``; records every batch it sees and refuses rows with a negative task id."""

    def __init__(self, error: Callable[[], Exception] = lambda: ValueError("negative id")) -> None:
        self.seen: list[np.ndarray] = []
        self.error = error
        self.lock = threading.Lock()

    @property
    def sizes(self) -> list[int]:
        return [len(x) for x in self.seen]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self.lock:
            self.seen.append(x.copy())
        if (x[:, 0] < 0).any():
            raise self.error()
        return {"y": x * 2}


def run(
    scenario: Callable[[BatchScheduler], Awaitable[Any]],
    options: BatchingOptions = BASE,
    on_batch: Callable[[Hashable, int, int], None] | None = None,
) -> Any:
    """Runs ``scenario`` on a fresh loop and scheduler; the scheduler is closed afterwards."""

    async def main() -> Any:
        with ThreadPoolExecutor(max_workers=4) as executor:
            scheduler = BatchScheduler(options, executor, on_batch)
            try:
                return await scenario(scheduler)
            finally:
                await scheduler.close()

    return asyncio.run(asyncio.wait_for(main(), timeout=30))


def submit(scheduler: BatchScheduler, x: np.ndarray, model: Model, key: Hashable = "m"):
    return scheduler.submit(key, {"x": x}, model)


def test_concurrent_submits_merge_and_each_caller_gets_its_rows() -> None:
    model = Model()
    inputs = [rows(0, 1), rows(1, 2), rows(2, 1)]

    async def scenario(scheduler: BatchScheduler) -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(submit(scheduler, x, model) for x in inputs))

    results = run(scenario)
    assert model.sizes == [4]  # full, so it left without waiting for the timeout
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result["y"], x * 2)


def test_zero_timeout_still_merges_requests_that_arrive_together() -> None:
    model = Model()
    options = dataclasses.replace(BASE, batch_timeout_micros=0)  # TF Serving's default

    async def scenario(scheduler: BatchScheduler) -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(submit(scheduler, rows(i, 1), model) for i in range(3)))

    results = run(scenario, options)
    assert model.sizes == [3]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], rows(i, 1) * 2)


def test_lone_request_is_dispatched_after_the_timeout() -> None:
    model = Model()
    options = dataclasses.replace(BASE, batch_timeout_micros=SHORT_TIMEOUT_MICROS)

    async def scenario(scheduler: BatchScheduler) -> tuple[float, dict[str, np.ndarray]]:
        started = time.monotonic()
        result = await submit(scheduler, rows(0, 1), model)
        return time.monotonic() - started, result

    elapsed, result = run(scenario, options)
    assert model.sizes == [1]
    assert elapsed >= 0.045
    np.testing.assert_array_equal(result["y"], rows(0, 1) * 2)


def test_open_batch_waits_for_its_timeout_and_close_drains_it() -> None:
    model = Model()

    async def scenario(scheduler: BatchScheduler) -> None:
        pending = [asyncio.ensure_future(submit(scheduler, rows(i, 1), model)) for i in range(3)]
        await asyncio.sleep(0.3)
        assert model.sizes == []
        assert not any(task.done() for task in pending)
        await scheduler.close()
        for i, task in enumerate(pending):
            np.testing.assert_array_equal(task.result()["y"], rows(i, 1) * 2)
        with pytest.raises(RuntimeError, match="closed"):
            await submit(scheduler, rows(9, 1), model)

    run(scenario)
    assert model.sizes == [3]


def test_batches_never_exceed_max_batch_size() -> None:
    model = Model()
    options = dataclasses.replace(
        BASE, max_batch_size=5, num_batch_threads=2, batch_timeout_micros=10_000
    )
    inputs = [rows(i, 1 + i % 3) for i in range(20)]

    async def scenario(scheduler: BatchScheduler) -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(submit(scheduler, x, model) for x in inputs))

    results = run(scenario, options)
    assert max(model.sizes) <= 5
    assert sum(model.sizes) == sum(len(x) for x in inputs)
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result["y"], x * 2)


def test_batch_is_padded_to_the_next_allowed_size() -> None:
    model = Model()
    batches: list[tuple[int, int]] = []
    options = dataclasses.replace(
        BASE, allowed_batch_sizes=(2, 4), batch_timeout_micros=SHORT_TIMEOUT_MICROS
    )
    inputs = [rows(0, 1), rows(1, 2)]

    async def scenario(scheduler: BatchScheduler) -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(submit(scheduler, x, model) for x in inputs))

    results = run(
        scenario, options, on_batch=lambda key, size, padded: batches.append((size, padded))
    )
    assert model.sizes == [4]
    assert batches == [(3, 4)]
    np.testing.assert_array_equal(model.seen[0][3], rows(1, 2)[1])  # the last row, repeated
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result["y"], x * 2)


@pytest.mark.parametrize(
    "error", [lambda: ValueError("negative id"), lambda: invalid_argument("negative id")]
)
def test_failing_row_fails_only_its_own_task(error: Callable[[], Exception]) -> None:
    model = Model(error)
    batches: list[tuple[int, int]] = []
    options = dataclasses.replace(BASE, max_batch_size=3)
    inputs = [rows(0, 1), rows(-1, 1), rows(2, 1)]

    async def scenario(scheduler: BatchScheduler) -> list[Any]:
        calls = (submit(scheduler, x, model) for x in inputs)
        return await asyncio.gather(*calls, return_exceptions=True)

    good0, bad, good2 = run(
        scenario, options, lambda key, size, padded: batches.append((size, padded))
    )
    assert model.sizes == [3, 1, 1, 1]  # the merged run, then each task on its own
    assert type(bad) is type(error()) and str(bad) == "negative id"
    np.testing.assert_array_equal(good0["y"], inputs[0] * 2)
    np.testing.assert_array_equal(good2["y"], inputs[2] * 2)
    assert batches == [(1, 1), (1, 1)]


def test_outputs_without_the_batch_dimension_fail_every_task() -> None:
    batches: list[tuple[int, int]] = []

    def drops_a_row(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"][:-1]}

    async def scenario(scheduler: BatchScheduler) -> list[Any]:
        calls = (scheduler.submit("m", {"x": rows(i, 2)}, drops_a_row) for i in range(2))
        return await asyncio.gather(*calls, return_exceptions=True)

    results = run(scenario, on_batch=lambda key, size, padded: batches.append((size, padded)))
    for error in results:
        assert isinstance(error, ServingError)
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert error.message == (
            "Batched output tensor 'y' has shape (3, 2); its 0th dimension must equal the "
            "batch size 4"
        )
    assert batches == []


def test_different_keys_never_merge() -> None:
    models = {"a": Model(), "b": Model()}
    options = dataclasses.replace(BASE, batch_timeout_micros=SHORT_TIMEOUT_MICROS)

    async def scenario(scheduler: BatchScheduler) -> list[dict[str, np.ndarray]]:
        calls = (submit(scheduler, rows(ord(key), 1), models[key], key) for key in "abab")
        return await asyncio.gather(*calls)

    results = run(scenario, options)
    assert models["a"].sizes == [2]
    assert models["b"].sizes == [2]
    for key, result in zip("abab", results, strict=True):
        np.testing.assert_array_equal(result["y"], rows(ord(key), 1) * 2)


def test_incompatible_inputs_with_the_same_key_go_to_separate_batches() -> None:
    model = Model()
    options = dataclasses.replace(BASE, max_batch_size=8, batch_timeout_micros=SHORT_TIMEOUT_MICROS)
    inputs = [rows(0, 1), rows(1, 1, width=3), rows(2, 1), rows(3, 1, dtype=np.int64)]

    async def scenario(scheduler: BatchScheduler) -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(submit(scheduler, x, model) for x in inputs))

    results = run(scenario, options)
    assert sorted((x.shape, x.dtype.name) for x in model.seen) == [
        ((1, 2), "int64"),
        ((1, 3), "float32"),
        ((2, 2), "float32"),
    ]
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result["y"], x * 2)


def test_task_larger_than_max_batch_size_is_rejected() -> None:
    model = Model()

    async def scenario(scheduler: BatchScheduler) -> None:
        with pytest.raises(ServingError) as caught:
            await submit(scheduler, rows(0, 5), model)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.message == "Task size 5 is larger than maximum input batch size 4"

    run(scenario)
    assert model.sizes == []


def test_large_batch_splitting_runs_a_task_in_pieces_and_reassembles_it() -> None:
    model = Model()
    options = dataclasses.replace(
        BASE, max_batch_size=8, max_execution_batch_size=3, enable_large_batch_splitting=True
    )

    async def scenario(scheduler: BatchScheduler) -> list[dict[str, np.ndarray]]:
        # The 2-row task opens a batch; the 7-row one fills it with 1 row, then 3 + 3 more,
        # so every batch is full and none waits for the timeout.
        calls = (submit(scheduler, rows(i, n), model) for i, n in [(0, 2), (1, 7)])
        return await asyncio.gather(*calls)

    first, second = run(scenario, options)
    assert model.sizes == [3, 3, 3]
    assert model.seen[0][:, 0].tolist() == [0, 0, 1]
    np.testing.assert_array_equal(first["y"], rows(0, 2) * 2)
    np.testing.assert_array_equal(second["y"], rows(1, 7) * 2)


def test_full_queue_refuses_new_tasks() -> None:
    gate, started = threading.Event(), threading.Event()
    model = Model()

    def blocking(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started.set()
        gate.wait(timeout=10)
        return model(inputs)

    options = dataclasses.replace(BASE, max_batch_size=2, max_enqueued_batches=1)

    async def scenario(scheduler: BatchScheduler) -> None:
        running = asyncio.ensure_future(scheduler.submit("m", {"x": rows(0, 2)}, blocking))
        while not started.is_set():  # the only batch thread is now busy
            await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(scheduler.submit("m", {"x": rows(1, 2)}, blocking))
        await asyncio.sleep(0.05)
        try:
            with pytest.raises(BatchQueueFullError) as caught:
                await scheduler.submit("m", {"x": rows(2, 1)}, blocking)
        finally:
            gate.set()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert caught.value.message.startswith(
            "The batch scheduling queue to which this task was submitted is full"
        )
        np.testing.assert_array_equal((await running)["y"], rows(0, 2) * 2)
        np.testing.assert_array_equal((await waiting)["y"], rows(1, 2) * 2)

    run(scenario, options)
    assert model.sizes == [2, 2]


def test_cancelled_caller_is_dropped_from_its_batch() -> None:
    model = Model()

    async def scenario(scheduler: BatchScheduler) -> None:
        pending = [asyncio.ensure_future(submit(scheduler, rows(i, 1), model)) for i in range(3)]
        await asyncio.sleep(0.05)
        pending[1].cancel()
        await asyncio.sleep(0.05)
        await scheduler.close()
        assert pending[1].cancelled()
        np.testing.assert_array_equal(pending[0].result()["y"], rows(0, 1) * 2)
        np.testing.assert_array_equal(pending[2].result()["y"], rows(2, 1) * 2)

    run(scenario)
    assert [x[:, 0].tolist() for x in model.seen] == [[0.0, 2.0]]


TF_SERVING_FILE = """
max_batch_size { value: 128 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
thread_pool_name { value: "batch_threads" }
allowed_batch_sizes: 32
allowed_batch_sizes: 64
allowed_batch_sizes: 128
pad_variable_length_inputs: true
"""


def test_from_proto_reads_a_tf_serving_batching_file() -> None:
    params = text_format.Parse(TF_SERVING_FILE, BatchingParameters())
    assert BatchingOptions.from_proto(params) == BatchingOptions(
        max_batch_size=128,
        batch_timeout_micros=2000,
        max_enqueued_batches=1_000_000,
        num_batch_threads=8,
        allowed_batch_sizes=(32, 64, 128),
        pad_variable_length_inputs=True,
        enable_large_batch_splitting=False,
    )


def test_from_proto_uses_tf_serving_defaults_for_unset_fields() -> None:
    options = BatchingOptions.from_proto(BatchingParameters())
    assert options == BatchingOptions(
        max_batch_size=1000,
        batch_timeout_micros=0,
        max_enqueued_batches=10,
        num_batch_threads=len(os.sched_getaffinity(0)),
        allowed_batch_sizes=(),
        pad_variable_length_inputs=False,
        enable_large_batch_splitting=False,
        max_execution_batch_size=None,
    )
    assert options.execution_batch_size == 1000


def test_from_proto_keeps_max_execution_batch_size_only_when_splitting() -> None:
    text = "max_batch_size { value: 64 } max_execution_batch_size { value: 16 }"
    splitting = text_format.Parse(
        text + " enable_large_batch_splitting { value: true }", BatchingParameters()
    )
    assert BatchingOptions.from_proto(splitting).execution_batch_size == 16
    plain = BatchingOptions.from_proto(text_format.Parse(text, BatchingParameters()))
    assert plain.max_execution_batch_size is None
    assert plain.execution_batch_size == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "max_batch_size { value: 128 } allowed_batch_sizes: [64, 32, 128]",
            "allowed_batch_sizes entries must be positive and monotonically increasing; "
            "got [64, 32, 128]",
        ),
        (
            "max_batch_size { value: 128 } allowed_batch_sizes: [32, 64]",
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 64; "
            "expected 128",
        ),
        (
            "allowed_batch_sizes: 8",
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 8; "
            "expected 1000",
        ),
        (
            "max_batch_size { value: 8 } max_execution_batch_size { value: 4 } "
            "enable_large_batch_splitting { value: true } allowed_batch_sizes: [2, 8]",
            "Last entry in allowed_batch_sizes must match max_execution_batch_size; "
            "last entry was 8; expected 4",
        ),
        (
            "max_batch_size { value: 8 } max_execution_batch_size { value: 16 } "
            "enable_large_batch_splitting { value: true }",
            "max_execution_batch_size must be between 1 and max_batch_size (8); got 16",
        ),
        ("max_batch_size { value: 0 }", "max_batch_size must be positive; got 0"),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be positive; got 0"),
        ("max_enqueued_batches { value: -1 }", "max_enqueued_batches must be positive; got -1"),
        ("batch_timeout_micros { value: -5 }", "batch_timeout_micros must be >= 0; got -5"),
    ],
)
def test_from_proto_rejects_inconsistent_parameters(text: str, message: str) -> None:
    params = text_format.Parse(text, BatchingParameters())
    with pytest.raises(ValueError) as caught:
        BatchingOptions.from_proto(params)
    assert str(caught.value) == message
