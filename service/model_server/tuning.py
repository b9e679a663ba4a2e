"""``ftserve tune-batching``: batching parameters from a model's measured latency curve.

Batching pays when a batch of n rows costs less than n single rows. On a GPU it nearly
always does; on a CPU whose cores one row already keeps busy it may not, and then batching
only adds the wait for company. So the tuner measures (``latency``), then decides:

* **off** when no batch of two or more rows, within the p99 bound, answers at least
  ``MIN_GAIN`` times the rows per second of single rows (on the best thread setting for
  either), and says whether the curve itself is flat or the bound cuts it short;
* **on** otherwise, with the batch size and thread setting that answer the most rows per
  second whose p99 fits under the bound, and the rest derived from that point.

The result is TensorFlow Serving's batching parameters file, which ``ftserve model-server``
and TensorFlow Serving both read with ``--batching_parameters_file``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from service.model_server.batching import BatchingOptions
from service.model_server.latency import (
    Candidate,
    CurvePoint,
    Measurement,
    measure,
    usable_cores,
)
from service.model_server.server_config_pb2 import BatchingParameters

# Below this throughput gain a batch is not worth its wait, and the gain is within the noise
# of a shared machine.
MIN_GAIN = 1.1
# Points within this fraction of the best throughput are a tie: the smaller batch wins, as
# it waits less for company and runs shorter.
TIE = 0.03
# Requests may queue for about this long before the server refuses more with UNAVAILABLE,
# which a client or load balancer can retry elsewhere, rather than let them wait past the
# deadlines clients commonly set.
QUEUE_SECONDS = 1.0


@dataclass(frozen=True)
class Decision:
    """Batching on or off, why, and the measured setting that decision rests on."""

    on: bool
    reason: str
    candidate: Candidate  # the setting to run the server with, and its curve
    p99_bound_ms: float
    parameters: dict[str, Any] | None


def decide(candidates: list[Candidate], p99_bound_ms: float) -> Decision:
    """Chooses batching parameters, or no batching, from measured curves.

    Args:
        candidates: One curve per thread setting; each has batch size 1.
        p99_bound_ms: How long a batch may take, waiting for company included.
    """
    single = _best_at(candidates, lambda p: p.batch_size == 1)
    if single is None:
        raise ValueError("every curve must start at batch size 1")
    base, base_point = single
    fits = _best_at(candidates, lambda p: p.batch_size > 1 and p.p99_ms <= p99_bound_ms)
    if fits is None:
        return Decision(False, _none_fit(candidates, p99_bound_ms), base, p99_bound_ms, None)
    chosen, point = fits
    gain = point.items_per_second / base_point.items_per_second
    if gain < MIN_GAIN:
        reason = _small_gain(candidates, p99_bound_ms, (chosen, point), (base, base_point))
        return Decision(False, reason, base, p99_bound_ms, None)
    reason = (
        f"batches of up to {point.batch_size} rows ({chosen.threads.describe()}) answer "
        f"{point.items_per_second:.1f} rows/s against {_unbatched(base, base_point)}: "
        f"{gain:.2f}x; a batch takes p99 {point.p99_ms:.1f} ms, within the "
        f"{p99_bound_ms:.1f} ms bound"
    )
    return Decision(True, reason, chosen, p99_bound_ms, parameters(chosen, point, p99_bound_ms))


def parameters(candidate: Candidate, point: CurvePoint, p99_bound_ms: float) -> dict[str, Any]:
    """TF Serving's batching parameters for batches of ``point``'s size on its setting.

    The timeout is the slack the bound leaves, but no longer than a full load takes to
    bring the rest of a batch (waiting longer gains no rows), nor than one row takes to run
    (a lone request waits at most as long again). Batches are padded to the sizes that
    were measured, so the model only ever sees shapes whose latency is known.
    """
    size = point.batch_size
    slack_ms = p99_bound_ms - point.p99_ms
    fill_ms = (size - 1) / point.items_per_second * 1000
    single = candidate.point(1)
    alone_ms = single.p50_ms if single is not None else fill_ms
    timeout_ms = max(0.0, min(slack_ms, fill_ms, alone_ms))
    timeout_micros = int(timeout_ms * 1000) // 100 * 100
    per_second = point.items_per_second / size
    return {
        "max_batch_size": size,
        "batch_timeout_micros": timeout_micros,
        "num_batch_threads": candidate.threads.parallel,
        "allowed_batch_sizes": [p.batch_size for p in candidate.curve if p.batch_size <= size],
        "pad_variable_length_inputs": False,
        "max_enqueued_batches": max(
            candidate.threads.parallel, math.ceil(QUEUE_SECONDS * per_second)
        ),
    }


def parameters_text(params: dict[str, Any], comments: Sequence[str] = ()) -> str:
    """``params`` as a text-format ``BatchingParameters``, checked by parsing it back."""
    lines = [f"# {comment}" for comment in comments]
    for name, value in params.items():
        if isinstance(value, bool):
            lines.append(f"{name}: {str(value).lower()}")
        elif isinstance(value, list):
            lines += [f"{name}: {item}" for item in value]
        else:
            lines.append(f"{name} {{ value: {value} }}")
    text = "\n".join(lines) + "\n"
    text_format.Parse(text, BatchingParameters())
    return text


def write_parameters(path: Path, text: str) -> None:
    """Writes the file whole or not at all (a server may be reading the old one)."""
    # The server's own checks, so that a file it would refuse is never written.
    BatchingOptions.from_proto(text_format.Parse(text, BatchingParameters()))
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)


def report(decision: Decision, measured: Measurement, file: Path | None) -> dict[str, Any]:
    """The JSON document ``--json`` prints."""
    threads = decision.candidate.threads
    return {
        "decision": "on" if decision.on else "off",
        "reason": decision.reason,
        "parameters": decision.parameters,
        "threads": {
            "tensorflow_intra_op_parallelism": threads.intra_op,
            "tensorflow_inter_op_parallelism": threads.inter_op,
        },
        "curve": [point.as_dict() for point in decision.candidate.curve],
        "file": str(file) if file is not None else None,
        "p99_bound_ms": round(decision.p99_bound_ms, 3),
        "version_dir": measured.version_dir,
        "inputs": measured.inputs,
        "candidates": [
            {
                "tensorflow_intra_op_parallelism": c.threads.intra_op,
                "tensorflow_inter_op_parallelism": c.threads.inter_op,
                "batches_at_once": c.threads.parallel,
                "chosen": c.threads == threads,
                "curve": [point.as_dict() for point in c.curve],
            }
            for c in measured.candidates
        ],
    }


def run_command(args: argparse.Namespace) -> int:
    """The ``ftserve tune-batching`` command: measure, decide, write the file, report."""
    load_before = os.getloadavg()[0]
    measured = measure(
        args.model_dir,
        args.signature,
        args.max_batch_size,
        args.repeats,
        min_seconds=args.min_seconds,
        p99_bound_ms=args.p99_ms,
        image_size=args.image_size,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    decision = decide(measured.candidates, measured.p99_bound_ms)
    file = None
    if decision.parameters is not None:
        comments = [
            f"ftserve tune-batching {measured.version_dir} --signature {args.signature}",
            decision.reason,
            f"run with --tensorflow_intra_op_parallelism={decision.candidate.threads.intra_op}"
            f" --tensorflow_inter_op_parallelism={decision.candidate.threads.inter_op}",
        ]
        file = args.output
        write_parameters(file, parameters_text(decision.parameters, comments))
    document = report(decision, measured, file)
    document["machine"] = {
        "cpus": usable_cores(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(document) if args.json else render(document))
    return 0


def render(document: dict[str, Any]) -> str:
    """The report for people: every curve as a table, then the decision."""
    machine = document["machine"]
    before, after = machine["load_average_before"], machine["load_average_after"]
    lines = [
        f"model: {document['version_dir']}",
        "inputs: " + "; ".join(f"{k}: {v}" for k, v in document["inputs"].items()),
        f"{machine['cpus']} CPUs; 1-min load average {before:.2f} before, {after:.2f} after",
        f"p99 bound per batch: {document['p99_bound_ms']:.1f} ms",
    ]
    if max(before, after) > machine["cpus"]:
        # Other work took CPU in turns with the timing: the curve and the decision are noise.
        lines.append("warning: the machine was busy; measure again when it is quiet")
    chosen = document["threads"]
    for candidate in document["candidates"]:
        mark = "  <- chosen" if candidate["chosen"] else ""
        lines += ["", _heading(candidate) + mark, *_table(candidate["curve"])]
    lines += ["", f"batching {document['decision']}: {document['reason']}"]
    flags = [f"--{key}={value}" for key, value in chosen.items()]
    if document["file"] is not None:
        lines.append(f"wrote {document['file']}")
        flags = ["--enable_batching=true", f"--batching_parameters_file={document['file']}"]
        flags += [f"--{key}={value}" for key, value in chosen.items()]
    lines.append("run the server with: ftserve model-server " + " ".join(flags))
    return "\n".join(lines)


def _heading(candidate: dict[str, Any]) -> str:
    at_once = candidate["batches_at_once"]
    return (
        f"intra-op {candidate['tensorflow_intra_op_parallelism']}, inter-op "
        f"{candidate['tensorflow_inter_op_parallelism']}, {at_once} run(s) at a time"
    )


def _table(curve: list[dict[str, float]]) -> list[str]:
    single = curve[0]["items_per_second"]
    rows = [f"{'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'rows/s':>9} {'vs batch 1':>10}"]
    for p in curve:
        gain = p["items_per_second"] / single
        rows.append(
            f"{p['batch_size']:>5} {p['p50_ms']:>9.1f} {p['p99_ms']:>9.1f} "
            f"{p['items_per_second']:>9.1f} {gain:>9.2f}x"
        )
    return rows


def _best_at(
    candidates: list[Candidate], keep: Callable[[CurvePoint], bool]
) -> tuple[Candidate, CurvePoint] | None:
    """The (candidate, point) answering the most rows/s among points ``keep`` accepts.

    Ties (within ``TIE``) go to the smaller batch.
    """
    found = [(c, p) for c in candidates for p in c.curve if keep(p)]
    if not found:
        return None
    best = max(p.items_per_second for _, p in found)
    close = [(c, p) for c, p in found if p.items_per_second >= best * (1 - TIE)]
    return min(close, key=lambda pair: (pair[1].batch_size, -pair[1].items_per_second))


def _none_fit(candidates: list[Candidate], bound: float) -> str:
    twos = [p.p99_ms for c in candidates if (p := c.point(2)) is not None]
    if not twos:
        return "no batch larger than 1 row was measured"
    return (
        f"even a batch of 2 rows takes p99 {min(twos):.1f} ms here, over the {bound:.1f} ms bound"
    )


def _unbatched(candidate: Candidate, point: CurvePoint) -> str:
    return f"{point.items_per_second:.1f} rows/s unbatched ({candidate.threads.describe()})"


def _small_gain(
    candidates: list[Candidate],
    bound: float,
    best: tuple[Candidate, CurvePoint],
    unbatched: tuple[Candidate, CurvePoint],
) -> str:
    chosen, point = best
    base_setting, base = unbatched
    gain = point.items_per_second / base.items_per_second
    text = (
        f"the best batch within the {bound:.1f} ms p99 bound, {point.batch_size} rows "
        f"({chosen.threads.describe()}), answers {point.items_per_second:.1f} rows/s against "
        f"{_unbatched(base_setting, base)}: {gain:.2f}x, under the {MIN_GAIN:.1f}x a batch's "
        "wait must buy"
    )
    larger = _best_at(candidates, lambda p: p.batch_size > 1)
    assert larger is not None  # the point that fits the bound is one
    top = larger[1]
    top_gain = top.items_per_second / base.items_per_second
    if top_gain >= MIN_GAIN:
        return text + (
            f"; larger batches would gain {top_gain:.2f}x (batch {top.batch_size}) but take "
            f"p99 {top.p99_ms:.1f} ms, past the bound"
        )
    per_row = 1000 / base.items_per_second
    top_row = 1000 / top.items_per_second
    return text + (
        f"; the cost per row hardly falls with batch size on this machine ({per_row:.1f} ms "
        f"at batch 1, {top_row:.1f} ms at batch {top.batch_size})"
    )
