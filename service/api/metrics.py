"""Prometheus metrics of the API, in a registry each app owns (so tests never share counts).

Requests are labelled by route template (``/finetune/{job_id}``), never by raw path, so that
the number of series stays bounded; requests no route matched share one label.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.jobs.records import JobState
from service.jobs.store import JobStore

log = logging.getLogger(__name__)

UNMATCHED = "<unmatched>"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class ApiMetrics:
    """The API's metrics and the registry that holds them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("method", "route", "status")
        self.requests = Counter(
            "ftserve_http_requests",
            "HTTP requests answered, by method, route template and status.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "ftserve_http_request_duration_seconds",
            "Time to answer an HTTP request (a whole event stream, for /events).",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.jobs = Gauge(
            "ftserve_jobs",
            "Fine-tuning jobs in the store, by state.",
            ("state",),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "ftserve_queue_depth", "Jobs waiting for a worker.", registry=self.registry
        )
        self.job_store_up = Gauge(
            "ftserve_job_store_up",
            "1 if the job store answered the last scrape, else 0.",
            registry=self.registry,
        )
        self.event_streams = Gauge(
            "ftserve_event_streams_active",
            "Server-sent event streams open now.",
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def refresh_jobs(self, store: JobStore) -> None:
        """Read job counts from the store; a store that cannot answer sets ``job_store_up`` 0."""
        try:
            counts = store.counts_by_state()
        except Exception:
            log.warning("metrics: the job store did not answer", exc_info=True)
            self.job_store_up.set(0)
            return
        self.job_store_up.set(1)
        for state in JobState:
            self.jobs.labels(state.value).set(counts.get(state, 0))
        self.queue_depth.set(counts.get(JobState.QUEUED, 0))

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware counting and timing every HTTP request into ``metrics``."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server sends when the app fails before answering

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.observe(scope["method"], _route_template(scope), status, elapsed)


def _route_template(scope: Scope) -> str:
    # The router records the matched route in the scope (the same dict this middleware got).
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED
