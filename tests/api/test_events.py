"""``GET /finetune/{id}/events`` over a real HTTP connection, the job driven through the store.

Each step changes the job, then waits for the events it causes, so no timing is assumed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.jobs.store import JobStore
from tests.api.conftest import LiveServer, TestClient

PROGRESS = {"phase": "head", "epoch": 1, "epochs": 2, "step": 1, "steps": 3}
HEAD_1 = {"phase": "head", "epoch": 1, "loss": 0.9, "accuracy": 0.5, "val_loss": 0.8}
HEAD_2 = {"phase": "head", "epoch": 2, "loss": 0.6, "accuracy": 0.7, "val_loss": 0.5}
# What no compact event may carry: the job's bulk belongs to GET /finetune/{id}.
BULK = {"config", "history", "progress", "model_name", "created_at", "updated_at"}


def event_blocks(response: httpx.Response) -> Iterator[dict[str, str]]:
    """The stream's blocks as ``{field: value}``, comments under ``":"``."""
    block: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if block:
                yield block
            block = {}
            continue
        name, _, value = line.partition(":")
        block[name] = value.removeprefix(" ")
    if block:
        yield block


def next_event(blocks: Iterator[dict[str, str]]) -> tuple[str, str, dict[str, Any]]:
    """(event, id, data) of the next event, skipping keep-alive comments."""
    for block in blocks:
        if "event" in block:
            return block["event"], block["id"], json.loads(block["data"])
    raise AssertionError("the stream ended")


def events_of(response: httpx.Response) -> list[tuple[str, str, dict[str, Any]]]:
    """Every event of a stream that has ended."""
    return [
        (block["event"], block["id"], json.loads(block["data"]))
        for block in event_blocks(response)
        if "event" in block
    ]


def state(job: dict[str, Any]) -> dict[str, Any]:
    """The ``state`` event a job seen through ``GET /finetune/{id}`` should cause."""
    keys = ["job_id", "status", "attempts", "cancel_requested", "started_at", "finished_at"]
    if job["status"] in {"succeeded", "failed", "cancelled"}:
        keys += ["result", "error"]
    return {key: job[key] for key in keys}


def open_streams(http: httpx.Client) -> float:
    families = text_string_to_metric_families(http.get("/metrics").text)
    return next(f.samples[0].value for f in families if f.name == "ftserve_event_streams_active")


