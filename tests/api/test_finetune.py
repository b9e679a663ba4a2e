"""``POST /finetune``: uploads and data folders in, queued jobs out, nothing left on errors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.jobs.records import JobState
from service.jobs.store import JobStore
from tests.api.conftest import (
    LiveServer,
    MakeClient,
    TestClient,
    dataset_zip,
    error_of,
    leftovers,
    png,
    settings_of,
    store_of,
    tar_with_symlink,
    zip_bytes,
)

CONFIG = {"model_name": "flowers", "epochs": 2, "base_model": "small_cnn", "weights": "none"}


def submit(
    client: TestClient | httpx.Client,
    dataset: bytes | None = None,
    config: dict | str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    files = {} if dataset is None else {"dataset": ("data.zip", dataset, "application/zip")}
    if config is None:
        config = CONFIG
    data = {"config": config if isinstance(config, str) else json.dumps(config)}
    return client.post("/finetune", files=files, data=data, headers=headers or {})


def assert_nothing_left(client: TestClient) -> None:
    """No upload file and no job row after a refused request."""
    assert leftovers(settings_of(client)) == []
    assert store_of(client).list() == ([], 0)


def make_folder(settings: Settings, name: str = "flowers") -> Path:
    folder = settings.data_root / name
    for cls in "ab":
        (folder / cls).mkdir(parents=True)
        (folder / cls / "1.png").write_bytes(png())
    return folder


# -- accepted ------------------------------------------------------------------------------


def test_upload_is_queued_with_location_and_stored_under_the_job_id(client: TestClient):
    archive = dataset_zip()
    response = submit(client, archive)
    assert response.status_code == 202, response.text
    body = response.json()
    job_id = body["job_id"]
    assert body == {
        "job_id": job_id,
        "status": "queued",
        "model_name": "flowers",
        "created_at": body["created_at"],
    }
    assert response.headers["location"] == f"/finetune/{job_id}"
    job = store_of(client).get(job_id)
    assert job.state is JobState.QUEUED
    assert job.model_name == "flowers"
    assert job.config["epochs"] == 2 and "model_name" not in job.config
    upload = settings_of(client).uploads_dir() / f"{job_id}.upload"
    assert Path(job.dataset) == upload.absolute()
    assert upload.read_bytes() == archive
    assert leftovers(settings_of(client)) == [upload.name]


def test_data_uri_folder_is_queued_as_its_resolved_path(client: TestClient):
    folder = make_folder(settings_of(client))
    response = client.post("/finetune", json={**CONFIG, "data_uri": "flowers"})
    assert response.status_code == 202, response.text
    job = store_of(client).get(response.json()["job_id"])
    assert Path(job.dataset) == folder.resolve()
    assert leftovers(settings_of(client)) == []


def test_data_uri_may_be_absolute_inside_the_data_root(client: TestClient):
    folder = make_folder(settings_of(client))
    response = client.post("/finetune", json={**CONFIG, "data_uri": str(folder.resolve())})
    assert response.status_code == 202, response.text


# -- refused ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data_uri",
    [
        "../outside",
        "flowers/../../outside",
        "ABSOLUTE",
        "escape-link",
        "missing",
        "flowers/a/1.png",
        ".",
        "uploads",
        "",
        None,
    ],
)
def test_data_uri_outside_the_root_or_not_a_folder_is_400(client: TestClient, data_uri):
    settings = settings_of(client)
    make_folder(settings)
    outside = settings.data_root.parent / "outside"
    (outside / "a").mkdir(parents=True)
    (settings.data_root / "escape-link").symlink_to(outside, target_is_directory=True)
    if data_uri == "ABSOLUTE":
        data_uri = str(outside.resolve())
    body = {**CONFIG} if data_uri is None else {**CONFIG, "data_uri": data_uri}
    response = client.post("/finetune", json=body)
    assert error_of(response) == (400, "invalid_data_uri")
    assert_nothing_left(client)


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({**CONFIG, "learning_rat": 0.1}, "invalid_config"),  # unknown field
        ({**CONFIG, "model_name": "../etc"}, "invalid_config"),  # TrainConfig's pattern
        ({**CONFIG, "epochs": 0}, "invalid_config"),
        ({"epochs": 2}, "invalid_config"),  # no model_name
        ("{not json", "invalid_config"),
        ("[1, 2]", "invalid_config"),
        ("[" * 100_000, "invalid_config"),  # too deep for the JSON parser
        ({**CONFIG, "base_model": "mobilenetv2"}, "invalid_config"),  # known without TF
        ({**CONFIG, "weights": "missing.weights.h5"}, "weights_unavailable"),
        ({**CONFIG, "weights": "../etc/passwd"}, "invalid_config"),
        ({**CONFIG, "promote": "sometimes"}, "invalid_config"),
        ({**CONFIG, "min_accuracy": 1.5}, "invalid_config"),
    ],
)
def test_invalid_config_is_422_and_leaves_nothing(client: TestClient, config, code):
    response = submit(client, dataset_zip(), config)
    assert error_of(response) == (422, code)
    assert_nothing_left(client)


def test_a_misspelt_base_model_is_refused_with_the_closest_name(client: TestClient):
    response = submit(client, dataset_zip(), {**CONFIG, "base_model": "mobilenetv2"})
    assert error_of(response) == (422, "invalid_config")
    assert "did you mean 'mobilenet_v2'?" in response.json()["error"]["message"]


def test_a_weights_file_in_the_weights_folder_is_accepted(client: TestClient):
    weights_dir = settings_of(client).weights_dir
    weights_dir.mkdir(parents=True)
    (weights_dir / "mine.weights.h5").write_bytes(b"weights")
    response = submit(client, dataset_zip(), {**CONFIG, "weights": "mine.weights.h5"})
    assert response.status_code == 202, response.text


def test_missing_config_field_is_422(client: TestClient):
    response = client.post("/finetune", files={"dataset": ("d.zip", dataset_zip())})
    assert error_of(response) == (422, "invalid_config")
    assert_nothing_left(client)


def test_json_config_with_unknown_field_is_422(client: TestClient):
    make_folder(settings_of(client))
    response = client.post("/finetune", json={**CONFIG, "data_uri": "flowers", "colour": 1})
    assert error_of(response) == (422, "invalid_config")


@pytest.mark.parametrize(
    ("archive", "status", "code"),
    [
        (zip_bytes({"a/../../evil.png": png()}), 400, "unsafe_archive_member"),
        (zip_bytes({"/abs/evil.png": png()}), 400, "unsafe_archive_member"),
        (tar_with_symlink(), 400, "unsafe_archive_member"),
        (zip_bytes({"a/1.png": png(), "./a//1.png": png(1)}), 400, "unsafe_archive_member"),
        (zip_bytes({"a/1.png": png(), "a/1.png/2.png": png(1)}), 400, "unsafe_archive_member"),
        (b"this is not an archive at all", 400, "invalid_archive"),
        (dataset_zip()[:-30], 400, "invalid_archive"),  # truncated central directory
    ],
)
def test_bad_archives_are_refused_before_queueing(client: TestClient, archive, status, code):
    response = submit(client, archive)
    assert error_of(response) == (status, code)
    assert_nothing_left(client)


def test_a_duplicate_member_is_refused_at_upload_and_nothing_is_left(client: TestClient):
    """The worker's extraction would refuse it too, but only after the job waited its turn."""
    archive = zip_bytes({"a/1.png": png(), "b/1.png": png(1), "./a//1.png": png(2)})
    response = submit(client, archive)
    assert (response.status_code, response.json()) == (
        400,
        {
            "error": {
                "code": "unsafe_archive_member",
                "message": "archive member './a//1.png' duplicates or conflicts with an"
                " earlier member",
            }
        },
    )
    assert_nothing_left(client)


