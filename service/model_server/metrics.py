"""Prometheus metrics under TensorFlow Serving's names.

TensorFlow Serving exports its counters without the ``_total`` suffix prometheus_client adds,
so the request counter is a small collector of its own; dashboards written for one server
read the other.
"""

from __future__ import annotations

import threading
from collections import Counter

from prometheus_client import CollectorRegistry, Histogram, generate_latest

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
BATCH_SIZE = ":tensorflow:serving:batching:processed_batch_size"
PADDED_BATCH_SIZE = ":tensorflow:serving:batching:padding_size"
LOAD_LATENCY = ":tensorflow:serving:model_load_latency"
# Microseconds, as TensorFlow Serving reports request latency.
_LATENCY_BUCKETS = tuple(10.0 * 1.8**i for i in range(33))
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _RequestCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, str]] = Counter()

    def inc(self, model: str, api: str, status: str) -> None:
        with self._lock:
            self._counts[(model, api, status)] += 1

    def exposition(self) -> bytes:
        with self._lock:
            items = sorted(self._counts.items())
        lines = [
            f"# HELP {REQUEST_COUNT} The total number of requests.",
            f"# TYPE {REQUEST_COUNT} counter",
        ]
        for (model, api, status), value in items:
            labels = (
                f'API="{_escape(api)}",model_name="{_escape(model)}",status="{_escape(status)}"'
            )
            lines.append(f"{REQUEST_COUNT}{{{labels}}} {value}")
        return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class ServerMetrics:
    """The server's metrics, in a registry of their own (the counter kept beside it)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = _RequestCounter()
        self._latency = Histogram(
            REQUEST_LATENCY,
            "Distribution of wall time (in microseconds) for requests.",
            ["model_name", "API", "entrypoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._batch_size = Histogram(
            BATCH_SIZE,
            "Tracks the batch size distribution on processing.",
            ["model_name"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._padding = Histogram(
            PADDED_BATCH_SIZE,
            "Tracks the padding size distribution on batches.",
            ["model_name"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )

    def record_request(
        self, model: str, api: str, entrypoint: str, status: str, seconds: float
    ) -> None:
        self._requests.inc(model, api, status)
        self._latency.labels(model, api, entrypoint).observe(seconds * 1e6)

    def record_batch(self, model: str, size: int, padded_size: int) -> None:
        self._batch_size.labels(model).observe(size)
        self._padding.labels(model).observe(padded_size - size)

    def exposition(self) -> bytes:
        return self._requests.exposition() + generate_latest(self.registry)