def test_stream_sends_each_change_compactly_and_ends_after_success(
    client: TestClient, store: JobStore
):
    job_id = store.enqueue("flowers", {"epochs": 2}, "/data/set").id
    with (
        LiveServer(client.app) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
        http.stream("GET", f"/finetune/{job_id}/events") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        blocks = event_blocks(response)
        assert next(blocks)["retry"] == "2000"
        queued = {
            "job_id": job_id,
            "status": "queued",
            "attempts": 0,
            "cancel_requested": False,
            "started_at": None,
            "finished_at": None,
        }
        assert next_event(blocks) == ("state", "1", queued)

        store.claim("w1")
        running = http.get(f"/finetune/{job_id}").json()
        assert running["started_at"] is not None
        assert next_event(blocks) == ("state", "2", state(running))

        store.update_progress(job_id, "w1", PROGRESS)
        expected = {**PROGRESS, "eta_seconds": None, "metrics": {}}
        assert next_event(blocks) == ("progress", "3", expected)

        # An epoch's end: its history row, then where the job is now.
        at_end = {**PROGRESS, "step": 3, "eta_seconds": 1.5, "metrics": {"loss": 0.9}}
        store.update_progress(job_id, "w1", at_end, HEAD_1)
        assert next_event(blocks) == ("epoch", "4", HEAD_1)
        assert next_event(blocks) == ("progress", "5", at_end)

        # The epoch done again after a crash: the same (phase, epoch), new numbers.
        redone = {**HEAD_1, "loss": 0.85}
        store.update_progress(job_id, "w1", at_end, redone)
        assert next_event(blocks) == ("epoch", "6", redone)

        store.succeed(job_id, "w1", {"model": "flowers", "version": 1})
        event, event_id, data = next_event(blocks)
        assert (event, event_id) == ("state", "7")
        assert data == state(http.get(f"/finetune/{job_id}").json())
        assert (data["status"], data["result"], data["error"]) == (
            "succeeded",
            {"model": "flowers", "version": 1},
            None,
        )
        assert list(blocks) == []  # the server closed the stream


def test_a_late_client_gets_the_state_then_the_whole_curve_then_the_progress(
    client: TestClient, store: JobStore
):
    job_id = store.enqueue("flowers", {"epochs": 2}, "/data/set").id
    store.claim("w1")
    store.update_progress(job_id, "w1", PROGRESS, HEAD_1)
    store.update_progress(job_id, "w1", {**PROGRESS, "epoch": 2}, HEAD_2)
    running = client.get(f"/finetune/{job_id}").json()
    with (
        LiveServer(client.app) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
        http.stream("GET", f"/finetune/{job_id}/events") as response,
    ):
        blocks = event_blocks(response)
        received = [next_event(blocks) for _ in range(4)]
        assert received == [
            ("state", "1", state(running)),
            ("epoch", "2", HEAD_1),
            ("epoch", "3", HEAD_2),
            ("progress", "4", {**PROGRESS, "epoch": 2, "eta_seconds": None, "metrics": {}}),
        ]

        store.cancel(job_id)  # running: the worker is asked to stop
        event, event_id, data = next_event(blocks)
        assert (event, event_id, data["status"], data["cancel_requested"]) == (
            "state",
            "5",
            "running",
            True,
        )
        assert "result" not in data and "error" not in data

        store.mark_cancelled(job_id, "w1")
        event, event_id, data = next_event(blocks)
        assert (event, event_id, data["status"], data["result"], data["error"]) == (
            "state",
            "6",
            "cancelled",
            None,
            None,
        )
        assert list(blocks) == []


def test_a_failed_jobs_one_state_event_carries_its_error_and_no_bulk(
    client: TestClient, store: JobStore
):
    job_id = store.enqueue("flowers", {"epochs": 2, "batch_size": 8}, "/data/set").id
    store.claim("w1")
    store.update_progress(job_id, "w1", PROGRESS, HEAD_1)
    store.fail(job_id, "w1", "dataset_unusable", "only one class")
    with (
        LiveServer(client.app) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
        http.stream("GET", f"/finetune/{job_id}/events") as response,
    ):
        events = events_of(response)
    # Already finished: its one final state (the history is in GET /finetune/{id}).
    assert [(event, event_id) for event, event_id, _ in events] == [("state", "1")]
    data = events[0][2]
    assert not BULK & set(data)
    assert (data["status"], data["result"], data["error"]) == (
        "failed",
        None,
        {"code": "dataset_unusable", "message": "only one class"},
    )


def test_stream_of_a_finished_job_sends_its_state_and_ends(client: TestClient, store: JobStore):
    job_id = store.enqueue("flowers", {}, "/data/set").id
    store.cancel(job_id)
    response = client.get(f"/finetune/{job_id}/events")
    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("event:")]
    assert events == ["event: state"]


def test_events_of_an_unknown_job_are_a_404(client: TestClient):
    response = client.get("/finetune/no-such-job/events")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_client_going_away_ends_the_stream(client: TestClient, store: JobStore):
    job_id = store.enqueue("flowers", {}, "/data/set").id
    with LiveServer(client.app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        with http.stream("GET", f"/finetune/{job_id}/events") as response:
            blocks = event_blocks(response)  # kept: dropping it would close the connection
            assert next_event(blocks)[0] == "state"
            assert open_streams(http) == 1
        deadline = time.monotonic() + 10
        while open_streams(http) != 0:
            assert time.monotonic() < deadline, "the stream kept running after the client left"
            time.sleep(0.05)


def test_the_document_describes_the_three_events_and_their_data(client: TestClient):
    document = client.get("/openapi.json").json()
    description = document["paths"]["/finetune/{job_id}/events"]["get"]["description"]
    for kind in ("`state`", "`progress`", "`epoch`"):
        assert kind in description
    schemas = document["components"]["schemas"]
    assert set(schemas["JobStateEvent"]["properties"]) == {
        "job_id",
        "status",
        "attempts",
        "cancel_requested",
        "started_at",
        "finished_at",
        "result",
        "error",
    }
    assert "metrics" in schemas["ProgressEvent"]["properties"]
