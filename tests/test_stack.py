"""The whole stack as a user runs it: ``ftserve serve``, HTTP calls, direct gRPC.

Real processes on loopback: the model server, a worker and the API, started by
``ftserve serve``; a zip of real images (scikit-learn's digits as PNG); server-sent events;
predictions through ``/predict`` and straight from the model server with the official
``tensorflow-serving-api`` client; the ONNX download.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from exporter.export import decode_batch
from service.training.sample_data import make_digits_dataset
from tests.support.servers import free_port
from tests.support.stack import Stack, serve_command, serving_stack, stack_env

CONFIG = {
    "model_name": "digits",
    "base_model": "small_cnn",
    "weights": "none",
    "image_size": 32,
    "epochs": 3,
    "batch_size": 16,
    "fine_tune_at": 0,
    "fine_tune_epochs": 3,
}


@pytest.fixture(scope="module")
def digits_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    folder, _ = make_digits_dataset(root / "digits", digits=(0, 1, 7), per_class=25, seed=2)
    return Path(shutil.make_archive(str(root / "digits"), "zip", folder))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int]]:
    with serving_stack(tmp_path_factory.mktemp("stack")) as found:
        yield found


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    event, data = "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data.append(line.partition(":")[2].strip())
        elif line == "" and data:
            yield event, json.loads("\n".join(data))
            event, data = "message", []


def test_finetune_then_predict_over_http_and_grpc(stack, digits_zip: Path, tmp_path: Path):
    running, grpc_port = stack
    with open(digits_zip, "rb") as archive:
        accepted = running.http.post(
            "/finetune",
            files={"dataset": ("digits.zip", archive, "application/zip")},
            data={"config": json.dumps(CONFIG)},
        )
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    assert accepted.headers["location"] == f"/finetune/{job_id}"

    with running.http.stream("GET", f"/finetune/{job_id}/events", timeout=600) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        seen = list(sse_events(events))
    statuses = [data["status"] for event, data in seen if event == "state"]
    assert "running" in statuses, (seen, running.log())
    assert statuses[-1] == "succeeded" and seen[-1][0] == "state", (seen, running.log())
    assert seen[-1][1]["result"]["version"] == 1 and seen[-1][1]["error"] is None
    progress = [data for event, data in seen if event == "progress"]
    assert progress and any(data["metrics"] for data in progress), progress
    assert all("history" not in data and "config" not in data for _, data in seen)

    job = running.http.get(f"/finetune/{job_id}").json()
    assert job["status"] == "succeeded" and job["result"]["version"] == 1
    assert {"phase", "epoch"} <= set(job["history"][0])
    # The epoch events, a redone row replacing its first version, add up to the history.
    streamed = {(data["phase"], data["epoch"]): data for event, data in seen if event == "epoch"}
    assert list(streamed.values()) == job["history"]

    image = _digit_png(digits_zip)
    deadline = time.monotonic() + 60
    while True:  # the model server picks the new version up within a poll or two
        predicted = running.http.post(
            "/predict",
            json={"model": "digits", "instances": [{"b64": base64.b64encode(image).decode()}]},
        )
        if predicted.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert predicted.status_code == 200, predicted.text
    answer = predicted.json()
    assert answer["model"] == "digits" and answer["version"] == 1
    top = answer["predictions"][0]
    assert {entry["label"] for entry in top["top_k"]} == {"digit_0", "digit_1", "digit_7"}

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    channel.close()
    labels = tf.make_ndarray(reply.outputs["labels"])[0]
    scores = tf.make_ndarray(reply.outputs["label_scores"])[0]
    assert top["label"] == labels[0].decode()
    assert top["score"] == pytest.approx(float(scores[0]), abs=1e-6)

    onnx_file = running.http.get("/models/digits/versions/1/onnx")
    assert onnx_file.status_code == 200
    session = ort.InferenceSession(onnx_file.content, providers=["CPUExecutionProvider"])
    pixels = decode_batch([image], CONFIG["image_size"])
    (probabilities,) = session.run(None, {session.get_inputs()[0].name: pixels})
    probs = tf.make_ndarray(reply.outputs["probabilities"])
    np.testing.assert_allclose(probabilities, probs, atol=1e-4)


def _digit_png(archive: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(archive) as z:
        name = next(n for n in z.namelist() if n.startswith("digit_7/") and n.endswith(".png"))
        return z.read(name)


def test_sigterm_stops_the_whole_stack(tmp_path: Path):
    api = free_port()
    running = Stack(tmp_path, serve_command(api, free_port()), stack_env(tmp_path), api)
    running.wait_ready()
    children = subprocess.run(
        ["pgrep", "-P", str(running.process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(children) == 3
    assert running.stop() == 0, running.log()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