def test_archive_over_the_member_limit_is_413(make_client: MakeClient):
    client = make_client(archive_max_members=3)
    response = submit(client, dataset_zip())
    assert error_of(response) == (413, "archive_limit")
    assert_nothing_left(client)


@pytest.mark.parametrize("size", [5000, 512 * 1024])
def test_upload_over_the_limit_is_413(make_client: MakeClient, size: int):
    """Counted as it arrives, or refused at once when Content-Length says it is too big."""
    client = make_client(max_upload_bytes=1000)
    response = submit(client, os.urandom(size))
    assert error_of(response) == (413, "upload_too_large")
    assert_nothing_left(client)


def test_chunked_upload_over_the_limit_is_cut_off_and_removed(make_client: MakeClient):
    """A real server and a generator body: no Content-Length, the size is counted as it comes."""
    client = make_client(max_upload_bytes=64 * 1024)
    boundary = "ftserveboundary"
    chunks_sent = 0

    def body() -> Iterator[bytes]:
        nonlocal chunks_sent
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="config"\r\n\r\n'
            f"{json.dumps(CONFIG)}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="dataset"; '
            'filename="d.zip"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode()
        for _ in range(16):
            chunks_sent += 1
            yield b"\0" * 16 * 1024
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with LiveServer(client.app) as server, httpx.Client(base_url=server.url) as http:
        response = http.post("/finetune", content=body(), headers=headers)
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert error_of(response) == (413, "upload_too_large")
    assert chunks_sent >= 5
    assert_nothing_left(client)


