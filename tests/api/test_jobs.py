"""Looking up, listing and cancelling jobs."""

from __future__ import annotations

import pytest

from service.jobs.store import JobStore
from tests.api.conftest import TestClient, dataset_zip, error_of, leftovers, settings_of


def enqueue(store: JobStore, model: str = "flowers") -> str:
    return store.enqueue(model, {"epochs": 2}, "/data/set").id


def test_get_job_answers_its_view(client: TestClient, store: JobStore):
    job = store.get(enqueue(store))
    response = client.get(f"/finetune/{job.id}")
    assert response.status_code == 200
    assert response.json() == {
        "job_id": job.id,
        "status": "queued",
        "model_name": "flowers",
        "config": {"epochs": 2},
        "created_at": job.created_at.isoformat().replace("+00:00", "Z"),
        "updated_at": job.updated_at.isoformat().replace("+00:00", "Z"),
        "started_at": None,
        "finished_at": None,
        "attempts": 0,
        "max_attempts": 3,
        "cancel_requested": False,
        "progress": None,
        "history": [],
        "result": None,
        "error": None,
    }


def test_get_running_job_shows_progress_and_failed_one_its_error(
    client: TestClient, store: JobStore
):
    job_id = enqueue(store)
    store.claim("w1")
    store.update_progress(job_id, "w1", {"phase": "head", "epoch": 1, "epochs": 2}, {"loss": 1})
    running = client.get(f"/finetune/{job_id}").json()
    assert running["status"] == "running"
    assert running["progress"] == {
        "phase": "head",
        "epoch": 1,
        "epochs": 2,
        "step": None,
        "steps": None,
        "eta_seconds": None,
    }
    assert running["history"] == [{"loss": 1}]
    store.fail(job_id, "w1", "dataset_unusable", "only one class")
    failed = client.get(f"/finetune/{job_id}").json()
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "dataset_unusable", "message": "only one class"}


def test_unknown_job_is_404(client: TestClient):
    assert error_of(client.get("/finetune/nope")) == (404, "job_not_found")
    assert error_of(client.delete("/finetune/nope")) == (404, "job_not_found")
    assert error_of(client.get("/finetune/nope/events")) == (404, "job_not_found")


def test_list_pages_newest_first_with_total(client: TestClient, store: JobStore):
    ids = [enqueue(store) for _ in range(5)]
    page = client.get("/finetune", params={"limit": 2, "offset": 1}).json()
    assert [item["job_id"] for item in page["items"]] == ids[::-1][1:3]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)


def test_list_filters_by_status_and_model(client: TestClient, store: JobStore):
    first = enqueue(store, "a")
    enqueue(store, "b")
    third = enqueue(store, "a")
    store.cancel(first)
    queued_a = client.get("/finetune", params={"status": "queued", "model": "a"}).json()
    assert [item["job_id"] for item in queued_a["items"]] == [third]
    assert queued_a["total"] == 1
    cancelled = client.get("/finetune", params={"status": "cancelled"}).json()
    assert [item["job_id"] for item in cancelled["items"]] == [first]


@pytest.mark.parametrize(
    "params",
    [{"limit": 201}, {"limit": 0}, {"offset": -1}, {"status": "sleeping"}, {"limit": "many"}],
)
def test_list_with_bad_parameters_is_422(client: TestClient, params):
    assert error_of(client.get("/finetune", params=params)) == (422, "unprocessable")


def test_cancel_queued_job_is_immediate(client: TestClient, store: JobStore):
    job_id = enqueue(store)
    response = client.delete(f"/finetune/{job_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert store.get(job_id).state == "cancelled"
    assert client.delete(f"/finetune/{job_id}").status_code == 200  # cancelling twice is fine


def test_cancel_running_job_asks_its_worker_to_stop(client: TestClient, store: JobStore):
    job_id = enqueue(store)
    store.claim("w1")
    response = client.delete(f"/finetune/{job_id}")
    assert response.status_code == 202
    assert response.json()["status"] == "running"
    assert response.json()["cancel_requested"] is True
    assert store.heartbeat(job_id, "w1") is True


def test_cancel_finished_job_is_409(client: TestClient, store: JobStore):
    job_id = enqueue(store)
    store.claim("w1")
    store.succeed(job_id, "w1", {"model": "flowers", "version": 1})
    assert error_of(client.delete(f"/finetune/{job_id}")) == (409, "job_finished")


def test_cancelling_a_queued_upload_frees_its_archive_at_once(client: TestClient):
    accepted = client.post(
        "/finetune",
        files={"dataset": ("data.zip", dataset_zip(), "application/zip")},
        data={"config": '{"model_name": "flowers"}'},
    )
    assert accepted.status_code == 202, accepted.text
    settings = settings_of(client)
    assert len(leftovers(settings)) == 1  # the job's own copy of the upload

    assert client.delete(f"/finetune/{accepted.json()['job_id']}").status_code == 200
    assert leftovers(settings) == []


def test_cancelling_a_running_upload_leaves_the_archive_to_its_worker(
    client: TestClient, store: JobStore
):
    accepted = client.post(
        "/finetune",
        files={"dataset": ("data.zip", dataset_zip(), "application/zip")},
        data={"config": '{"model_name": "flowers"}'},
    )
    store.claim("w1")
    assert client.delete(f"/finetune/{accepted.json()['job_id']}").status_code == 202
    assert len(leftovers(settings_of(client))) == 1  # the worker still reads it until it stops


def test_cancel_once_the_version_is_being_published_is_409(client: TestClient, store: JobStore):
    job_id = enqueue(store)
    store.claim("w1")
    assert store.begin_publish(job_id, "w1") is True
    response = client.delete(f"/finetune/{job_id}")
    assert error_of(response) == (409, "job_finished")
    assert "publishing its version" in response.json()["error"]["message"]
