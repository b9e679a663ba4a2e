"""``Idempotency-Key`` on ``POST /finetune``: one job per key, whatever the retries."""

from __future__ import annotations

from tests.api.conftest import (
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
    assert store.begin_idempotent("order-45") is None  # another request owns it now
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
    record = store_of(client).begin_idempotent("order-46")
    assert record is not None and record.state == "done"
    assert record.job_id == retried.json()["job_id"]


def test_invalid_key_is_422(client: TestClient):
    response = submit(client, dataset_zip(), CONFIG, {"Idempotency-Key": "x" * 256})
    assert error_of(response) == (422, "unprocessable")
    assert store_of(client).list()[1] == 0
