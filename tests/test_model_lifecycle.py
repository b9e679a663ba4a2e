"""Versions, labels and promotion through ``ftserve serve``, with real training.

Real images (scikit-learn's digits as PNG), real fine-tunes in the stack's worker, the
model server polling the repository, and the API on loopback, on SQLite and on Postgres.
A second fine-tune on the same clean data with a learning rate too small to learn anything
must be held as ``canary`` while ``stable`` keeps answering.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.training.sample_data import make_digits_dataset
from tests.jobs.conftest import postgres_schema
from tests.support.servers import free_port
from tests.support.stack import Stack, serve_command, stack_env

MODEL = "digits"
GOOD = {
    "model_name": MODEL,
    "base_model": "small_cnn",
    "weights": "none",
    "image_size": 32,
    "epochs": 8,
    "batch_size": 16,
}
# The same data and model, trained so little that it cannot beat the first version.
USELESS = {**GOOD, "epochs": 1, "learning_rate": 1e-7, "early_stopping_patience": 0}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    root = tmp_path_factory.mktemp("digits")
    folder, _ = make_digits_dataset(root / "digits", digits=(0, 1, 7), per_class=30, seed=4)
    archive = Path(shutil.make_archive(str(root / "digits"), "zip", folder))
    images = [path.read_bytes() for path in sorted(folder.glob("*/*"))[::10]]
    return archive, images


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp(f"lifecycle-{request.param}")
    env = stack_env(root)
    with ExitStack() as cleanup:
        if request.param == "postgres":
            env["FTSERVE_DATABASE_URL"] = cleanup.enter_context(postgres_schema("ftserve_stack"))
        api = free_port()
        running = Stack(root, serve_command(api, free_port()), env, api)
        cleanup.callback(running.stop)
        running.wait_ready()
        yield running
        assert running.stop() == 0, running.log()


def finetune(stack: Stack, archive: Path, config: dict) -> dict:
    """Submit a job and wait for it to end; its final view."""
    with open(archive, "rb") as body:
        accepted = stack.http.post(
            "/finetune",
            files={"dataset": ("digits.zip", body, "application/zip")},
            data={"config": json.dumps(config)},
        )
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job = stack.http.get(f"/finetune/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", (job["error"], stack.log())
            return job
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not finish:\n{stack.log()}")


def predict(stack: Stack, images: list[bytes], **choice: object) -> httpx.Response:
    instances = [{"b64": base64.b64encode(image).decode()} for image in images]
    return stack.http.post("/predict", json={"model": MODEL, "instances": instances, **choice})


def answered_by(stack: Stack, images: list[bytes], **choice: object) -> int:
    response = predict(stack, images, **choice)
    assert response.status_code == 200, response.text
    return int(response.json()["version"])


def labels(stack: Stack) -> dict[str, int]:
    return stack.http.get(f"/models/{MODEL}").json()["labels"]


def test_promotion_labels_rollback_and_deletes(stack: Stack, digits):
    archive, images = digits

    first = finetune(stack, archive, GOOD)["result"]
    assert first["version"] == 1
    assert first["promotion"]["decision"] == "promoted"
    assert first["promotion"]["reason"] == "the first version of the model"
    assert first["promotion"]["stable"] is None
    assert first["labels"] == {"stable": 1}
    assert answered_by(stack, images) == 1

    second = finetune(stack, archive, USELESS)["result"]
    promotion = second["promotion"]
    assert second["version"] == 2
    assert promotion["decision"] == "held", promotion
    assert promotion["candidate"]["version"] == 2
    assert promotion["stable"]["version"] == 1
    assert promotion["candidate"]["accuracy"] < promotion["stable"]["accuracy"]
    assert set(promotion["candidate"]) == {"version", "accuracy", "log_loss", "macro_f1"}
    assert second["labels"] == {"stable": 1, "canary": 2}
    assert answered_by(stack, images) == 1
    assert answered_by(stack, images, version=2) == 2
    assert answered_by(stack, images, label="canary") == 2

    detail = stack.http.get(f"/models/{MODEL}").json()
    assert [(v["version"], v["labels"], v["served"]) for v in detail["versions"]] == [
        (1, ["stable"], True),
        (2, ["canary"], True),
    ]
    assert detail["versions"][1]["promotion"] == promotion
    assert {v["state"] for v in detail["versions"]} == {"AVAILABLE"}

    moved = stack.http.put(f"/models/{MODEL}/labels/stable", json={"version": 2})
    assert moved.status_code == 200, moved.text
    assert moved.json()["labels"] == {"stable": 2, "canary": 2}
    assert answered_by(stack, images) == 2

    rolled = stack.http.post(f"/models/{MODEL}/rollback")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["labels"] == {"stable": 1, "canary": 2}
    assert answered_by(stack, images) == 1
    assert stack.http.post(f"/models/{MODEL}/rollback").json()["error"]["code"] == (
        "no_previous_version"
    )

    labelled = stack.http.delete(f"/models/{MODEL}/versions/2")
    assert (labelled.status_code, labelled.json()["error"]["code"]) == (409, "version_labelled")
    assert stack.http.delete(f"/models/{MODEL}/labels/canary").status_code == 200
    deleted = stack.http.delete(f"/models/{MODEL}/versions/2")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"name": MODEL, "deleted_versions": [2]}
    gone = predict(stack, images, version=2)
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "version_not_found")

    never = finetune(stack, archive, {**GOOD, "promote": "never"})["result"]
    assert never["version"] == 3  # 2 was deleted; its number is never reused
    assert never["promotion"]["decision"] == "held"
    assert never["promotion"]["reason"] == "promote is 'never'"
    assert labels(stack) == {"stable": 1, "canary": 3}
    not_served = predict(stack, images, version=2)
    assert not_served.json()["error"]["code"] == "version_not_found"

    always = finetune(stack, archive, {**USELESS, "promote": "always"})["result"]
    assert always["version"] == 4
    assert always["promotion"]["decision"] == "promoted"
    assert labels(stack) == {"stable": 4, "canary": 3}
    assert answered_by(stack, images) == 4
    # Version 1 lost its label: on disk, no longer served, and the 404 says how to serve it.
    unserved = predict(stack, images, version=1)
    assert (unserved.status_code, unserved.json()["error"]["code"]) == (404, "version_not_served")


@dataclass
class Call:
    started: float
    ended: float
    version: int | None
    error: str | None = None


def test_predictions_follow_stable_while_it_moves(stack: Stack, digits):
    """2,000 /predict calls to the default label while stable moves 4 → 3 → 4 (after the
    test above): no errors, every answer from a version stable pointed at during the call,
    none from the old version once the move returned."""
    _, images = digits
    assert labels(stack)["stable"] == 4
    calls: list[Call] = []
    moves: list[tuple[float, float, int, int]] = []  # (started, returned, from, to)
    lock = threading.Lock()
    stop = threading.Event()
    moved_at: list[float] = []  # when the last move returned
    # Calls go on until there are 2,000 and one started after the last move returned, however
    # fast /predict is next to a label move.

    def client() -> None:
        with httpx.Client(base_url=str(stack.http.base_url), timeout=30) as http:
            body = {"model": MODEL, "instances": [{"b64": base64.b64encode(images[0]).decode()}]}
            while not stop.is_set():
                started = time.monotonic()
                response = http.post("/predict", json=body)
                ended = time.monotonic()
                ok = response.status_code == 200
                call = Call(
                    started,
                    ended,
                    response.json()["version"] if ok else None,
                    None if ok else response.text,
                )
                with lock:
                    calls.append(call)
                    if len(calls) >= 2000 and moved_at and started > moved_at[0]:
                        stop.set()

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        for target in (3, 4):
            time.sleep(0.5)
            before = labels(stack)["stable"]
            started = time.monotonic()
            moved = stack.http.put(f"/models/{MODEL}/labels/stable", json={"version": target})
            moves.append((started, time.monotonic(), before, target))
            assert moved.status_code == 200, moved.text
    except BaseException:
        stop.set()  # the clients would wait for a move that never comes
        raise
    with lock:
        moved_at.append(moves[-1][1])
    for thread in threads:
        thread.join(timeout=300)

    assert len(calls) >= 2000
    assert [c.error for c in calls if c.error] == []
    assert len(moves) == 2 and any(c.started > moves[-1][1] for c in calls)
    for call in calls:
        assert call.version in allowed_versions(call, moves, initial=4), (call, moves)


def allowed_versions(call: Call, moves: list[tuple[float, float, int, int]], initial: int):
    """What stable pointed at at some moment of the call, as far as the client can know."""
    current = initial
    allowed: set[int] = set()
    for started, returned, before, after in moves:
        if returned < call.started:
            current = after  # the move was over before the call began
        elif started <= call.ended:
            allowed |= {before, after}  # the move overlapped the call
    return allowed | {current}
