"""``max_held_upload_bytes``: the queue limit in bytes, on what the uploads folder holds."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import httpx

from tests.api.conftest import (
    LiveServer,
    MakeClient,
    dataset_zip,
    error_of,
    leftovers,
    settings_of,
    store_of,
)
from tests.api.test_finetune import CONFIG, submit


def declared_length(archive: bytes) -> int:
    """The Content-Length ``submit`` sends for ``archive`` (its boundary's length is fixed)."""
    files = {"dataset": ("data.zip", archive, "application/zip")}
    request = httpx.Request(
        "POST", "http://testserver/finetune", files=files, data={"config": json.dumps(CONFIG)}
    )
    return int(request.headers["content-length"])


def full_message(held: int, incoming: int, limit: int) -> str:
    return (
        f"Uploads waiting for training hold {held} bytes; this request's {incoming} more"
        f" would pass {limit} (max_held_upload_bytes); retry later"
    )


def test_uploads_past_the_byte_limit_are_429_until_one_is_cancelled(make_client: MakeClient):
    archive = dataset_zip()
    length = declared_length(archive)
    # Room for two archives held and a third request's body, less one byte.
    limit = 2 * len(archive) + length - 1
    client = make_client(max_held_upload_bytes=limit)
    store = store_of(client)
    first, second = (submit(client, archive).json()["job_id"] for _ in range(2))
    assert store.claim("worker-1").id == first  # a running job holds its upload too

    refused = submit(client, archive)

    assert refused.status_code == 429
    assert refused.json() == {
        "error": {"code": "queue_full", "message": full_message(2 * len(archive), length, limit)}
    }
    assert refused.headers["retry-after"] == "30"
    assert leftovers(settings_of(client)) == sorted([f"{first}.upload", f"{second}.upload"])
    assert store.list()[1] == 2

    assert client.delete(f"/finetune/{second}").status_code == 200
    accepted = submit(client, archive)
    assert accepted.status_code == 202, accepted.text
    third = accepted.json()["job_id"]
    assert leftovers(settings_of(client)) == sorted([f"{first}.upload", f"{third}.upload"])


def test_a_declared_length_past_the_limit_is_refused_before_the_body_is_sent(
    make_client: MakeClient,
):
    """Only the request head goes out; the answer comes without a byte of the body."""
    client = make_client(max_held_upload_bytes=100_000)
    head = (
        "POST /finetune HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100001\r\n\r\n"
    )
    with (
        LiveServer(client.app) as server,
        socket.create_connection(("127.0.0.1", server.port)) as sock,
    ):
        sock.settimeout(30)
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 429 Too Many Requests"
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {
        "error": {"code": "queue_full", "message": full_message(0, 100_001, 100_000)}
    }
    assert leftovers(settings_of(client)) == []


def test_a_chunked_upload_passing_the_limit_is_cut_off_and_removed(make_client: MakeClient):
    archive = dataset_zip()
    limit = len(archive) + 100 * 1024
    client = make_client(max_held_upload_bytes=limit)
    kept = submit(client, archive).json()["job_id"]
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
        for _ in range(32):
            chunks_sent += 1
            yield b"\0" * 16 * 1024
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with LiveServer(client.app) as server, httpx.Client(base_url=server.url) as http:
        response = http.post("/finetune", content=body(), headers=headers)

    assert response.request.headers["transfer-encoding"] == "chunked"
    assert error_of(response) == (429, "queue_full")
    pattern = (
        rf"Uploads waiting for training hold {len(archive)} bytes; this request's (\d+) more"
        rf" would pass {limit} \(max_held_upload_bytes\); retry later"
    )
    match = re.fullmatch(pattern, response.json()["error"]["message"])
    assert match is not None, response.json()
    assert len(archive) + int(match[1]) > limit
    assert chunks_sent >= 7
    assert leftovers(settings_of(client)) == [f"{kept}.upload"]
    assert store_of(client).list()[1] == 1
