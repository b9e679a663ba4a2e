"""``GET /finetune/{id}/events`` over a real HTTP connection, the job driven through the store.

Each step changes the job, then waits for the event it causes, so no timing is assumed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.jobs.store import JobStore
from tests.api.conftest import LiveServer, TestClient


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


def next_event(blocks: Iterator[dict[str, str]]) -> tuple[str, str, dict]:
    """(event, id, job) of the next event, skipping keep-alive comments."""
    for block in blocks:
        if "event" in block:
            return block["event"], block["id"], json.loads(block["data"])
    raise AssertionError("the stream ended")


def open_streams(http: httpx.Client) -> float:
    families = text_string_to_metric_families(http.get("/metrics").text)
    return next(f.samples[0].value for f in families if f.name == "ftserve_event_streams_active")


def test_stream_sends_each_change_and_ends_after_success(client: TestClient, store: JobStore):
    job_id = store.enqueue("flowers", {}, "/data/set").id
    progress = {"phase": "head", "epoch": 1, "epochs": 2, "step": 3, "steps": 3}
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
        event, event_id, job = next_event(blocks)
        assert (event, event_id, job["job_id"], job["status"]) == ("state", "1", job_id, "queued")

        store.claim("w1")
        event, event_id, job = next_event(blocks)
        assert (event, event_id, job["status"]) == ("state", "2", "running")

        store.update_progress(job_id, "w1", progress)
        event, event_id, job = next_event(blocks)
        assert (event, event_id, job["progress"]["epoch"]) == ("progress", "3", 1)

        store.update_progress(job_id, "w1", {**progress, "epoch": 2}, {"loss": 0.5})
        event, event_id, job = next_event(blocks)
        assert (event, event_id, job["progress"]["epoch"]) == ("progress", "4", 2)
        assert job["history"] == [{"loss": 0.5}]

        store.succeed(job_id, "w1", {"model": "flowers", "version": 1})
        event, event_id, job = next_event(blocks)
        assert (event, event_id, job["status"]) == ("state", "5", "succeeded")
        assert job["result"] == {"model": "flowers", "version": 1}
        assert list(blocks) == []  # the server closed the stream


def test_stream_of_a_finished_job_sends_its_state_and_ends(client: TestClient, store: JobStore):
    job_id = store.enqueue("flowers", {}, "/data/set").id
    store.cancel(job_id)
    response = client.get(f"/finetune/{job_id}/events")
    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("event:")]
    assert events == ["event: state"]


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
