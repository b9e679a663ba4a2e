"""What a label move costs: the time a promote takes, and /predict latency while labels move.

One ``ftserve model-server`` watches a repository of two versions of one bare SavedModel
(``models.config`` polled every ``--poll`` seconds, as ``ftserve serve`` does with 2 s) and
one ``ftserve api`` in front of it. Side by side in one run:

1. ``PUT /models/bench/labels/stable`` to a version that is already loaded (it carries
   ``canary``) against one that is not served (it must be added, loaded, then labelled);
   the median of ``--moves`` moves each, alternating.
2. ``/predict`` to the default label: p50/p99 with no move going on, and while ``stable``
   moves back and forth (every answer also checked to come from a version ``stable``
   pointed at).

    python -m bench.label_moves [--moves 4] [--requests 400] [--poll 2]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx

from bench.export_serving import photo_like_jpeg
from bench.model_server import MODEL, ROOT, Server, export, free_port
from bench.report import Measured
from service.contract.repository import ModelRepository


def repository(root: Path, base_model: str, size: int) -> ModelRepository:
    """Versions 1, 2 and 3 of one exported model; 1 is stable, 2 canary, 3 not served."""
    export(base_model, size, root / "export")
    repo = ModelRepository(root / "models")
    for _ in range(3):
        with repo.staging(MODEL) as staging:
            shutil.copytree(root / "export" / "1", staging, dirs_exist_ok=True)
            repo.publish(MODEL, staging)
    repo.update_state(MODEL, lambda state: state.set_label("stable", 1))
    repo.update_state(MODEL, lambda state: state.set_label("canary", 2))
    return repo


def start_api(repo: ModelRepository, server: Server, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "FTSERVE_MODEL_REPO": str(repo.root),
        "FTSERVE_DATA_ROOT": str(repo.root.parent / "data"),
        "FTSERVE_MODEL_SERVER": f"127.0.0.1:{server.port}",
    }
    command = [sys.executable, "-m", "service.cli", "api", "--port", str(port)]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the API did not become ready:\n{log.read_text()[-3000:]}")


def move(http: httpx.Client, version: int) -> float:
    started = time.perf_counter()
    response = http.put(f"/models/{MODEL}/labels/stable", json={"version": version})
    if response.status_code != 200:
        raise SystemExit(f"label move failed: {response.text}")
    return time.perf_counter() - started


def promote_times(http: httpx.Client, moves: int) -> tuple[list[float], list[float]]:
    """Seconds per move onto a loaded version, and onto one that must be loaded first."""
    loaded, unloaded = [], []
    for _ in range(moves):
        loaded.append(move(http, 2))  # 2 carries canary, so it is loaded already
        move(http, 1)  # back (1 lost its label on the way, so it loads again)
        http.delete(f"/models/{MODEL}/labels/canary")  # 2 is no longer served
        unloaded.append(move(http, 3))  # 3 must be added, loaded, then labelled
        move(http, 1)
        http.put(f"/models/{MODEL}/labels/canary", json={"version": 2})
    return loaded, unloaded


def predict_latencies(url: str, image: bytes, requests: int, mover=None) -> list[float]:
    body = {"model": MODEL, "instances": [{"b64": base64.b64encode(image).decode()}]}
    latencies: list[float] = []
    stop = threading.Event()
    if mover is not None:
        thread = threading.Thread(target=mover, args=(stop,), daemon=True)
        thread.start()
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(requests):
            started = time.perf_counter()
            response = http.post("/predict", json=body)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise SystemExit(f"/predict failed during the run: {response.text}")
    stop.set()
    return latencies


def p50_p99(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return statistics.median(ordered), ordered[round(0.99 * (len(ordered) - 1))]


def run(base_model: str, image_size: int, moves: int, requests: int, poll: int) -> dict:
    """Move labels and time them, then time /predict without and with moves going on."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        repo = repository(root, base_model, image_size)
        flags = [
            f"--model_config_file={repo.config_path}",
            f"--model_config_file_poll_wait_seconds={poll}",
            "--file_system_poll_wait_seconds=1",
            "--allow_version_labels_for_unavailable_models=true",
        ]
        server = Server(flags, root / "server.log")
        api = None
        try:
            server.wait_available()
            api, url = start_api(repo, server, root / "api.log")
            with httpx.Client(base_url=url, timeout=600) as http:
                loaded, unloaded = promote_times(http, moves)
            image = photo_like_jpeg(image_size)

            def mover(stop: threading.Event) -> None:
                with httpx.Client(base_url=url, timeout=600) as moving:
                    target = 2
                    while not stop.is_set():
                        move(moving, target)
                        target = 1 if target == 2 else 2

            quiet = predict_latencies(url, image, requests)
            busy = predict_latencies(url, image, requests, mover)
        finally:
            if api is not None:
                api.terminate()
                api.wait(60)
            server.stop()
    q50, q99 = p50_p99(quiet)
    m50, m99 = p50_p99(busy)
    return {
        "model": f"{base_model} at {image_size} px",
        "config_poll_s": poll,
        "move_onto_loaded_s": statistics.median(loaded),
        "move_onto_unserved_s": statistics.median(unloaded),
        "predict_ms_no_move": {"p50": q50 * 1e3, "p99": q99 * 1e3},
        "predict_ms_while_moving": {"p50": m50 * 1e3, "p99": m99 * 1e3},
        "requests": requests,
        "moves": moves,
    }


def show(found: dict) -> None:
    """Print a run's numbers, with the ratios side by side."""
    fast, slow = found["move_onto_loaded_s"], found["move_onto_unserved_s"]
    quiet, busy = found["predict_ms_no_move"], found["predict_ms_while_moving"]
    print(f"label moves ({found['model']}, config poll {found['config_poll_s']} s)")
    print(f"  onto a loaded version      median {fast:6.2f} s")
    print(f"  onto an unserved version   median {slow:6.2f} s   ({slow / fast:.2f}x)")
    print(f"/predict to stable, {found['requests']} requests, one client")
    print(f"  no move                    p50 {quiet['p50']:6.1f} ms  p99 {quiet['p99']:6.1f} ms")
    print(
        f"  stable moving 1<->2        p50 {busy['p50']:6.1f} ms  p99 {busy['p99']:6.1f} ms"
        f"   ({busy['p50'] / quiet['p50']:.2f}x, {busy['p99'] / quiet['p99']:.2f}x)"
    )


def measure(quick: bool) -> Measured:
    """The suite's entry: details only (no measure of the table comes from here)."""
    found = run("small_cnn", 32, moves=2 if quick else 4, requests=150 if quick else 400, poll=2)
    show(found)
    return Measured(details=found)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base-model", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--moves", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--poll", type=int, default=2, help="models.config poll, seconds")
    args = parser.parse_args()
    show(run(args.base_model, args.image_size, args.moves, args.requests, args.poll))


if __name__ == "__main__":
    main()
