"""The container smoke test: build both images, run deploy/compose.yaml, use the stack.

The images come from ``make images`` (Docker's build cache turns an unchanged build context
into seconds of cache hits). The compose project then runs on free loopback ports and,
through the API container, the sample dataset is fine-tuned while the worker container is
restarted mid-training (the job must resume and succeed), predictions through the API and
straight over gRPC must agree, and a request in flight when the API container gets SIGTERM
must complete (drain). The images are checked too: no TensorFlow in the API image, no layer
holding the CA bundle the build got as a secret, and both sizes printed.

These skip, naming the reason, without a Docker engine or Compose (``.ci/run`` installs and
starts both on CI). The checks of the compose file itself run everywhere. Settings:
FTSERVE_TEST_IMAGES_BASE (default ``local``, the Debian base made with debootstrap that
machines without registry access need, when running as root; else ``official``) and
FTSERVE_TEST_IMAGENET_WEIGHTS (default ``skip``: the test trains from scratch).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.training.sample_data import SHAPES
from tests.deploy.containers import (
    ComposeProject,
    build_images,
    compose_command,
    docker,
    engine_problem,
    free_port,
    image_size,
    layers_containing,
    pip_ca_bundle,
    wait_for,
)
from tests.deploy.manifests import ROOT
from tests.deploy.smoke import (
    MANIFESTS,
    MODEL,
    TOKEN,
    Stack,
    compose_mounts,
    compose_services,
    container_mounts,
    fine_tuning,
    finished,
    grpc_predict,
    manifest_container,
    manifest_mounts,
    one_image_per_class,
    sample_archive,
    slow_body,
)

# The README's sample run: long enough to restart the worker in the middle of it.
CONFIG = {
    "model_name": MODEL,
    "base_model": "small_cnn",
    "weights": "none",
    "batch_size": 16,
    "epochs": 3,
    "fine_tune_at": 0,
    "fine_tune_epochs": 30,
    "fine_tune_learning_rate": 0.001,
    "early_stopping_patience": 10,
}
PHASES_BEFORE_FINE_TUNE = {"features", "head"}
TRAINING_ONLY = {"tensorflow", "tensorflow-cpu", "keras", "onnxruntime", "tf2onnx"}
# Debian's own CA bundle, in both images.
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
USER = "10001:10001"


@dataclass(frozen=True)
class Images:
    api: str
    worker: str
    ca_bundle: Path | None


@dataclass(frozen=True)
class TrainedJob:
    job: dict[str, Any]
    at_restart: dict[str, Any]
    progress_after: list[dict[str, Any]]
    worker_log: str
    dataset: Path


def _compose() -> list[str]:
    """The compose command, or skip the calling test saying why there is none."""
    problem = engine_problem()
    if problem is not None:
        pytest.skip(f"container smoke test: {problem}")
    command = compose_command()
    if command is None:
        pytest.skip("container smoke test: neither `docker compose` nor docker-compose is here")
    return command


@pytest.fixture(scope="module")
def compose() -> list[str]:
    return _compose()


@pytest.fixture(scope="module")
def images(compose: list[str], tmp_path_factory: pytest.TempPathFactory) -> Images:
    """Both images, built by ``make images``; an unchanged build context is all cache hits."""
    ca_bundle = pip_ca_bundle()
    settings = {
        "BASE": os.environ.get("FTSERVE_TEST_IMAGES_BASE")
        or ("local" if os.geteuid() == 0 else "official"),
        "IMAGENET_WEIGHTS": os.environ.get("FTSERVE_TEST_IMAGENET_WEIGHTS", "skip"),
        "IMAGE_TAG": "smoke",
        "CA_BUNDLE": str(ca_bundle or ""),
    }
    log = tmp_path_factory.mktemp("images") / "make-images.log"
    started = time.monotonic()
    build_images(settings, log, timeout=3600)
    print(f"make images {settings}: {time.monotonic() - started:.0f} s")
    return Images("ftserve-api:smoke", "ftserve-worker:smoke", ca_bundle)


@pytest.fixture(scope="module")
def stack(compose: list[str], images: Images) -> Iterator[Stack]:
    """deploy/compose.yaml on free loopback ports, ready; removed with its volumes after."""
    api_port, grpc_port = free_port(), free_port()
    env = {
        "FTSERVE_API_IMAGE": images.api,
        "FTSERVE_WORKER_IMAGE": images.worker,
        "FTSERVE_BIND": "127.0.0.1",
        "FTSERVE_API_PORT": str(api_port),
        "FTSERVE_GRPC_PORT": str(grpc_port),
        "FTSERVE_REST_PORT": str(free_port()),
        "FTSERVE_API_TOKEN": TOKEN,
        "FTSERVE_DATABASE_URL": "",
    }
    project = ComposeProject(compose, f"ftserve-smoke-{os.getpid()}", env)
    running = Stack(project, f"http://127.0.0.1:{api_port}", f"127.0.0.1:{grpc_port}")
    try:
        project.run("up", "-d", timeout=600)
        running.wait_ready()
        yield running
    finally:
        project.run("down", "--volumes", "--timeout", "60", timeout=600)


@pytest.fixture(scope="module")
def trained(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> TrainedJob:
    """The sample fine-tuned through the API; the worker container restarted mid-training."""
    dataset, archive = sample_archive(tmp_path_factory.mktemp("sample"))
    with stack.client(timeout=120) as client, archive.open("rb") as upload:
        response = client.post(
            "/finetune",
            files={"dataset": (archive.name, upload, "application/zip")},
            data={"config": json.dumps(CONFIG)},
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    at_restart = wait_for(lambda: fine_tuning(stack, job_id), "fine-tuning", 600, every=0.3)
    # SIGTERM, then a new start: the worker hands the job back and claims it again.
    docker("restart", "--time", "120", stack.project.container("worker"), timeout=300)
    seen: list[dict[str, Any]] = []
    try:
        job = wait_for(lambda: finished(stack, job_id, seen), "the job to end", 900, every=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.project.all_logs()}") from None
    return TrainedJob(job, at_restart, seen, stack.project.logs("worker"), dataset)


# The compose file (no Docker needed) -----------------------------------------------------------


@pytest.mark.parametrize("service", [*MANIFESTS, "seed-models-config"])
def test_compose_services_are_hardened(service: str):
    config = compose_services()[service]
    assert config["user"] == USER
    assert config["read_only"] is True
    assert config["cap_drop"] == ["ALL"] and "cap_add" not in config
    assert config["security_opt"] == ["no-new-privileges:true"]
    assert "privileged" not in config


@pytest.mark.parametrize("service", MANIFESTS)
def test_compose_mounts_what_the_manifests_mount(service: str):
    assert compose_mounts(compose_services()[service]) == manifest_mounts(service)


def test_compose_model_server_runs_with_the_tf_serving_flags():
    service = compose_services()["model-server"]
    assert service["entrypoint"] == ["ftserve", "model-server"]
    assert service["command"] == manifest_container("model-server")["args"]


# Images ----------------------------------------------------------------------------------------


def test_api_image_holds_no_tensorflow(images: Images):
    run = ["run", "--rm", "--network", "none", "--entrypoint", "python", images.api]
    imported = docker(*run, "-c", "import tensorflow", check=False)
    assert imported.returncode != 0
    assert "No module named 'tensorflow'" in imported.stderr
    listed = docker(*run, "-m", "pip", "list", "--format", "json", timeout=300)
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert {"fastapi", "ftserve"} <= installed
    assert installed & TRAINING_ONLY == set()


def test_image_sizes_are_reported(images: Images, capsys: pytest.CaptureFixture[str]):
    sizes = {image: image_size(image) for image in (images.api, images.worker)}
    with capsys.disabled():
        for image, size in sizes.items():
            print(f"\n{image}: {size / 1e6:.0f} MB", end="")
    # Without TensorFlow the API image is a fraction of the worker's.
    assert 0 < 3 * sizes[images.api] < sizes[images.worker]


def _largest_source(path: str) -> bytes:
    found = ROOT / path
    if found.is_dir():
        found = max(found.rglob("*.py"), key=lambda p: p.stat().st_size)
    return found.read_bytes()


def test_no_layer_holds_the_ca_bundle(images: Images):
    if images.ca_bundle is None:
        pytest.skip("pip has no CA bundle configured here, so the build was given no secret")
    bundle = images.ca_bundle.read_bytes()
    run = ["run", "--rm", "--entrypoint", "cat", images.api, IMAGE_CA_BUNDLE]
    if docker(*run, check=False).stdout == bundle.decode("utf-8", "replace"):
        pytest.skip(f"{images.ca_bundle} is the images' own CA bundle: a leak would look the same")
    for image, source in ((images.api, "service/api/server.py"), (images.worker, "exporter")):
        # The scan must find a file the image does hold, or finding nothing proves nothing.
        found = layers_containing(image, {"installed": _largest_source(source), "ca": bundle})
        assert found["installed"], f"{image}: the scan misses a file the image installs"
        assert found["ca"] == [], f"{image} holds {images.ca_bundle}"


# The running stack -----------------------------------------------------------------------------


@pytest.mark.parametrize("service", MANIFESTS)
def test_containers_run_hardened_like_the_manifests(stack: Stack, service: str):
    inspected = stack.project.inspect(service)
    assert inspected["State"]["Running"], service
    assert inspected["Config"]["User"] == USER
    host = inspected["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert container_mounts(inspected) == manifest_mounts(service)
    # What the kernel enforces, seen from inside.
    probe = docker("exec", inspected["Id"], "sh", "-c", "id -u; touch /probe", check=False)
    assert probe.stdout.split()[0] == USER.split(":")[0]
    assert "Read-only file system" in probe.stderr


def test_finetune_resumes_after_the_worker_container_restarts(trained: TrainedJob):
    job, job_id = trained.job, trained.job["job_id"]
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["model"] == MODEL and job["result"]["version"] >= 1
    # Handed back on SIGTERM, then claimed again by the restarted container.
    assert f"job {job_id}: released" in trained.worker_log
    assert trained.worker_log.count(f"job {job_id}: claimed") == 2
    # Resumed from the checkpoints: fine-tuning went on, no earlier phase was trained again.
    assert trained.progress_after, "no progress seen after the restart"
    for progress in trained.progress_after:
        assert progress["phase"] not in PHASES_BEFORE_FINE_TUNE, progress
        if progress["phase"] == "fine_tune":
            assert progress["epoch"] >= trained.at_restart["epoch"], progress
    epochs = [(entry["phase"], entry["epoch"]) for entry in job["history"]]
    assert len(epochs) == len(set(epochs)), epochs
    assert [e for p, e in epochs if p == "head"] == [1, 2, 3]


def test_predict_through_the_api_matches_grpc(stack: Stack, trained: TrainedJob):
    version = trained.job["result"]["version"]
    images = one_image_per_class(trained.dataset)
    body = {"model": MODEL, "instances": [{"b64": base64.b64encode(i).decode()} for i in images]}
    with stack.client() as client:
        response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["model"], answer["version"]) == (MODEL, version)
    direct = grpc_predict(stack.grpc_address, images, version)
    assert len(answer["predictions"]) == len(images)
    for row, prediction in enumerate(answer["predictions"]):
        labels = [label.decode() for label in direct["labels"][row]]
        assert [top["label"] for top in prediction["top_k"]] == labels
        assert set(labels) == set(SHAPES)
        for top, score in zip(prediction["top_k"], direct["label_scores"][row], strict=True):
            assert top["score"] == pytest.approx(float(score), abs=1e-6)


def test_sigterm_lets_the_api_finish_a_request_in_flight(stack: Stack, trained: TrainedJob):
    image = one_image_per_class(trained.dataset)[0]
    body = json.dumps({"model": MODEL, "instances": [{"b64": base64.b64encode(image).decode()}]})
    api = stack.project.container("api")
    sent_first = threading.Event()
    signalled: list[float] = []

    def terminate() -> None:
        sent_first.wait(30)
        time.sleep(0.5)  # the request is in the app by now, reading its body
        docker("kill", "--signal", signal.SIGTERM.name, api)
        signalled.append(time.monotonic())

    killer = threading.Thread(target=terminate)
    killer.start()
    try:
        with stack.client() as client:
            response = client.post(
                "/predict",
                content=slow_body(body.encode(), sent_first),
                headers={"Content-Type": "application/json", "Content-Length": str(len(body))},
            )
        answered = time.monotonic()
    finally:
        killer.join()
    assert signalled and signalled[0] < answered, "the request ended before the signal"
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] in SHAPES
    wait_for(
        lambda: True if not stack.project.inspect("api")["State"]["Running"] else None,
        "the API container to exit after SIGTERM",
        60,
    )
    docker("start", api)
    stack.wait_ready()
