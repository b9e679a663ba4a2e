"""gRPC Predict on ``ftserve model-server``: server-side batching off vs on, side by side.

One SavedModel (random weights, 5 classes) and one JPEG; every request is a batch-1
``serving_default`` Predict through the official ``tensorflow_serving.apis`` stubs. Two
servers run at once as subprocesses on free loopback ports, one without and one with
``--enable_batching``. At each level of client concurrency both get a warmup phase, then
they take turns, ``--rounds`` rounds of ``--requests / --rounds`` measured requests each, so
that load drifting on the machine hits both alike (each round ramps up and drains, which
costs a little throughput). Reported: throughput (requests over the summed wall time of
the rounds), p50/p99 latency as the client sees it,
and the batched server's mean batch size over the measured requests, from its Prometheus
histogram ``:tensorflow:serving:batching:processed_batch_size`` (``_sum`` / ``_count``).

The client is one grpc.aio channel per server with ``concurrency`` coroutines, each sending
its next request as soon as the previous one is answered. It is not the bottleneck: the
"client cores" column is this process's CPU time (all threads, gRPC's included) over the
measured wall time. At concurrency 32 it is about 0.05 cores against mobilenet_v2, and 0.2
cores at ~630 requests/s against small_cnn at 32 px (~0.3 ms of client CPU per request), far
below the one core a Python client can use, so the client could send far more than either
server answers. On a machine with few cores it still takes that CPU from the server, alike
for both. The load average at the start is printed: other work on the machine adds noise.

    python -m bench.model_server [--base-model small_cnn --image-size 32] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from bench.export_serving import CLASSES, photo_like_jpeg
from exporter.signatures import save_saved_model
from service.contract.train_config import TrainConfig
from service.training.backbones import ResolvedWeights, build_base, get_backbone
from service.training.model import build_classifier

MODEL = "bench"
BATCH_SIZE = ":tensorflow:serving:batching:processed_batch_size"
METRICS_PATH = "/monitoring/prometheus/metrics"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def export(base_model: str, size: int, base_path: Path) -> None:
    """A bare SavedModel in ``base_path/1`` (no warmup records, no training)."""
    backbone = get_backbone(base_model)
    config = TrainConfig(model_name=MODEL, base_model=base_model, weights="none")
    base = build_base(backbone, size, ResolvedWeights("none"))
    model = build_classifier(backbone, base, len(CLASSES), size, config).model
    save_saved_model(model, CLASSES, size, base_path / "1")


class Server:
    """``ftserve model-server`` as a subprocess, with its log in ``log_path``."""

    def __init__(self, flags: list[str], log_path: Path) -> None:
        self.port, self.rest_port = free_port(), free_port()
        command = [sys.executable, "-m", "service.cli", "model-server", *flags]
        command += [f"--port={self.port}", f"--rest_api_port={self.rest_port}", "--host=127.0.0.1"]
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def fail(self, why: str) -> None:
        self.process.kill()
        log = self.log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"model server {why}:\n{log}")

    def wait_available(self, timeout: float = 180.0) -> None:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = MODEL
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self.fail(f"exited with {self.process.returncode}")
                try:
                    states = stub.GetModelStatus(request, timeout=5).model_version_status
                    if any(s.version == 1 and s.state == AVAILABLE for s in states):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        self.fail("did not make version 1 AVAILABLE in time")

    def batches(self) -> tuple[float, float]:
        """(batches, rows) processed so far, from the Prometheus histogram."""
        url = f"http://127.0.0.1:{self.rest_port}{METRICS_PATH}"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        count = sum(s.value for s in samples if s.name == f"{BATCH_SIZE}_count")
        return count, sum(s.value for s in samples if s.name == f"{BATCH_SIZE}_sum")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.fail("did not stop within 60 s of SIGTERM")
        if code != 0:
            self.fail(f"exited with {code} after SIGTERM")


async def drive(
    call: Callable[[], Awaitable[object]], concurrency: int, count: int
) -> tuple[float, list[float], float]:
    """``count`` calls from ``concurrency`` workers: (wall s, latencies ms, client CPU s)."""
    remaining = count
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, time.process_time() - cpu


def predict_call(stub, request) -> Callable[[], Awaitable[object]]:
    return lambda: stub.Predict(request, timeout=120)


def measure(servers: dict[str, Server], request, levels: list[int], args) -> dict:
    """Per server and level: (req/s, p50 ms, p99 ms, mean batch size, client cores)."""

    async def run_levels() -> dict:
        results: dict[str, dict] = {name: {} for name in servers}
        channels = {n: grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for n, s in servers.items()}
        stubs = {
            n: prediction_service_pb2_grpc.PredictionServiceStub(c) for n, c in channels.items()
        }
        for level in levels:
            times: dict[str, list[float]] = {name: [] for name in servers}
            sums = {name: np.zeros(4) for name in servers}  # wall s, client CPU s, batches, rows
            for name in servers:
                await drive(
                    predict_call(stubs[name], request), level, max(4 * level, args.requests // 10)
                )
            for _, (name, server) in itertools.product(range(args.rounds), servers.items()):
                before = server.batches()
                count = args.requests // args.rounds
                wall, latencies, cpu = await drive(predict_call(stubs[name], request), level, count)
                after = server.batches()
                times[name] += latencies
                sums[name] += (wall, cpu, after[0] - before[0], after[1] - before[1])
            for name, (wall, cpu, batches, rows) in sums.items():
                latencies = sorted(times[name])
                results[name][level] = (
                    len(latencies) / wall,
                    statistics.median(latencies),
                    latencies[round(0.99 * (len(latencies) - 1))],
                    rows / batches if batches else float("nan"),
                    cpu / wall,
                )
        for channel in channels.values():
            await channel.close()
        return results

    return asyncio.run(run_levels())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=1000, help="measured per level")
    parser.add_argument("--rounds", type=int, default=2, help="turns per server and level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-micros", type=int, default=2000)
    parser.add_argument("--num-batch-threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    params = {
        "max_batch_size": args.max_batch_size,
        "batch_timeout_micros": args.batch_timeout_micros,
        "max_enqueued_batches": 1000,
        "num_batch_threads": args.num_batch_threads,
    }
    jpeg = photo_like_jpeg(args.image_size)
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([jpeg], dtype=tf.string))

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export(args.base_model, args.image_size, root / "model")
        (root / "batching.config").write_text(
            "".join(f"{name} {{ value: {value} }}\n" for name, value in params.items())
        )
        (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
        common = [f"--model_name={MODEL}", f"--model_base_path={root / 'model'}"]
        common += [f"--monitoring_config_file={root / 'monitoring.config'}"]
        batching = [
            "--enable_batching=true",
            f"--batching_parameters_file={root / 'batching.config'}",
        ]
        servers = {}
        try:
            for name, flags in (("off", []), ("on", batching)):
                servers[name] = Server(common + flags, root / f"server-{name}.log")
            for server in servers.values():
                server.wait_available()
            results = measure(servers, request, args.concurrency, args)
            batches, rows = servers["on"].batches()
        finally:
            for server in servers.values():
                if server.process.poll() is None:
                    server.stop()

    print(
        f"model: {args.base_model} at {args.image_size}px, {len(CLASSES)} classes; "
        f"serving_default, one {len(jpeg):,} B JPEG per request; {args.requests} measured "
        f"requests per level in {args.rounds} rounds, after max(4 x concurrency, requests/10) "
        f"warmup; CPUs {len(os.sched_getaffinity(0))}; 1-min load average at start {load:.2f}"
    )
    print("batching on: " + ", ".join(f"{k} {v}" for k, v in params.items()))
    print(
        f"batched server processed {batches:.0f} batches, {rows:.0f} rows (all levels, warmups "
        f"included): mean batch size {rows / batches:.2f}; both servers exited 0 on SIGTERM"
    )
    print(
        f"{'conc':>4} | {'req/s off':>10} {'on':>7} {'on/off':>6} | {'p50 ms off':>10} {'on':>7} "
        f"{'on/off':>6} | {'p99 ms off':>10} {'on':>7} {'on/off':>6} | batch | client cores off/on"
    )
    for level in args.concurrency:
        off, on = results["off"][level], results["on"][level]
        cells = [f"{off[i]:10.1f} {on[i]:7.1f} {on[i] / off[i]:5.2f}x" for i in range(3)]
        print(f"{level:>4} | " + " | ".join(cells) + f" | {on[3]:5.2f} | {off[4]:.2f}/{on[4]:.2f}")


if __name__ == "__main__":
    main()
