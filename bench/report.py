"""The ratios the benchmarks report: their keys, goals, the JSON object and its tables.

Nothing here imports TensorFlow: the report of a saved run renders anywhere.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    goal: str
    # The value meets the goal when ``op`` holds against ``bound``.
    op: str
    bound: float
    unit: str  # "x" ratio, "%" share, "pts" accuracy points

    def meets(self, value: float) -> bool:
        """Whether ``value`` reaches this measure's goal."""
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def show(self, value: float | None) -> str:
        """The value as the tables print it."""
        if value is None or not math.isfinite(value):
            return "n/a"
        if self.unit == "%":
            return f"{100 * value:.1f}%"
        if self.unit == "pts":
            return f"{value:+.1f} pts"
        return f"{value:.2f}x"


MEASURES = (
    Measure(
        "p1_time_to_accuracy_ratio",
        "P1 time to the same validation accuracy, default recipe vs classic "
        "(flatten + Dense 512 over raw images every epoch), same real-sized base",
        "≥ 8×",
        ">=",
        8.0,
        "x",
    ),
    Measure(
        "p1_default_head_accuracy_gap",
        "P1 default head: accuracy vs the best head on the same cached features "
        "(worse of digits and shapes; positive = default worse)",
        "≤ 1 point",
        "<=",
        1.0,
        "pts",
    ),
    Measure(
        "p2_input_wait_share", "P2 input wait share of a training step", "< 5%", "<=", 0.05, "%"
    ),
    Measure(
        "p3_predict_p50_ratio",
        "P3 `/predict` p50 vs a direct gRPC Predict, 1 client, default model (API and "
        "model server on separate cores)",
        "≤ 1.15×",
        "<=",
        1.15,
        "x",
    ),
    Measure(
        "p4_predict_throughput_ratio",
        "P4 `/predict` saturated throughput vs direct, 16 clients, default model (separate cores)",
        "≥ 0.8×",
        ">=",
        0.8,
        "x",
    ),
    Measure(
        "p5_batching_throughput_ratio",
        "P5 model server batching on vs off, MobileNetV2 224, 32 clients: throughput",
        "≥ 1.5×",
        ">=",
        1.5,
        "x",
    ),
    Measure("p5_batching_p99_ratio", "P5 batching on vs off: p99 latency", "≤ 2×", "<=", 2.0, "x"),
    Measure(
        "p6_request_size_ratio",
        "P6 float32 tensor request vs JPEG request, bytes",
        "≥ 10×",
        ">=",
        10.0,
        "x",
    ),
    Measure(
        "p7_onnx_latency_ratio",
        "P7 onnxruntime vs SavedModel, batch 1, p50",
        "≤ 1.0×",
        "<=",
        1.0,
        "x",
    ),
    Measure(
        "p8_api_cold_start_ratio",
        "P8 API cold start vs `import tensorflow` alone",
        "≤ 0.2×",
        "<=",
        0.2,
        "x",
    ),
)
KEYS = tuple(m.key for m in MEASURES)
BY_KEY = {m.key: m for m in MEASURES}


@dataclass
class Measured:
    """What one benchmark found: values for its keys, why any is missing, and the rest."""

    values: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def missing(self, key: str, reason: str) -> None:
        """Record that ``key`` could not be measured, and why."""
        self.values[key] = None
        self.reasons[key] = reason

    def to_json(self) -> dict[str, Any]:
        return {"values": self.values, "reasons": self.reasons, "details": self.details}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measured:
        return cls(dict(data["values"]), dict(data["reasons"]), dict(data["details"]))


def assemble(found: dict[str, Measured], run: dict[str, Any], not_run: str) -> dict[str, Any]:
    """The one JSON object: every key, a ``<key>_reason`` for each null, then ``details``.

    Args:
        found: each benchmark's result by benchmark name.
        run: when and where it ran (goes to ``details["run"]``).
        not_run: the reason given for keys no benchmark reported.
    """
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for measured in found.values():
        values.update(measured.values)
        reasons.update(measured.reasons)
    result: dict[str, Any] = {}
    for key in KEYS:
        value = values.get(key)
        if value is not None and not math.isfinite(value):
            value, reasons[key] = None, f"the measurement gave {value}"
        result[key] = None if value is None else round(float(value), 4)
        if result[key] is None:
            result[f"{key}_reason"] = reasons.get(key) or not_run
    details = {name: measured.details for name, measured in found.items()}
    result["details"] = {"run": run, **details}
    return result


