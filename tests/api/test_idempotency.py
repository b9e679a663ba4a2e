"""``Idempotency-Key`` on ``POST /finetune``: one job per key, whatever the retries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from service.api import finetune
from service.jobs.tables import IdempotencyRow
from tests.api.conftest import (
    LiveServer,
    TestClient,
    dataset_zip,
    error_of,
    leftovers,
    png,
    settings_of,
    store_of,
    zip_bytes,
)
from tests.api.test_finetune import CONFIG, submit


def test_same_key_and_body_answers_the_first_response_again(client: TestClient):
    key = {"Idempotency-Key": "order-42"}
    first = submit(client, dataset_zip(), CONFIG, key)
    again = submit(client, dataset_zip(), dict(reversed(CONFIG.items())), key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert store_of(client).list()[1] == 1
    assert leftovers(settings_of(client)) == [f"{first.json()['job_id']}.upload"]


def test_same_key_for_a_data_uri_request_is_replayed(client: TestClient):
    (settings_of(client).data_root / "set" / "a").mkdir(parents=True)
    key = {"Idempotency-Key": "folder-1"}
    body = {**CONFIG, "data_uri": "set"}
    first = client.post("/finetune", json=body, headers=key)
    again = client.post("/finetune", json=body, headers=key)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()


def test_same_key_with_another_upload_is_422(client: TestClient):
    key = {"Idempotency-Key": "order-43"}
    assert submit(client, dataset_zip(), CONFIG, key).status_code == 202
    other = zip_bytes({"a/1.png": png(1), "b/1.png": png(2)})
    response = submit(client, other, CONFIG, key)
    assert error_of(response) == (422, "idempotency_key_reused")
    assert store_of(client).list()[1] == 1
    assert len(leftovers(settings_of(client))) == 1


def test_same_key_with_another_config_is_422(client: TestClient):
    key = {"Idempotency-Key": "order-44"}
    assert submit(client, dataset_zip(), CONFIG, key).status_code == 202
    response = submit(client, dataset_zip(), {**CONFIG, "epochs": 3}, key)
    assert error_of(response) == (422, "idempotency_key_reused")


def test_key_still_being_accepted_is_409(client: TestClient):
    store = store_of(client)
    assert store.begin_idempotent("order-45", "another-request") is None
    response = submit(client, dataset_zip(), CONFIG, {"Idempotency-Key": "order-45"})
    assert error_of(response) == (409, "idempotency_in_flight")
    assert store.list()[1] == 0
    assert leftovers(settings_of(client)) == []


def test_failed_acceptance_abandons_the_key(client: TestClient):
    key = {"Idempotency-Key": "order-46"}
    refused = submit(client, b"not an archive", CONFIG, key)
    assert error_of(refused) == (400, "invalid_archive")
    retried = submit(client, dataset_zip(), CONFIG, key)
    assert retried.status_code == 202, retried.text
    record = store_of(client).begin_idempotent("order-46", "a-later-request")
    assert record is not None and record.state == "done"
    assert record.job_id == retried.json()["job_id"]


def test_invalid_key_is_422(client: TestClient):
    response = submit(client, dataset_zip(), CONFIG, {"Idempotency-Key": "x" * 256})
    assert error_of(response) == (422, "unprocessable")
    assert store_of(client).list()[1] == 0


# -- the owner's lease on its key, on a real server ----------------------------------------


class StalledUpload:
    """A keyed upload sent from a thread that stops half-way until ``finish()``."""

    BOUNDARY = "ftserveboundary"

    def __init__(self, url: str, key: str, archive: bytes) -> None:
        self.key = key
        self.archive = archive
        self.release = threading.Event()
        self.response: httpx.Response | None = None
        self.thread = threading.Thread(target=self._send, args=(url,), daemon=True)
        self.thread.start()

    def _body(self) -> Iterator[bytes]:
        half = len(self.archive) // 2
        yield (
            f'--{self.BOUNDARY}\r\nContent-Disposition: form-data; name="config"\r\n\r\n'
            f"{json.dumps(CONFIG)}\r\n"
            f'--{self.BOUNDARY}\r\nContent-Disposition: form-data; name="dataset"; '
            'filename="d.zip"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode() + self.archive[:half]
        assert self.release.wait(60), "never released"
        yield self.archive[half:] + f"\r\n--{self.BOUNDARY}--\r\n".encode()

    def _send(self, url: str) -> None:
        headers = {
            "content-type": f"multipart/form-data; boundary={self.BOUNDARY}",
            "Idempotency-Key": self.key,
        }
        with httpx.Client(base_url=url, timeout=60) as http:
            self.response = http.post("/finetune", content=self._body(), headers=headers)

    def finish(self) -> httpx.Response:
        self.release.set()
        self.thread.join(60)
        assert self.response is not None
        return self.response


def key_times(client: TestClient, key: str) -> tuple[datetime, datetime] | None:
    """(created_at, updated_at) of the key's record, or None."""
    engine = create_engine(settings_of(client).sqlalchemy_url())
    try:
        with engine.connect() as connection:
            row = connection.execute(
                select(IdempotencyRow.created_at, IdempotencyRow.updated_at).where(
                    IdempotencyRow.key == key
                )
            ).one_or_none()
    finally:
        engine.dispose()
    return None if row is None else (row[0], row[1])


