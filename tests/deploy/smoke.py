"""What the container smoke test does with a running stack: the API over HTTP, the model
server over gRPC, the sample dataset, and the manifests and compose file it compares."""

from __future__ import annotations

import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml

from service.contract.signatures import BYTES_INPUT
from service.model_client import predict_pb2
from service.model_client.client import PREDICT
from service.model_client.codec import decode_tensor, encode_strings
from service.training.sample_data import SHAPES, make_shapes_dataset
from tests.deploy.containers import COMPOSE_FILE, ComposeProject, wait_for
from tests.deploy.manifests import K8S

TOKEN = "smoke-test-token"
MODEL = "shapes"
FINAL_STATES = ("succeeded", "failed", "cancelled")
# compose service → the manifest (deploy/k8s/base) whose container it stands for.
MANIFESTS = {"api": "api.yaml", "worker": "worker.yaml", "model-server": "tf-serving.yaml"}


@dataclass(frozen=True)
class Stack:
    """The compose project and where its published ports are."""

    project: ComposeProject
    api_url: str
    grpc_address: str

    def client(self, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout)

    def wait_ready(self, timeout: float = 180) -> None:
        """Until ``/readyz`` answers 200 (job store and model server reachable)."""

        def ready() -> bool | None:
            with self.client(timeout=5) as client:
                return True if client.get("/readyz").status_code == 200 else None

        try:
            wait_for(ready, "the API's /readyz", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.project.all_logs()}") from None

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as client:
            response = client.get(f"/finetune/{job_id}")
        response.raise_for_status()
        return response.json()


def sample_archive(folder: Path) -> tuple[Path, Path]:
    """The sample dataset (``ftserve sample-data``'s defaults) and a zip of it."""
    dataset = make_shapes_dataset(folder / "sample", seed=0)
    archive = folder / "sample.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(dataset.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return dataset, archive


def one_image_per_class(dataset: Path) -> list[bytes]:
    return [min((dataset / shape).iterdir()).read_bytes() for shape in SHAPES]


def fine_tuning(stack: Stack, job_id: str, epoch: int = 2) -> dict[str, Any] | None:
    """The job's progress once it is ``epoch`` epochs into fine-tuning (checkpoints exist)."""
    job = stack.job(job_id)
    assert job["status"] not in FINAL_STATES, f"the job ended before fine-tuning: {job}"
    progress = job["progress"] or {}
    if progress.get("phase") == "fine_tune" and (progress.get("epoch") or 0) >= epoch:
        return progress
    return None


def finished(stack: Stack, job_id: str, seen: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The job once it is final; collects the progress of each poll while it runs."""
    job = stack.job(job_id)
    if job["status"] == "running" and job["progress"]:
        seen.append(job["progress"])
    return job if job["status"] in FINAL_STATES else None


def grpc_predict(address: str, images: list[bytes], version: int) -> dict[str, Any]:
    """``serving_default`` straight from the model server, as any TF Serving client calls it."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.version.value = version
    request.inputs[BYTES_INPUT].CopyFrom(encode_strings(images))
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            PREDICT,
            request_serializer=predict_pb2.PredictRequest.SerializeToString,
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )
        response = call(request, timeout=30)
    return {alias: decode_tensor(proto) for alias, proto in response.outputs.items()}


def slow_body(body: bytes, sent_first: threading.Event, pause: float = 1.5) -> Iterator[bytes]:
    """``body`` in three parts, ``pause`` seconds apart; ``sent_first`` is set after the first."""
    yield body[:16]
    sent_first.set()
    for part in (body[16:32], body[32:]):
        time.sleep(pause)
        yield part


# The compose file and the manifests ------------------------------------------------------------


def compose_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]


def manifest_container(service: str) -> dict[str, Any]:
    """The container of the base manifest that ``service`` stands for."""
    docs = yaml.safe_load_all((K8S / "base" / MANIFESTS[service]).read_text(encoding="utf-8"))
    deployment = next(doc for doc in docs if doc and doc["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def manifest_mounts(service: str) -> dict[str, bool]:
    """The manifest container's mount paths → writable."""
    mounts = manifest_container(service)["volumeMounts"]
    return {m["mountPath"]: not m.get("readOnly", False) for m in mounts}


def compose_mounts(service: dict[str, Any]) -> dict[str, bool]:
    """A compose service's volumes and tmpfs mounts (short syntax) → writable."""
    mounts = {}
    for volume in service.get("volumes", []):
        _, target, *mode = volume.split(":")
        mounts[target] = mode != ["ro"]
    for tmpfs in service.get("tmpfs", []):
        mounts[tmpfs.split(":")[0]] = True
    return mounts


def container_mounts(inspected: dict[str, Any]) -> dict[str, bool]:
    """A running container's mounts (``docker inspect``) → writable."""
    mounts = {m["Destination"]: bool(m["RW"]) for m in inspected["Mounts"]}
    mounts.update(dict.fromkeys(inspected["HostConfig"].get("Tmpfs") or {}, True))
    return mounts
