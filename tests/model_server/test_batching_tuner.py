"""``ftserve tune-batching``: the decision on measured curves, the file it writes, a real run.

The decision is tested on synthetic curves, whose right answer follows from the rules in
``service.model_server.tuning``; the measurement once, for real, on a small SavedModel.
Nothing asserts how fast this machine is.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from service.model_server.batching import BatchingOptions
from service.model_server.config import read_batching_parameters
from service.model_server.latency import (
    Candidate,
    CurvePoint,
    ThreadConfig,
    batch_sizes,
    candidate_configs,
    percentile,
)
from service.model_server.latency_worker import Feeder, ModelInputError, image_size
from service.model_server.server_config_pb2 import BatchingParameters
from service.model_server.tuning import (
    MIN_GAIN,
    TIE,
    decide,
    parameters_text,
    render,
    write_parameters,
)
from tests.support.servers import ROOT, tf_python

ONE_AT_A_TIME = ThreadConfig(intra_op=2, inter_op=2, parallel=1)
TWO_AT_A_TIME = ThreadConfig(intra_op=1, inter_op=2, parallel=2)
# Milliseconds per batch: a fixed cost and a little per row, as on an accelerator.
FIXED_COST = {1: 10.0, 2: 11.0, 4: 13.0, 8: 17.0, 16: 25.0, 32: 41.0}
# Each row costs the same however many share a batch, as on a CPU one row already fills.
PER_ROW_COST = {1: 20.0, 2: 40.5, 4: 81.0, 8: 162.0}
JITTER = 1.2  # p99 over p50 in the synthetic curves
DOCUMENT_KEYS = {"decision", "reason", "parameters", "threads", "curve", "file"}


def candidate(costs_ms: dict[int, float], threads: ThreadConfig) -> Candidate:
    """A curve where each batch takes ``costs_ms[size]`` and ``threads.parallel`` run at once."""
    points = tuple(
        CurvePoint(size, cost, cost * JITTER, threads.parallel * size / cost * 1000)
        for size, cost in sorted(costs_ms.items())
    )
    return Candidate(threads, points)


def options_of(text: str, tmp_path: Path) -> BatchingOptions:
    """What ``ftserve model-server --batching_parameters_file`` makes of ``text``."""
    path = tmp_path / "batching.config"
    path.write_text(text)
    return BatchingOptions.from_proto(read_batching_parameters(path))


def test_a_curve_where_batching_pays_turns_it_on_with_parameters_from_the_best_point(
    tmp_path: Path,
) -> None:
    slower_pair = candidate({s: 2 * c for s, c in FIXED_COST.items()}, TWO_AT_A_TIME)
    decision = decide([candidate(FIXED_COST, ONE_AT_A_TIME), slower_pair], p99_bound_ms=40.0)

    assert decision.on
    assert decision.candidate.threads == ONE_AT_A_TIME
    # Batch 16 (p99 30 ms, 640 rows/s) is the largest under 40 ms: its slack is 10 ms, less
    # than the 15 / 640 s a full load takes to bring 15 more rows, and no more than one row
    # takes alone.
    assert decision.parameters == {
        "max_batch_size": 16,
        "batch_timeout_micros": 10_000,
        "num_batch_threads": 1,
        "allowed_batch_sizes": [1, 2, 4, 8, 16],
        "pad_variable_length_inputs": False,
        "max_enqueued_batches": 40,
    }
    assert "640.0 rows/s" in decision.reason and "6.40x" in decision.reason
    options = options_of(parameters_text(decision.parameters), tmp_path)
    assert options.max_batch_size == 16 and options.allowed_batch_sizes == (1, 2, 4, 8, 16)


def test_a_lone_request_waits_no_longer_than_it_then_runs() -> None:
    decision = decide([candidate(FIXED_COST, ONE_AT_A_TIME)], p99_bound_ms=100.0)

    # Batch 32 leaves 50.8 ms of slack and fills in 39.7 ms; one row runs in 10 ms.
    assert decision.parameters is not None
    assert decision.parameters["max_batch_size"] == 32
    assert decision.parameters["batch_timeout_micros"] == 10_000


def test_a_flat_per_row_curve_keeps_batching_off_and_says_why() -> None:
    # Two single rows at once answer 66.7 rows/s; no batch does better than 1.1x that.
    pair = candidate({1: 30.0, 2: 61.0, 4: 122.0}, TWO_AT_A_TIME)
    decision = decide([candidate(PER_ROW_COST, ONE_AT_A_TIME), pair], p99_bound_ms=200.0)

    assert not decision.on
    assert decision.parameters is None
    assert decision.candidate.threads == TWO_AT_A_TIME  # the best way to serve single rows
    assert "66.7 rows/s unbatched" in decision.reason
    assert "the cost per row hardly falls with batch size" in decision.reason
    assert f"under the {MIN_GAIN:.1f}x" in decision.reason


def test_gains_only_past_the_bound_keep_batching_off_and_are_named() -> None:
    costs = {1: 10.0, 2: 19.0, 4: 38.0, 8: 40.0}  # only batch 8 pays, and it is too slow
    decision = decide([candidate(costs, ONE_AT_A_TIME)], p99_bound_ms=46.0)

    assert not decision.on
    assert "larger batches would gain 2.00x (batch 8)" in decision.reason
    assert "p99 48.0 ms, past the bound" in decision.reason


def test_a_bound_no_batch_fits_keeps_batching_off() -> None:
    decision = decide([candidate(FIXED_COST, ONE_AT_A_TIME)], p99_bound_ms=5.0)

    assert not decision.on
    assert decision.reason == "even a batch of 2 rows takes p99 13.2 ms here, over the 5.0 ms bound"


def test_a_near_tie_goes_to_the_smaller_batch() -> None:
    points = (
        CurvePoint(1, 10.0, 12.0, 100.0),
        CurvePoint(2, 10.0, 12.0, 200.0),
        CurvePoint(4, 19.8, 24.0, 200.0 * (1 + TIE / 2)),
    )
    decision = decide([Candidate(ONE_AT_A_TIME, points)], p99_bound_ms=100.0)

    assert decision.parameters is not None
    assert decision.parameters["max_batch_size"] == 2


@pytest.mark.parametrize("seed", range(40))
def test_the_chosen_batch_and_its_timeout_stay_under_the_bound(seed: int) -> None:
    rng = random.Random(seed)
    candidates = []
    for threads in (ONE_AT_A_TIME, TWO_AT_A_TIME):
        cost, costs = rng.uniform(1, 30), {}
        for size in (1, 2, 4, 8, 16, 32):
            costs[size] = cost
            cost *= rng.uniform(1.05, 2.2)
        candidates.append(candidate(costs, threads))
    bound = rng.uniform(5, 200)

    decision = decide(candidates, bound)

    feasible = [p for c in candidates for p in c.curve if p.batch_size > 1 and p.p99_ms <= bound]
    if not decision.on:
        single = max(p.items_per_second for c in candidates for p in c.curve if p.batch_size == 1)
        assert all(p.items_per_second < MIN_GAIN * single for p in feasible)
        return
    params = decision.parameters
    assert params is not None
    point = decision.candidate.point(params["max_batch_size"])
    assert point is not None
    assert point.p99_ms + params["batch_timeout_micros"] / 1000 <= bound
    single = decision.candidate.point(1)
    assert single is not None and params["batch_timeout_micros"] / 1000 <= single.p50_ms
    assert all(p.items_per_second <= point.items_per_second / (1 - TIE) for p in feasible)
    assert params["max_enqueued_batches"] >= params["num_batch_threads"]
    parsed = text_format.Parse(parameters_text(params), BatchingParameters())
    assert BatchingOptions.from_proto(parsed).max_batch_size == params["max_batch_size"]


def test_the_written_file_round_trips_through_the_model_servers_parser(tmp_path: Path) -> None:
    params = {
        "max_batch_size": 8,
        "batch_timeout_micros": 2500,
        "num_batch_threads": 2,
        "allowed_batch_sizes": [1, 2, 4, 8],
        "pad_variable_length_inputs": False,
        "max_enqueued_batches": 9,
    }
    path = tmp_path / "out" / "batching_parameters.txt"

    write_parameters(path, parameters_text(params, ["tuned on a test curve"]))

    assert path.read_text().startswith("# tuned on a test curve\n")
    options = BatchingOptions.from_proto(read_batching_parameters(path))
    assert options == BatchingOptions(
        max_batch_size=8,
        batch_timeout_micros=2500,
        max_enqueued_batches=9,
        num_batch_threads=2,
        allowed_batch_sizes=(1, 2, 4, 8),
        pad_variable_length_inputs=False,
        enable_large_batch_splitting=False,
    )
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no scratch file left


def test_parameters_the_server_would_refuse_are_never_written(tmp_path: Path) -> None:
    path = tmp_path / "batching_parameters.txt"
    bad = {"max_batch_size": 8, "allowed_batch_sizes": [1, 2, 4]}  # must end at 8

    with pytest.raises(ValueError, match="Last entry in allowed_batch_sizes must match"):
        write_parameters(path, parameters_text(bad))
    assert not path.exists()


def test_batch_sizes_double_up_to_the_limit_and_include_it() -> None:
    assert batch_sizes(1) == [1]
    assert batch_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert batch_sizes(24) == [1, 2, 4, 8, 16, 24]


def test_percentile_is_nearest_rank() -> None:
    values = sorted(float(v) for v in range(1, 201))
    assert percentile(values, 0.99) == 198.0
    assert percentile(values[:20], 0.99) == 20.0  # few samples: the maximum
    assert percentile([5.0], 0.5) == 5.0


def test_candidate_settings_start_with_every_core_on_one_run() -> None:
    assert candidate_configs(1) == [ThreadConfig(1, 1, 1)]
    assert candidate_configs(2) == [
        ThreadConfig(2, 2, 1),
        ThreadConfig(1, 2, 2),
        ThreadConfig(2, 2, 2),
    ]
    assert ThreadConfig(2, 4, 2) in candidate_configs(4)  # half the cores per run


def signature(inputs: dict[str, tuple[int, list[int]]]) -> meta_graph_pb2.SignatureDef:
    """A SignatureDef whose inputs have the given (dtype, shape)."""
    found = meta_graph_pb2.SignatureDef()
    for alias, (dtype, shape) in inputs.items():
        found.inputs[alias].dtype = dtype
        for size in shape:
            found.inputs[alias].tensor_shape.dim.add().size = size
    return found


def test_image_size_comes_from_the_model_card_then_a_pixel_input(tmp_path: Path) -> None:
    pixels = signature({"images": (types_pb2.DT_FLOAT, [-1, 40, 40, 3])})
    assert image_size(tmp_path, {"serving_tensor": pixels}) == 40
    assert image_size(tmp_path, {}) is None
    (tmp_path / "assets.extra").mkdir()
    (tmp_path / "assets.extra" / "model_card.json").write_text(json.dumps({"image_size": 48}))
    assert image_size(tmp_path, {"serving_tensor": pixels}) == 48


def test_feeder_sends_jpegs_of_the_image_size_and_numbers_of_the_declared_shape() -> None:
    feeder = Feeder(
        signature(
            {
                "image_bytes": (types_pb2.DT_STRING, [-1]),
                "x": (types_pb2.DT_FLOAT, [-1, 2]),
                "ids": (types_pb2.DT_INT64, [-1, -1]),
            }
        ),
        size=24,
    )

    batch = feeder.batch(3)

    assert batch["x"].shape == (3, 2) and batch["x"].dtype == np.float32
    assert batch["ids"].shape == (3, 24) and batch["ids"].dtype == np.int64
    assert batch["image_bytes"].shape == (3,)
    decoded = tf.io.decode_jpeg(batch["image_bytes"][2])
    assert decoded.shape == (24, 24, 3)
    assert feeder.description["image_bytes"].startswith("JPEG 24x24")


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"image_bytes": (types_pb2.DT_STRING, [-1])}, "give --image-size"),
        ({"z": (types_pb2.DT_COMPLEX64, [-1, 2])}, "cannot make complex64 inputs"),
        ({"x": (types_pb2.DT_FLOAT, [4, 2])}, "free batch dimension"),
    ],
)
def test_feeder_refuses_inputs_it_cannot_make(inputs: dict, message: str) -> None:
    with pytest.raises(ModelInputError, match=message):
        Feeder(signature(inputs), size=None)


def test_the_report_for_people_has_every_curve_and_the_decision() -> None:
    decision = decide([candidate(FIXED_COST, ONE_AT_A_TIME)], p99_bound_ms=40.0)
    document = {
        "decision": "on",
        "reason": decision.reason,
        "parameters": decision.parameters,
        "threads": {"tensorflow_intra_op_parallelism": 2, "tensorflow_inter_op_parallelism": 2},
        "curve": [p.as_dict() for p in decision.candidate.curve],
        "file": "batching_parameters.txt",
        "p99_bound_ms": 40.0,
        "version_dir": "/models/m/1",
        "inputs": {"x": "random float32 [2] per row"},
        "machine": {"cpus": 2, "load_average_before": 0.5, "load_average_after": 2.5},
        "candidates": [
            {
                "tensorflow_intra_op_parallelism": 2,
                "tensorflow_inter_op_parallelism": 2,
                "batches_at_once": 1,
                "chosen": True,
                "curve": [p.as_dict() for p in decision.candidate.curve],
            }
        ],
    }

    text = render(document)

    assert "intra-op 2, inter-op 2, 1 run(s) at a time  <- chosen" in text
    assert "   16      25.0      30.0     640.0      6.40x" in text
    assert f"batching on: {decision.reason}" in text
    assert "--batching_parameters_file=batching_parameters.txt" in text
    assert "2 CPUs; 1-min load average 0.50 before, 2.50 after" in text
    assert "warning: the machine was busy" in text
    document["machine"]["load_average_after"] = 1.5
    assert "warning" not in render(document)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small_cnn classifier at 32 px with random weights, exported as version 1."""
    from exporter.signatures import save_saved_model
    from service.contract.train_config import TrainConfig
    from service.training.backbones import ResolvedWeights, build_base, get_backbone
    from service.training.model import build_classifier

    base_path = tmp_path_factory.mktemp("tuner") / "small"
    backbone = get_backbone("small_cnn")
    config = TrainConfig(model_name="small", base_model="small_cnn", weights="none")
    base = build_base(backbone, 32, ResolvedWeights("none"))
    model = build_classifier(backbone, base, 3, 32, config).model
    save_saved_model(model, ["a", "b", "c"], 32, base_path / "1")
    return base_path


