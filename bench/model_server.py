"""gRPC Predict on ``ftserve model-server``: server-side batching off vs on, side by side.

One SavedModel (random weights, 5 classes) and one JPEG; every request is a batch-1
``serving_default`` Predict through the official ``tensorflow_serving.apis`` stubs. Two
servers run at once as subprocesses on free loopback ports, one without and one with
``--enable_batching``. The batching parameters are the file ``ftserve tune-batching``
writes when it decides batching pays; when it decides not (or cannot run), the fixed
``untuned_parameters()`` are used and the tuner's reason is reported. Both servers get the
tuner's TensorFlow thread setting, so batching is the only difference. At each level of
client concurrency both get a warmup phase, then they take turns, ``--rounds`` rounds of
``--requests / --rounds`` measured requests each, so that load drifting on the machine hits
both alike (each round ramps up and drains, which costs a little throughput). Reported:
throughput (requests over the summed wall time of the rounds), p50/p99 latency as the
client sees it, and the batched server's mean batch size over the measured requests, from
its Prometheus histogram ``:tensorflow:serving:batching:processed_batch_size``
(``_sum`` / ``_count``).

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
import json
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
from bench.report import Measured
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


def measure_levels(servers: dict[str, Server], request, levels: list[int], args) -> dict:
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


def untuned_parameters() -> dict[str, int]:
    """The fixed parameters the benchmark used before a tuner existed."""
    return {
        "max_batch_size": 32,
        "batch_timeout_micros": 2000,
        "max_enqueued_batches": 1000,
        "num_batch_threads": len(os.sched_getaffinity(0)),
    }


def tune(model_dir: Path, output: Path, log: Path, flags: list[str]) -> dict:
    """``ftserve tune-batching MODEL_DIR --json``: its JSON document, or why there is none."""
    command = [sys.executable, "-m", "service.cli", "tune-batching", str(model_dir)]
    command += ["--output", str(output), "--json", *flags]
    with open(log, "wb") as err:
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        return {"error": f"tune-batching exited with {done.returncode}: {' '.join(tail)}"}
    return json.loads(done.stdout)


def batching_setup(
    root: Path, model_dir: Path, clients: int, quick: bool
) -> tuple[list[str], list[str], dict]:
    """Flags for both servers and for the batched one, from the tuner when it decides "on".

    Both servers get the tuner's thread setting, so batching is the only difference. No
    batch can hold more requests than there are clients, so none larger is timed.
    """
    flags = [f"--max-batch-size={clients}"] + (["--min-seconds=0.5"] if quick else [])
    tuned = tune(model_dir, root / "tuned_batching.config", root / "tune.log", flags)
    common: list[str] = []
    if "threads" in tuned:
        common = [f"--{name}={value}" for name, value in tuned["threads"].items()]
    if tuned.get("decision") == "on" and tuned.get("file"):
        return common, _batching_flags(Path(tuned["file"])), {"tuned": True, "tuner": tuned}
    why = tuned.get("error") or f"the tuner decided off: {tuned.get('reason')}"
    path = root / "batching.config"
    path.write_text(
        "".join(f"{name} {{ value: {value} }}\n" for name, value in untuned_parameters().items())
    )
    details = {"tuned": False, "untuned_because": why, "tuner": tuned}
    return common, _batching_flags(path), {**details, "parameters": untuned_parameters()}


def _batching_flags(path: Path) -> list[str]:
    return ["--enable_batching=true", f"--batching_parameters_file={path}"]


def run(
    base_model: str, size: int, levels: list[int], requests: int, rounds: int, quick: bool
) -> dict:
    """Export, tune, then measure both servers at every level; numbers by server and level."""
    jpeg = photo_like_jpeg(size)
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([jpeg], dtype=tf.string))
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export(base_model, size, root / "model")
        common, batching, setup = batching_setup(root, root / "model", max(levels), quick)
        (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
        common += [f"--model_name={MODEL}", f"--model_base_path={root / 'model'}"]
        common += [f"--monitoring_config_file={root / 'monitoring.config'}"]
        servers = {}
        try:
            for name, flags in (("off", []), ("on", batching)):
                servers[name] = Server(common + flags, root / f"server-{name}.log")
            for server in servers.values():
                server.wait_available()
            args = argparse.Namespace(requests=requests, rounds=rounds)
            results = measure_levels(servers, request, levels, args)
            batches, rows = servers["on"].batches()
        finally:
            for server in servers.values():
                if server.process.poll() is None:
                    server.stop()
    return {
        "model": f"{base_model} at {size}px, {len(CLASSES)} classes",
        "jpeg_bytes": len(jpeg),
        "requests_per_level": requests,
        "rounds": rounds,
        "load_at_start": load,
        "batching": setup,
        "mean_batch_size_all_levels": rows / batches if batches else None,
        "levels": {
            str(level): {
                name: dict(zip(_COLUMNS, results[name][level], strict=True)) for name in results
            }
            for level in levels
        },
    }


_COLUMNS = ("req_per_s", "p50_ms", "p99_ms", "mean_batch", "client_cores")


def show(found: dict) -> None:
    """Print a run's numbers, with the ratios side by side."""
    setup = found["batching"]
    print(
        f"model: {found['model']}; serving_default, one {found['jpeg_bytes']:,} B JPEG per "
        f"request; {found['requests_per_level']} measured requests per level in "
        f"{found['rounds']} rounds; CPUs {len(os.sched_getaffinity(0))}; 1-min load average "
        f"at start {found['load_at_start']:.2f}"
    )
    if setup["tuned"]:
        print(f"batching on: the tuner's file ({setup['tuner']['reason']})")
    else:
        print(f"batching on: untuned {setup['parameters']} ({setup['untuned_because']})")
    print(
        f"{'conc':>4} | {'req/s off':>10} {'on':>7} {'on/off':>6} | {'p50 ms off':>10} {'on':>7} "
        f"{'on/off':>6} | {'p99 ms off':>10} {'on':>7} {'on/off':>6} | batch | client cores"
    )
    for level, row in found["levels"].items():
        off, on = row["off"], row["on"]
        cells = [f"{off[c]:10.1f} {on[c]:7.1f} {on[c] / off[c]:5.2f}x" for c in _COLUMNS[:3]]
        print(
            f"{level:>4} | "
            + " | ".join(cells)
            + f" | {on['mean_batch']:5.2f} | {off['client_cores']:.2f}/{on['client_cores']:.2f}"
        )


def measure(quick: bool) -> Measured:
    """P5: MobileNetV2 at 224 px, batching on vs off at 32 clients."""
    levels = [32] if quick else [1, 8, 32]
    found = run("mobilenet_v2", 224, levels, 300 if quick else 1000, 2, quick)
    show(found)
    at_32 = found["levels"]["32"]
    off, on = at_32["off"], at_32["on"]
    measured = Measured(details=found)
    measured.values["p5_batching_throughput_ratio"] = on["req_per_s"] / off["req_per_s"]
    measured.values["p5_batching_p99_ratio"] = on["p99_ms"] / off["p99_ms"]
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base-model", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=1000, help="measured per level")
    parser.add_argument("--rounds", type=int, default=2, help="turns per server and level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--quick", action="store_true", help="a shorter tuning run")
    args = parser.parse_args()
    show(
        run(
            args.base_model,
            args.image_size,
            args.concurrency,
            args.requests,
            args.rounds,
            args.quick,
        )
    )


if __name__ == "__main__":
    main()