def machine() -> dict[str, Any]:
    """Cores, CPU model and load average of this machine, now."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cores, "cpu_model": model, "loadavg": [round(x, 2) for x in os.getloadavg()]}


def run_info(quick: bool, started: float, load_start: list[float]) -> dict[str, Any]:
    """``details["run"]``: the date, the machine, the load at start and end, the wall time."""
    now = machine()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpus": now["cpus"],
        "cpu_model": now["cpu_model"],
        "loadavg_start": load_start,
        "loadavg_end": now["loadavg"],
        "quick": quick,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _verdict(measure: Measure, value: float | None) -> str:
    if value is None:
        return "—"
    return "met" if measure.meets(value) else "not met"


def text_table(result: dict[str, Any]) -> str:
    """A fixed-width table for a terminal: measure, goal, value, verdict, reason."""
    rows = []
    for m in MEASURES:
        value = result.get(m.key)
        reason = result.get(f"{m.key}_reason", "")
        rows.append((m.key, m.goal, m.show(value), _verdict(m, value), reason))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append("  ".join(cells) + (f"  ({row[4]})" if row[4] else ""))
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The README's table: one row per measure, with the run's date, machine and load."""
    run = result.get("details", {}).get("run", {})
    load = run.get("loadavg_start") or []
    load_end = run.get("loadavg_end") or []
    kind = "`python -m bench --quick`" if run.get("quick") else "`python -m bench`"
    lines = [
        f"{kind}, {run.get('date', 'unknown date')}: {run.get('cpus', '?')} CPUs "
        f"({run.get('cpu_model', 'unknown CPU')}), load average "
        f"{' / '.join(map(str, load)) or '?'} at start, "
        f"{' / '.join(map(str, load_end)) or '?'} at end; {run.get('wall_s', '?')} s.",
        "",
        "| measure | goal | value |",
        "|---|---|---|",
    ]
    for m in MEASURES:
        value = result.get(m.key)
        shown = m.show(value) if value is not None else f"n/a: {result.get(m.key + '_reason')}"
        if value is not None and not m.meets(value):
            shown = f"**{shown}**"
        lines.append(f"| {m.label} | {m.goal} | {shown} |")
    extra = notes(result.get("details", {}))
    return "\n".join(lines + (["", *extra] if extra else [])) + "\n"


def notes(details: dict[str, Any]) -> list[str]:
    """Lines on what the table's ratios rest on, from a run's details (what it has)."""
    found = []
    speed = details.get("p1_speed", {})
    if "per_epoch_ratio" in speed:
        costs = speed.get("fixed_costs_s", {})
        found.append(
            f"- P1: per epoch {speed['per_epoch_ratio']:.1f}x; ours' fixed costs: ingest "
            f"{costs.get('ingest_ours')} s, feature pass {costs.get('feature_pass_ours')} s; "
            f"target accuracy {speed.get('target_accuracy')}."
        )
    api = details.get("api", {})
    shared = api.get("default_model", {}).get("layouts", {}).get("shared")
    if shared:
        p50 = shared["api"]["1"]["p50_ms"] / shared["grpc"]["1"]["p50_ms"]
        many = max(shared["grpc"], key=int)
        rate = shared["api"][many]["req_per_s"] / shared["grpc"][many]["req_per_s"]
        model = api["default_model"].get("model", "the default model")
        found.append(
            f"- P3 / P4 with every process sharing all cores ({model}): {p50:.2f}x / {rate:.2f}x."
        )
    gateway = api.get("gateway_ms_per_request")
    if gateway:
        # Keys: "<layout>, <column>", e.g. "separated, p50_ms".
        parts = [(where.split(", "), ms) for where, ms in gateway.items()]
        added = "; ".join(f"{w[0]} {w[1].removesuffix('_ms')} +{ms:.2f} ms" for w, ms in parts)
        tiny = "a tiny model (small_cnn, 32 px), 1 client"
        found.append(f"- What `/predict` adds to a call on {tiny}: {added}.")
    batching = details.get("p5", {}).get("batching", {})
    if batching and not batching.get("tuned"):
        found.append(f"- P5 untuned: {batching.get('untuned_because')}")
    return found


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


class MarkersMissing(ValueError):
    """The file has no ``<!-- bench:start -->`` … ``<!-- bench:end -->`` pair to fill."""


def replace_between_markers(text: str, table: str) -> str:
    """``text`` with everything between the bench markers replaced by ``table``."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise MarkersMissing(f"no {START} ... {END} pair found")
    block = f"{START}\n{table.rstrip()}\n{END}"
    return pattern.sub(lambda _: block, text, count=1)


def load(path: Path) -> dict[str, Any]:
    """A saved run's JSON object, checked to hold every key."""
    data = json.loads(path.read_text(encoding="utf-8"))
    missing = [key for key in KEYS if key not in data]
    if missing:
        raise ValueError(f"{path} is not a bench result: it lacks {', '.join(missing)}")
    return data