def tune(*args: str) -> subprocess.CompletedProcess[str]:
    command = [tf_python(), "-m", "service.cli", "tune-batching", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_real_run_measures_every_size_and_reports_valid_json(
    small_model: Path, tmp_path: Path
) -> None:
    output = tmp_path / "params.txt"
    done = tune(
        str(small_model),
        *("--json", "--max-batch-size", "4", "--repeats", "4", "--min-seconds", "0"),
        *("--p99-ms", "100000", "--output", str(output)),
    )

    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert set(document) >= DOCUMENT_KEYS
    assert document["version_dir"] == str(small_model / "1")
    assert document["inputs"]["image_bytes"].startswith("JPEG 32x32")
    assert [p["batch_size"] for p in document["curve"]] == [1, 2, 4]
    for point in document["curve"]:
        assert 0 < point["p50_ms"] <= point["p99_ms"]
        assert point["items_per_second"] > 0
    threads = document["threads"]
    assert threads["tensorflow_intra_op_parallelism"] >= 1
    assert threads["tensorflow_inter_op_parallelism"] >= 1
    assert sum(c["chosen"] for c in document["candidates"]) == 1
    assert document["machine"]["cpus"] >= 1
    if document["decision"] == "on":
        assert document["file"] == str(output)
        options = BatchingOptions.from_proto(read_batching_parameters(output))
        assert options.max_batch_size == document["parameters"]["max_batch_size"] in (2, 4)
        assert options.num_batch_threads == document["parameters"]["num_batch_threads"]
    else:
        assert document["decision"] == "off"
        assert document["file"] is None and document["parameters"] is None
        assert not output.exists()


def test_a_folder_without_a_saved_model_is_a_clear_error(tmp_path: Path) -> None:
    done = tune(str(tmp_path), "--json", "--output", str(tmp_path / "params.txt"))

    assert done.returncode == 2
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "bad_request"
    assert "neither a SavedModel folder nor a base path with numbered versions" in error["message"]


def test_a_missing_folder_fails_before_anything_loads(tmp_path: Path) -> None:
    done = tune(str(tmp_path / "nowhere"))

    assert done.returncode == 2
    assert done.stderr.strip() == f"ftserve: error: {tmp_path / 'nowhere'} is not a folder"


def test_bad_flags_are_refused_by_the_parser() -> None:
    done = tune("models/m", "--p99-ms", "0")

    assert done.returncode == 2
    assert "must be > 0" in done.stderr
