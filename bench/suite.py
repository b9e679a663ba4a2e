"""The benchmarks ``python -m bench`` runs, each in a process of its own.

A separate process per benchmark keeps one benchmark's threads, caches and memory out of
the next one's numbers, and keeps whatever TensorFlow's libraries write to the standard
output away from the JSON object.

    python -m bench.suite NAME RESULT_FILE [--quick]   (runs one; what ``bench`` calls)
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.report import Measured

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bench:
    name: str
    module: str  # exposes ``measure(quick: bool) -> Measured``
    keys: tuple[str, ...]  # the table's keys it reports; none for details only
    in_quick: bool = True  # whether --quick runs it unless --only names it
    needs_bases: bool = False  # whether it trains on the pretrained bases


SUITE = (
    # First, on its own clock: pretraining the bases once (minutes), or finding them cached.
    Bench("bases", "bench.pretrain_base", ()),
    Bench("p1_speed", "bench.training_speed", ("p1_time_to_accuracy_ratio",), needs_bases=True),
    Bench("p1_heads", "bench.head_gap", ("p1_default_head_accuracy_gap",), needs_bases=True),
    Bench("p2", "bench.input_wait", ("p2_input_wait_share",), needs_bases=True),
    Bench(
        "api",
        "bench.api_predict",
        ("p3_predict_p50_ratio", "p4_predict_throughput_ratio", "p8_api_cold_start_ratio"),
    ),
    Bench("p5", "bench.model_server", ("p5_batching_throughput_ratio", "p5_batching_p99_ratio")),
    Bench("export", "bench.export_serving", ("p6_request_size_ratio", "p7_onnx_latency_ratio")),
    Bench("label_moves", "bench.label_moves", (), in_quick=False),
)


def select(only: str | None, quick: bool = False) -> list[Bench]:
    """The benchmarks ``--only`` names: by name, or by a key or its prefix (``p3``).

    Without ``--only``: all of them, or with ``quick`` those that report a table key.

    Raises:
        ValueError: a token matches no benchmark.
    """
    if not only:
        return [b for b in SUITE if b.in_quick or not quick]
    chosen: set[str] = set()
    for token in filter(None, (t.strip() for t in only.split(","))):
        hits = {b.name for b in SUITE if b.name == token or _names_key(b, token)}
        if not hits:
            names = ", ".join(b.name for b in SUITE)
            raise ValueError(f"--only {token!r} matches no benchmark; try p1..p8 or {names}")
        chosen |= hits
    if any(b.needs_bases for b in SUITE if b.name in chosen):
        chosen.add("bases")
    return [b for b in SUITE if b.name in chosen]


def _names_key(bench: Bench, token: str) -> bool:
    return any(key == token or key.startswith(token + "_") for key in bench.keys)


def run(bench: Bench, quick: bool, output: IO[str], timeout: float) -> Measured:
    """Run one benchmark in a child process; its printout goes to ``output``.

    A benchmark that fails, crashes or overruns reports its keys as null with the reason.
    """
    with tempfile.TemporaryDirectory(prefix="ftserve-bench-") as scratch:
        result_file = Path(scratch) / "result.json"
        command = [sys.executable, "-m", "bench.suite", bench.name, str(result_file)]
        command += ["--quick"] if quick else []
        started = time.perf_counter()
        try:
            code = subprocess.run(
                command, cwd=ROOT, stdout=output, stderr=sys.stderr, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            return _failed(bench, f"{bench.name} ran past its {timeout:.0f} s limit")
        seconds = round(time.perf_counter() - started, 1)
        if not result_file.is_file():
            return _failed(bench, f"{bench.name} exited with {code} without a result")
        measured = Measured.from_json(json.loads(result_file.read_text()))
    measured.details["wall_s"] = seconds
    return measured


def _failed(bench: Bench, reason: str) -> Measured:
    measured = Measured()
    for key in bench.keys:
        measured.missing(key, reason)
    measured.details["error"] = reason
    return measured


def _child(name: str, result_file: Path, quick: bool) -> int:
    bench = next(b for b in SUITE if b.name == name)
    try:
        measured = importlib.import_module(bench.module).measure(quick)
        code = 0
    except Exception as exc:  # any failure is reported as a reason, not lost
        traceback.print_exc()
        measured = _failed(bench, f"{bench.name} failed: {type(exc).__name__}: {exc}"[:500])
        code = 1
    result_file.write_text(json.dumps(measured.to_json()))
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description="run one benchmark of the suite")
    parser.add_argument("name", choices=[b.name for b in SUITE])
    parser.add_argument("result_file", type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sys.exit(_child(args.name, args.result_file, args.quick))


if __name__ == "__main__":
    main()