def poll(condition: Callable[[], object], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def renewed_for(client: TestClient, key: str, seconds: float) -> bool:
    times = key_times(client, key)
    return times is not None and (times[1] - times[0]).total_seconds() >= seconds


def test_a_live_owner_keeps_its_key_past_the_lease_by_renewing_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(finetune, "IDEMPOTENCY_RENEW_SECONDS", 0.1)
    monkeypatch.setattr(finetune, "IDEMPOTENCY_LEASE_SECONDS", 0.5)
    archive = dataset_zip()
    with LiveServer(client.app) as server, httpx.Client(base_url=server.url) as http:
        first = StalledUpload(server.url, "slow-1", archive)
        poll(lambda: renewed_for(client, "slow-1", 2 * 0.5), "renewals past two leases")

        retry = submit(http, archive, CONFIG, {"Idempotency-Key": "slow-1"})
        assert error_of(retry) == (409, "idempotency_in_flight")

        accepted = first.finish()
        assert accepted.status_code == 202, accepted.text
        again = submit(http, archive, CONFIG, {"Idempotency-Key": "slow-1"})
    assert (again.status_code, again.json()) == (202, accepted.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert store_of(client).list()[1] == 1


def test_an_owner_whose_key_was_taken_over_gets_409_and_takes_its_job_back(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    """A lease that lapsed though its request lived (say the database was away)."""
    monkeypatch.setattr(finetune, "IDEMPOTENCY_RENEW_SECONDS", 3600.0)
    monkeypatch.setattr(finetune, "IDEMPOTENCY_LEASE_SECONDS", 0.3)
    headers = {"Idempotency-Key": "lapsed-1"}
    archive = dataset_zip()
    with LiveServer(client.app) as server, httpx.Client(base_url=server.url) as http:
        first = StalledUpload(server.url, "lapsed-1", archive)
        poll(lambda: key_times(client, "lapsed-1"), "the first request to own the key")

        def took_over() -> httpx.Response | None:
            response = submit(http, archive, CONFIG, headers)
            if response.status_code == 409:
                assert error_of(response) == (409, "idempotency_in_flight")
                return None
            return response

        second = poll(took_over, "the lease to lapse")
        assert second.status_code == 202, second.text

        refused = first.finish()
        replayed = submit(http, archive, CONFIG, headers)
    assert refused.json() == {
        "error": {
            "code": "idempotency_in_flight",
            "message": "Idempotency-Key 'lapsed-1' was taken over by another request while"
            " this one was being accepted; retry later",
        }
    }
    job_id = second.json()["job_id"]
    assert (replayed.status_code, replayed.json()) == (202, second.json())
    jobs, total = store_of(client).list()
    assert total == 2
    assert {job.id: job.state.value for job in jobs}[job_id] == "queued"
    assert sorted(job.state.value for job in jobs) == ["cancelled", "queued"]
    assert leftovers(settings_of(client)) == [f"{job_id}.upload"]
