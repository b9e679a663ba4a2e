"""The bench result: exactly the keys, null with a reason, the tables and README markers."""

from __future__ import annotations

import math

import pytest

from bench.report import (
    END,
    KEYS,
    START,
    MarkersMissing,
    Measured,
    assemble,
    markdown,
    replace_between_markers,
    text_table,
)

RUN = {
    "date": "2026-01-02 03:04 UTC",
    "cpus": 2,
    "cpu_model": "Test CPU",
    "quick": True,
    "loadavg_start": [1.5, 1.0, 0.5],
    "loadavg_end": [2.0, 1.2, 0.6],
    "wall_s": 12.3,
}


def canned() -> dict:
    found = {
        "api": Measured(
            values={"p3_predict_p50_ratio": 1.1, "p4_predict_throughput_ratio": 0.5},
            details={"layout": "separated"},
        ),
        "export": Measured(
            values={"p6_request_size_ratio": 47.81234, "p7_onnx_latency_ratio": None},
            reasons={"p7_onnx_latency_ratio": "onnxruntime is not installed"},
        ),
    }
    return assemble(found, RUN, not_run="not run: --only api,export")


def test_the_object_has_every_key_and_a_reason_for_each_null():
    result = canned()
    nulls = [key for key in KEYS if result[key] is None]
    expected = set(KEYS) | {f"{key}_reason" for key in nulls} | {"details"}
    assert set(result) == expected
    assert result["p7_onnx_latency_ratio_reason"] == "onnxruntime is not installed"
    assert result["p1_time_to_accuracy_ratio_reason"] == "not run: --only api,export"
    assert result["p6_request_size_ratio"] == 47.8123
    assert result["details"] == {"run": RUN, "api": {"layout": "separated"}, "export": {}}


def test_a_value_that_is_not_finite_becomes_null_with_a_reason():
    result = assemble({"x": Measured(values={"p2_input_wait_share": math.nan})}, RUN, "n/a")
    assert result["p2_input_wait_share"] is None
    assert result["p2_input_wait_share_reason"] == "the measurement gave nan"


def test_markdown_has_one_row_per_measure_with_goal_value_and_machine():
    table = markdown(canned())
    lines = table.splitlines()
    assert lines[0] == (
        "`python -m bench --quick`, 2026-01-02 03:04 UTC: 2 CPUs (Test CPU), load average "
        "1.5 / 1.0 / 0.5 at start, 2.0 / 1.2 / 0.6 at end; 12.3 s."
    )
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(KEYS) + 1  # the header row too
    p3 = "| P3 `/predict` p50 vs a direct gRPC Predict, 1 client, default model (API and "
    assert f"{p3}model server on separate cores) | ≤ 1.15× | 1.10x |" in lines
    # A missed goal is bold; a missing value says why.
    p4 = "| P4 `/predict` saturated throughput vs direct, 16 clients, default model (separate "
    p4 += "cores)"
    assert f"{p4} | ≥ 0.8× | **0.50x** |" in lines
    assert any("n/a: onnxruntime is not installed" in row for row in rows)


def test_markdown_notes_what_the_details_hold():
    result = canned()
    shared = {
        "grpc": {"1": {"p50_ms": 4.0, "req_per_s": 250.0}, "16": {"req_per_s": 500.0}},
        "api": {"1": {"p50_ms": 6.0, "req_per_s": 160.0}, "16": {"req_per_s": 200.0}},
    }
    result["details"]["api"] = {
        "default_model": {"model": "mobilenet_v2 at 224px", "layouts": {"shared": shared}},
        "gateway_ms_per_request": {"separated, p50_ms": 1.25},
    }
    assert markdown(result).endswith(
        "\n\n- P3 / P4 with every process sharing all cores (mobilenet_v2 at 224px): 1.50x /"
        " 0.40x.\n- What `/predict` adds to a call on a tiny model (small_cnn, 32 px), 1"
        " client: separated p50 +1.25 ms.\n"
    )


def test_text_table_marks_goals_met_and_not_met():
    table = text_table(canned())
    p3 = next(line for line in table.splitlines() if line.startswith("p3_"))
    p4 = next(line for line in table.splitlines() if line.startswith("p4_"))
    assert "1.10x" in p3 and "met" in p3 and "not met" not in p3
    assert "0.50x" in p4 and "not met" in p4


def test_replacing_between_markers_keeps_the_rest_of_the_file():
    text = f"# Title\n\nbefore\n{START}\nold table\n{END}\nafter\n"
    updated = replace_between_markers(text, "| new |\n")
    assert updated == f"# Title\n\nbefore\n{START}\n| new |\n{END}\nafter\n"
    # Running it again gives the same file.
    assert replace_between_markers(updated, "| new |\n") == updated


def test_a_file_without_markers_is_refused():
    with pytest.raises(MarkersMissing):
        replace_between_markers("# no markers here\n", "| new |")
