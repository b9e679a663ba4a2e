"""``POST /predict`` through the API versus a direct gRPC Predict, and the API's cold start.

1. The same model (a bare SavedModel, random weights) and the same JPEG, served by one
   ``ftserve model-server``. Each request is one image: through the API (JSON with a
   base64 instance; the API forwards the bytes over its long-lived gRPC channel) and
   straight to the model server with the official ``tensorflow_serving.apis`` stubs. The
   HTTP side is a lean keep-alive client (``KeepAliveClient``), so the client's own CPU,
   which shares the API's CPU on a 2-CPU machine, stays small on both paths.
   p50/p99 at concurrency 1, and saturated throughput at ``--saturate`` concurrent
   clients; the two paths take turns level by level. Twice: all processes sharing the
   CPUs, then (with 2 CPUs or more) the model server pinned apart from the API and the
   client, every thread of each, as ``taskset -a -p`` pins: overhead told from contention.
2. Cold start: spawn to the first ``200`` from ``/healthz`` for ``ftserve api``, against
   ``python -c "import tensorflow"`` alone (what any process that imports TensorFlow pays
   before doing anything), the median of ``--starts`` runs each.

    python -m bench.api_predict [--base-model small_cnn --image-size 32] [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import httpx
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from bench.export_serving import photo_like_jpeg
from bench.model_server import MODEL, ROOT, Server, drive, export, free_port
from bench.report import Measured
from service.contract.repository import ModelRepository
from service.contract.serving_state import STABLE
from service.contract.train_config import DEFAULT_BASE_MODEL

Call = Callable[[], Awaitable[object]]
ROUNDS = 2


def summary(wall: float, latencies: list[float], cpu: float) -> tuple[float, ...]:
    """(req/s, p50 ms, p99 ms, client cores) of one measured level."""
    latencies.sort()
    p99 = latencies[round(0.99 * (len(latencies) - 1))]
    return len(latencies) / wall, statistics.median(latencies), p99, cpu / wall


def start_api(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int, float]:
    """Spawn ``ftserve api``; return it, its port and the seconds until /healthz answered."""
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "api", "--port", str(port)]
    started = time.perf_counter()
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process, port, time.perf_counter() - started
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"ftserve api exited: {log.read_text()[-2000:]}")
        time.sleep(0.01)


def import_tensorflow_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, cwd=ROOT)
    return time.perf_counter() - started


async def compare(grpc_port: int, api_port: int, image: bytes, requests: int, saturate: int):
    request = predict_pb2.PredictRequest()
    # Both paths name the label /predict follows by default, so the server resolves alike.
    request.model_spec.name, request.model_spec.version_label = MODEL, STABLE
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
    body = {"model": MODEL, "instances": [{"b64": base64.b64encode(image).decode()}]}
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    http = KeepAliveClient("127.0.0.1", api_port)
    payload = json.dumps(body).encode()

    async def direct() -> object:
        return await stub.Predict(request, timeout=60)

    async def through_api() -> object:
        status, reply = await asyncio.wait_for(http.post_json("/predict", payload), 60)
        if status != 200:
            raise RuntimeError(f"/predict answered {status}: {reply[:300]!r}")
        return reply

    calls = {"grpc": direct, "api": through_api}
    results: dict[str, dict[int, tuple[float, ...]]] = {"grpc": {}, "api": {}}
    for concurrency in (1, saturate):
        for call in calls.values():
            await drive(call, concurrency, max(20, requests // 10))  # warm up
        # The paths take turns, ROUNDS times, so drifting load hits both alike.
        walls = dict.fromkeys(calls, 0.0)
        cpus = dict.fromkeys(calls, 0.0)
        latencies: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(ROUNDS):
            for name, call in calls.items():
                wall, found, cpu = await drive(call, concurrency, requests // ROUNDS)
                walls[name] += wall
                cpus[name] += cpu
                latencies[name] += found
        for name in calls:
            results[name][concurrency] = summary(walls[name], latencies[name], cpus[name])
    await http.close()
    await channel.close()
    return results


class KeepAliveClient:
    """A lean HTTP/1.1 client for the benchmark: POST over kept-alive connections.

    The gRPC path's client is gRPC's C core; an HTTP client in Python (httpx) spends more
    CPU a request than the API does, and on 2 CPUs the client shares the API's. Writing the
    request and reading a ``Content-Length`` reply straight off asyncio streams keeps the
    client's share small on both paths. A connection serves one request at a time; there
    are as many as requests in flight.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one POST."""
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._all.append(writer)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        reply = await reader.readexactly(length)
        self._idle.append((reader, writer))
        return status, reply

    async def close(self) -> None:
        for writer in self._all:
            writer.close()


def served_repository(root: Path, base_model: str, size: int) -> ModelRepository:
    """A model repository holding one version of a bare export, labelled ``stable``."""
    export(base_model, size, root / "export")
    repo = ModelRepository(root / "models")
    with repo.staging(MODEL) as staging:
        shutil.copytree(root / "export" / "1", staging, dirs_exist_ok=True)
        repo.publish(MODEL, staging)
    repo.update_state(MODEL, lambda state: state.set_label(STABLE, 1))
    return repo


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += _tree(int(child))
    return found


def pin(pid: int, cpus: set[int]) -> None:
    """What ``taskset -a -p`` does, for a whole process tree: every thread onto ``cpus``."""
    for process in _tree(pid):
        for task in Path(f"/proc/{process}/task").glob("*"):
            with contextlib.suppress(ProcessLookupError, PermissionError):  # a thread ended
                os.sched_setaffinity(int(task.name), cpus)


def layouts() -> dict[str, dict[str, set[int]] | None]:
    """CPU sets per process: shared (no pinning), and separated when there are ≥ 2 CPUs.

    Separated: the model server on its own CPU(s); the API and the client on the others
    (the client shares the API's CPU on a 2-CPU machine, and gets its own from 3).
    """
    cpus = sorted(os.sched_getaffinity(0))
    found: dict[str, dict[str, set[int]] | None] = {"shared": None}
    if len(cpus) == 2:
        found["separated"] = {"server": {cpus[1]}, "api": {cpus[0]}, "client": {cpus[0]}}
    elif len(cpus) > 2:
        found["separated"] = {"api": {cpus[0]}, "client": {cpus[1]}, "server": set(cpus[2:])}
    return found


def run(base_model: str, size: int, requests: int, saturate: int, starts: int) -> dict:
    """Cold starts (``starts`` of each; none for 0), then both paths in every layout."""
    everything = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="ftserve-bench-api-") as scratch:
        root = Path(scratch)
        repo = served_repository(root, base_model, size)
        flags = [
            f"--model_config_file={repo.config_path}",
            "--allow_version_labels_for_unavailable_models=true",
        ]
        server = Server(flags, root / "model-server.log")
        server.wait_available()
        env = {
            **os.environ,
            "FTSERVE_MODEL_SERVER": f"127.0.0.1:{server.port}",
            "FTSERVE_DATA_ROOT": str(root / "data"),
            "FTSERVE_MODEL_REPO": str(root / "models"),
        }
        api_starts = []
        for _ in range(starts):
            api, api_port, seconds = start_api(env, root / "api.log")
            api_starts.append(seconds)
            api.terminate()
            api.wait(60)
        imports = [import_tensorflow_seconds() for _ in range(starts)]
        api, api_port, _ = start_api(env, root / "api.log")
        image = photo_like_jpeg(size)
        results = {}
        try:
            for name, cpus in layouts().items():
                for process, who in ((server.process.pid, "server"), (api.pid, "api")):
                    pin(process, cpus[who] if cpus else everything)
                pin(os.getpid(), cpus["client"] if cpus else everything)
                results[name] = asyncio.run(
                    compare(server.port, api_port, image, requests, saturate)
                )
        finally:
            pin(os.getpid(), everything)
            api.terminate()
            api.wait(60)
            server.stop()
    return {
        "model": f"{base_model} at {size}px, 1 image a request",
        "requests_per_level": requests,
        "saturate_clients": saturate,
        "layouts": {
            name: {
                "cpus": {k: sorted(v) for k, v in cpus.items()} if cpus else "all, shared",
                **{path: _by_level(results[name][path]) for path in ("grpc", "api")},
            }
            for name, cpus in layouts().items()
        },
        "cold_start_s": {
            "api_to_healthz": statistics.median(api_starts),
            "import_tensorflow": statistics.median(imports),
        }
        if starts
        else None,
    }


_COLUMNS = ("req_per_s", "p50_ms", "p99_ms", "client_cores")


def _by_level(rows: dict[int, tuple[float, ...]]) -> dict[str, dict[str, float]]:
    return {str(level): dict(zip(_COLUMNS, row, strict=True)) for level, row in rows.items()}


def show(found: dict) -> None:
    """Print a run's numbers, with the ratios side by side."""
    print(f"model {found['model']}, {os.cpu_count()} CPUs")
    for name, layout in found["layouts"].items():
        print(f"layout {name}: {layout['cpus']}")
        print(f"{'':<22}{'direct gRPC':>12}{'/predict':>10}{'ratio':>8}")
        for level in layout["grpc"]:
            direct, api = layout["grpc"][level], layout["api"][level]
            for column in _COLUMNS[:3]:
                label = f"{column}, {level} client(s)"
                ratio = api[column] / direct[column]
                print(f"{label:<22}{direct[column]:>12.2f}{api[column]:>10.2f}{ratio:>7.2f}x")
    cold = found["cold_start_s"]
    if cold is None:
        return
    print(
        f"cold start: ftserve api {cold['api_to_healthz']:.2f} s to /healthz; import "
        f"tensorflow alone {cold['import_tensorflow']:.2f} s "
        f"(ratio {cold['api_to_healthz'] / cold['import_tensorflow']:.2f}x)"
    )


def measure(quick: bool) -> Measured:
    """P3 and P4 on the default model (goals on the separated layout), and P8.

    P3 and P4 are measured on what a user serves by default: a fine-tune of the default
    base at its default size. The same comparison on a tiny model (small_cnn at 32 px,
    where the model server's own work is least) gives the gateway's cost per request in
    milliseconds, reported with it.
    """
    from service.training.backbones import get_backbone

    saturate = 16
    backbone = get_backbone(DEFAULT_BASE_MODEL)
    default = run(DEFAULT_BASE_MODEL, backbone.default_size, 100 if quick else 300, saturate, 0)
    show(default)
    tiny = run("small_cnn", 32, 200 if quick else 500, saturate, 2 if quick else 3)
    show(tiny)
    name = "separated" if "separated" in default["layouts"] else "shared"
    layout = default["layouts"][name]
    one, many = "1", str(saturate)
    measured = Measured(
        details={
            "default_model": default,
            "tiny_model": tiny,
            "goal_layout": name,
            "gateway_ms_per_request": {
                f"{layout_name}, {path_name}": _gateway_ms(found, path_name)
                for layout_name, found in tiny["layouts"].items()
                for path_name in ("p50_ms", "p99_ms")
            },
        }
    )
    measured.values["p3_predict_p50_ratio"] = (
        layout["api"][one]["p50_ms"] / layout["grpc"][one]["p50_ms"]
    )
    measured.values["p4_predict_throughput_ratio"] = (
        layout["api"][many]["req_per_s"] / layout["grpc"][many]["req_per_s"]
    )
    cold = tiny["cold_start_s"]
    measured.values["p8_api_cold_start_ratio"] = cold["api_to_healthz"] / cold["import_tensorflow"]
    return measured


def _gateway_ms(layout: dict, column: str) -> float:
    """What ``/predict`` adds to a direct call at 1 client, in milliseconds."""
    return round(layout["api"]["1"][column] - layout["grpc"]["1"][column], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base-model", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--requests", type=int, default=500, help="measured per level")
    parser.add_argument("--saturate", type=int, default=16, help="clients when saturating")
    parser.add_argument("--starts", type=int, default=3, help="cold starts to time")
    args = parser.parse_args()
    show(run(args.base_model, args.image_size, args.requests, args.saturate, args.starts))


if __name__ == "__main__":
    main()
