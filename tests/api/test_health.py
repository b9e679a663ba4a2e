"""Health, readiness, metrics, and the API token."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.jobs.store import JobStore
from tests.api.conftest import MakeClient, TestClient, dataset_zip, error_of, leftovers, settings_of
from tests.api.test_finetune import CONFIG

TOKEN = "s3cret-token"
PROTECTED = [
    ("POST", "/finetune"),
    ("GET", "/finetune"),
    ("GET", "/finetune/some-id"),
    ("DELETE", "/finetune/some-id"),
    ("GET", "/finetune/some-id/events"),
    ("POST", "/predict"),
    ("GET", "/models"),
    ("GET", "/models/shapes"),
    ("GET", "/models/shapes/versions/1/onnx"),
]


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


# -- health ----------------------------------------------------------------------------------


def test_healthz_needs_nothing(make_client: MakeClient):
    client = make_client(api_token=TOKEN)
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_is_503_naming_the_model_server_when_it_is_down(client: TestClient):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"job_store": "ok", "model_server": "unreachable"},
    }


def test_readyz_is_503_naming_the_job_store_when_it_fails(
    client: TestClient, store: JobStore, monkeypatch: pytest.MonkeyPatch
):
    def broken() -> None:
        raise ConnectionError("database is gone")

    monkeypatch.setattr(store, "ping", broken)
    checks = client.get("/readyz").json()["checks"]
    assert checks["job_store"] == "unreachable: ConnectionError"


def test_readyz_is_200_when_both_answer(served_client: TestClient):
    response = served_client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"job_store": "ok", "model_server": "ok"},
    }


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_template(client: TestClient):
    client.get("/finetune/abc")
    client.get("/finetune/def")
    client.get("/healthz")
    client.get("/no/such/route")
    values = samples(client)
    by_template = (
        ("method", "GET"),
        ("route", "/finetune/{job_id}"),
        ("status", "404"),
    )
    assert values[("ftserve_http_requests_total", by_template)] == 2
    assert values[("ftserve_http_request_duration_seconds_count", by_template)] == 2
    healthz = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
    assert values[("ftserve_http_requests_total", healthz)] == 1
    unmatched = (("method", "GET"), ("route", "<unmatched>"), ("status", "404"))
    assert values[("ftserve_http_requests_total", unmatched)] == 1
    assert not any("abc" in str(labels) for _, labels in values)


def test_metrics_show_jobs_by_state_and_queue_depth(client: TestClient, store: JobStore):
    for _ in range(3):
        store.enqueue("flowers", {}, "/data/set")
    store.cancel(store.list()[0][0].id)
    store.claim("w1")
    values = samples(client)
    jobs = {
        labels[0][1]: value for (name, labels), value in values.items() if name == "ftserve_jobs"
    }
    assert jobs == {"queued": 1, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 1}
    assert values[("ftserve_queue_depth", ())] == 1
    assert values[("ftserve_job_store_up", ())] == 1


# -- the API token ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"bearer {TOKEN}x"]
)
def test_every_protected_route_needs_the_token(
    make_client: MakeClient, method: str, path: str, authorization: str | None
):
    client = make_client(api_token=TOKEN)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request(method, path, headers=headers)
    assert error_of(response) == (401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


def test_right_token_passes_and_open_routes_need_none(make_client: MakeClient):
    client = make_client(api_token=TOKEN)
    assert client.get("/finetune", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/finetune", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code in (200, 503), path


def test_upload_without_token_is_refused_before_it_is_stored(make_client: MakeClient):
    client = make_client(api_token=TOKEN)
    files = {"dataset": ("d.zip", dataset_zip())}
    response = client.post("/finetune", files=files, data={"config": json.dumps(CONFIG)})
    assert error_of(response) == (401, "unauthorized")
    assert leftovers(settings_of(client)) == []


def test_without_a_configured_token_no_header_is_needed(client: TestClient):
    assert client.get("/finetune").status_code == 200
    assert client.get("/models").status_code == 200