def test_full_queue_is_429_with_retry_after(make_client: MakeClient):
    client = make_client(max_queue_depth=1)
    assert submit(client, dataset_zip()).status_code == 202
    response = submit(client, dataset_zip())
    assert error_of(response) == (429, "queue_full")
    assert response.headers["retry-after"] == "30"
    assert len(leftovers(settings_of(client))) == 1  # the first job's upload only
    assert store_of(client).queue_depth() == 1


def test_queue_filling_up_while_uploading_removes_the_upload(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
):
    """The early depth check passes, the atomic one in enqueue refuses: the upload goes."""
    client = make_client(max_queue_depth=1)
    store = store_of(client)
    monkeypatch.setattr(JobStore, "queue_depth", lambda self: 0)
    store.enqueue("other", {}, "/nowhere")
    response = submit(client, dataset_zip())
    assert error_of(response) == (429, "queue_full")
    assert leftovers(settings_of(client)) == []
    assert store.list()[1] == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"content": b"x", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ({"content": b"x"}, 415, "unsupported_media_type"),
        (
            {"data": {"config": json.dumps(CONFIG)}, "files": {"other": ("x", b"1")}},
            400,
            "bad_request",
        ),
        ({"files": {"config": (None, json.dumps(CONFIG)), "x": (None, "1")}}, 400, "bad_request"),
        ({"data": {"config": json.dumps(CONFIG)}}, 415, "unsupported_media_type"),
        (
            {
                "content": b"--b\r\nbroken",
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            400,
            "bad_request",
        ),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, 400, "bad_request"),
        (
            {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        (
            {
                "content": b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            400,
            "bad_request",
        ),
        ({"content": b"", "headers": {"content-type": "multipart/form-data"}}, 400, "bad_request"),
        ({"json": [1]}, 422, "invalid_config"),
    ],
)
def test_malformed_requests_are_4xx(client: TestClient, kwargs, status, code):
    response = client.post("/finetune", **kwargs)
    assert error_of(response) == (status, code)
    assert_nothing_left(client)


def test_missing_dataset_is_400(client: TestClient):
    response = client.post("/finetune", files={"config": (None, json.dumps(CONFIG))})
    assert error_of(response) == (400, "bad_request")
    assert_nothing_left(client)


def test_two_datasets_are_400(client: TestClient):
    files = [("dataset", ("a.zip", dataset_zip())), ("dataset", ("b.zip", dataset_zip()))]
    response = client.post("/finetune", files=files, data={"config": json.dumps(CONFIG)})
    assert error_of(response) == (400, "bad_request")
    assert_nothing_left(client)
