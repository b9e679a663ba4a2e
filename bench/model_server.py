"""gRPC Predict on ``ftserve model-server``: server-side batching off vs on, side by side.

One SavedModel (random weights, 5 classes) and one JPEG; every request is a batch-1
``serving_default`` Predict through the official ``tensorflow_serving.apis`` stubs. Two
servers are started one after the other as subprocesses on free loopback ports, one without
and one with ``--enable_batching``; each level of client concurrency gets a warmup phase and
then ``--requests`` measured requests. Reported: throughput (requests/s over the measured
wall time), p50/p99 latency per request as the client sees it, and the batched server's mean
batch size over the measured requests (from its Prometheus histogram
``:tensorflow:serving:batching:processed_batch_size``).

The client is one grpc.aio channel with ``concurrency`` coroutines, each sending its next
request as soon as the previous one is answered. It must not be the bottleneck: the "client
CPU" column is the client process's CPU time (all threads, gRPC's included) over the measured
wall time, in cores. At concurrency 32 it stays far below one core while the server saturates
the machine, so the client is not what limits throughput; with the small_cnn model the same
client pushes several times the requests/s it reaches against mobilenet_v2. On a machine with
few cores the client still takes that CPU away from the server, equally for both servers.

    python -m bench.model_server [--base-model small_cnn --image-size 32] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
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
from service.training.backbones import ResolvedWeights, build_base, get_backbone
from service.training.model import build_classifier
from service.training.options import TrainConfig

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
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
            )

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
        totals = {"_count": 0.0, "_sum": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                suffix = sample.name.removeprefix(BATCH_SIZE)
                if suffix in totals:
                    totals[suffix] += sample.value
        return totals["_count"], totals["_sum"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.fail("did not stop within 60 s of SIGTERM")
        if code != 0:
            self.fail(f"exited with {code} after SIGTERM")


async def drive(stub, request, concurrency: int, count: int) -> tuple[float, list[float], float]:
    """``count`` Predicts from ``concurrency`` workers: (wall s, latencies ms, client cores)."""
    remaining = count
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await stub.Predict(request, timeout=120)
            latencies.append((time.perf_counter() - started) * 1000)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    return wall, latencies, cpu / wall


def measure(server: Server, request, levels: list[int], requests: int, batching: bool) -> dict:
    """Per concurrency level: (req/s, p50 ms, p99 ms, mean batch size, client cores)."""

    async def run_levels() -> dict:
        results = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for concurrency in levels:
                await drive(stub, request, concurrency, max(4 * concurrency, requests // 10))
                before = server.batches() if batching else (0.0, 0.0)
                wall, latencies, cores = await drive(stub, request, concurrency, requests)
                after = server.batches() if batching else (0.0, 0.0)
                batches, rows = after[0] - before[0], after[1] - before[1]
                latencies.sort()
                results[concurrency] = (
                    requests / wall,
                    statistics.median(latencies),
                    latencies[round(0.99 * (len(latencies) - 1))],
                    rows / batches if batches else float("nan"),
                    cores,
                )
        return results

    return asyncio.run(run_levels())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=300, help="measured per level")
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

    results: dict[str, dict] = {}
    totals = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export(args.base_model, args.image_size, root / "model")
        (root / "batching.config").write_text(
            "".join(f"{name} {{ value: {value} }}\n" for name, value in params.items())
        )
        (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
        common = [
            f"--model_name={MODEL}",
            f"--model_base_path={root / 'model'}",
            f"--monitoring_config_file={root / 'monitoring.config'}",
            "--enable_grpc_healthcheck_service=true",
        ]
        batching_flags = [
            "--enable_batching=true",
            f"--batching_parameters_file={root / 'batching.config'}",
        ]
        for name, flags in (("off", []), ("on", batching_flags)):
            server = Server(common + flags, root / f"server-{name}.log")
            try:
                server.wait_available()
                results[name] = measure(
                    server, request, args.concurrency, args.requests, name == "on"
                )
                totals = server.batches() if name == "on" else None
            finally:
                if server.process.poll() is None:
                    server.stop()

    print(
        f"model: {args.base_model} at {args.image_size}px, {len(CLASSES)} classes; "
        f"serving_default, one {len(jpeg):,} B JPEG per request; {args.requests} measured "
        f"requests per level; CPUs {len(os.sched_getaffinity(0))}"
    )
    print("batching on: " + ", ".join(f"{k} {v}" for k, v in params.items()))
    if totals is not None and totals[0]:
        print(
            f"batched server processed {totals[0]:.0f} batches, {totals[1]:.0f} rows "
            f"(warmups included): mean batch size {totals[1] / totals[0]:.2f}"
        )
    print(
        f"{'conc':>4} | {'req/s off':>9} {'on':>7} {'on/off':>6} | {'p50 ms off':>10} {'on':>7} "
        f"{'on/off':>6} | {'p99 ms off':>10} {'on':>7} {'on/off':>6} | {'batch':>5} | "
        f"client CPU off/on"
    )
    for level in args.concurrency:
        off, on = results["off"][level], results["on"][level]
        cells = [
            f"{off[i]:{w}.{d}f} {on[i]:7.{d}f} {on[i] / off[i]:5.2f}x"
            for i, w, d in ((0, 9, 1), (1, 10, 1), (2, 10, 1))
        ]
        print(f"{level:>4} | " + " | ".join(cells) + f" | {on[3]:5.2f} | {off[4]:.2f}/{on[4]:.2f}")


if __name__ == "__main__":
    main()
