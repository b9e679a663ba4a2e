"""``POST /predict`` through the API versus a direct gRPC Predict, and the API's cold start.

1. The same model (a bare SavedModel, random weights) and the same JPEG, served by one
   ``ftserve model-server``. Each request is one image: through the API (JSON with a
   base64 instance; the API forwards the bytes over its long-lived gRPC channel) and
   straight to the model server with the official ``tensorflow_serving.apis`` stubs.
   p50/p99 at concurrency 1, and saturated throughput at ``--saturate`` concurrent
   clients; the two paths take turns level by level.
2. Cold start: spawn to the first ``200`` from ``/healthz`` for ``ftserve api``, against
   ``python -c "import tensorflow"`` alone (what any process that imports TensorFlow pays
   before doing anything), the median of ``--starts`` runs each.

    python -m bench.api_predict [--base-model small_cnn --image-size 32] [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
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

Call = Callable[[], Awaitable[object]]


def summary(wall: float, latencies: list[float]) -> tuple[float, float, float]:
    latencies.sort()
    p99 = latencies[round(0.99 * (len(latencies) - 1))]
    return len(latencies) / wall, statistics.median(latencies), p99


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
    request.model_spec.name = MODEL
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
    body = {"model": MODEL, "instances": [{"b64": base64.b64encode(image).decode()}]}
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    limits = httpx.Limits(max_connections=saturate, max_keepalive_connections=saturate)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", limits=limits, timeout=60)

    async def direct() -> object:
        return await stub.Predict(request, timeout=60)

    async def through_api() -> object:
        response = await http.post("/predict", json=body)
        response.raise_for_status()
        return response

    results: dict[str, dict[int, tuple[float, float, float]]] = {"grpc": {}, "api": {}}
    for concurrency in (1, saturate):
        for name, call in (("grpc", direct), ("api", through_api)):
            await drive(call, concurrency, max(20, requests // 10))  # warm up
            wall, latencies, _ = await drive(call, concurrency, requests)
            results[name][concurrency] = summary(wall, latencies)
    await http.aclose()
    await channel.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--requests", type=int, default=500, help="measured per level")
    parser.add_argument("--saturate", type=int, default=16, help="clients when saturating")
    parser.add_argument("--starts", type=int, default=3, help="cold starts to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftserve-bench-api-") as scratch:
        root = Path(scratch)
        export(args.base_model, args.image_size, root / "models" / MODEL)
        server = Server(
            [f"--model_name={MODEL}", f"--model_base_path={root / 'models' / MODEL}"],
            root / "model-server.log",
        )
        server.wait_available()
        env = {
            **os.environ,
            "FTSERVE_MODEL_SERVER": f"127.0.0.1:{server.port}",
            "FTSERVE_DATA_ROOT": str(root / "data"),
            "FTSERVE_MODEL_REPO": str(root / "models"),
        }
        starts = []
        for _ in range(args.starts):
            api, api_port, seconds = start_api(env, root / "api.log")
            starts.append(seconds)
            api.terminate()
            api.wait(60)
        imports = [import_tensorflow_seconds() for _ in range(args.starts)]
        api, api_port, _ = start_api(env, root / "api.log")
        try:
            image = photo_like_jpeg(args.image_size)
            results = asyncio.run(
                compare(server.port, api_port, image, args.requests, args.saturate)
            )
        finally:
            api.terminate()
            api.wait(60)
            server.stop()
    report(args, results, statistics.median(starts), statistics.median(imports))


def report(args, results, api_start: float, tf_import: float) -> None:
    print(
        f"model {args.base_model} at {args.image_size}px, 1 image a request, {os.cpu_count()} CPUs"
    )
    print(f"{'':<22}{'direct gRPC':>12}{'/predict':>10}{'ratio':>8}")
    for concurrency in (1, args.saturate):
        grpc_row, api_row = results["grpc"][concurrency], results["api"][concurrency]
        for index, label in enumerate(("req/s", "p50 ms", "p99 ms")):
            direct, api = grpc_row[index], api_row[index]
            name = f"{label}, {concurrency} client(s)"
            print(f"{name:<22}{direct:>12.2f}{api:>10.2f}{api / direct:>7.2f}x")
    print(
        f"cold start: ftserve api {api_start:.2f} s to /healthz; import tensorflow alone"
        f" {tf_import:.2f} s ({tf_import / api_start:.1f}x longer)"
    )


if __name__ == "__main__":
    main()
