"""``ftserve`` run as a real process, the way a user runs it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHAPES = ["circle", "square", "triangle"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A child environment with an empty Keras cache and every folder under tmp_path."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")}
    child.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        KERAS_HOME=str(tmp_path / "keras_home"),
        FTSERVE_DATA_ROOT=str(tmp_path / "var" / "data"),
        FTSERVE_WORK_DIR=str(tmp_path / "var" / "jobs"),
        FTSERVE_MODEL_REPO=str(tmp_path / "var" / "models"),
        FTSERVE_WEIGHTS_DIR=str(tmp_path / "var" / "weights"),
    )
    return child


def ftserve(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def error_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The one JSON error document a failed ``--json`` run prints."""
    assert result.returncode == 2, result.stderr
    assert result.stdout.count("\n") == 1
    body = json.loads(result.stdout)
    assert list(body) == ["error"]
    assert sorted(body["error"]) == ["code", "message"]
    return body["error"]


def test_sample_data_writes_three_classes_then_refuses_to_overwrite(tmp_path, env):
    out = tmp_path / "shapes"

    first = ftserve(env, "sample-data", out, "--images-per-class", "4", "--image-size", "32")
    again = ftserve(env, "sample-data", out, "--images-per-class", "4", "--image-size", "32")

    assert (first.returncode, first.stdout) == (0, f"{out}\n")
    assert sorted(p.name for p in out.iterdir()) == SHAPES
    for shape in SHAPES:
        files = sorted(p.name for p in (out / shape).iterdir())
        assert files == [f"{shape}_{n:04d}.{'png' if n % 2 == 0 else 'jpg'}" for n in range(4)]
        for name in files:
            with Image.open(out / shape / name) as image:
                assert image.size == (32, 32)
    assert (again.returncode, again.stdout) == (2, "")
    assert again.stderr == f"ftserve: error: {out} is not empty (use --overwrite)\n"


def test_train_json_prints_one_summary_and_saves_the_model(tmp_path, env, shapes_dir):
    out = tmp_path / "job"

    result = ftserve(
        env,
        "train",
        "--data", shapes_dir,
        "--model-name", "t",
        "--base-model", "small_cnn",
        "--weights", "none",
        "--epochs", "1",
        "--batch-size", "8",
        "--output", out,
        "--json",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    summary = json.loads(result.stdout)
    assert summary["model_name"] == "t"
    assert summary["classes"] == SHAPES
    assert summary["base_model"] == "small_cnn"
    assert summary["weights"] == {"source": "none", "file": None, "sha256": None}
    assert summary["work_dir"] == str(out)
    dataset = summary["dataset"]
    assert re.fullmatch(r"[0-9a-f]{64}", dataset["fingerprint"])
    assert dataset["skipped"] == []
    assert dataset["class_counts"] == {"circle": 16, "square": 16, "triangle": 16}
    assert dataset["split"] == {"train": 39, "validation": 9}
    evaluation = summary["evaluation"]
    assert evaluation["count"] == 9
    assert 0.0 <= evaluation["accuracy"] <= 1.0
    matrix = evaluation["confusion_matrix"]
    assert [sum(row) for row in matrix] == [3, 3, 3]
    assert sum(matrix[i][i] for i in range(3)) / 9 == pytest.approx(evaluation["accuracy"])
    assert summary["timings"]["total"] > 0
    assert zipfile.is_zipfile(out / "model.keras")
    assert (out / "labels.txt").read_text() == "circle\nsquare\ntriangle\n"
    assert json.loads((out / "result.json").read_text()) == summary
    version_dir = tmp_path / "var" / "models" / "t" / "1"
    assert summary["version"] == 1
    assert summary["saved_model_path"] == str(version_dir)
    assert summary["onnx_path"] == str(version_dir / "assets.extra" / "model.onnx")
    assert 0.0 <= summary["onnx_max_abs_diff"] <= 1e-4
    assert (version_dir / "saved_model.pb").is_file()
    card = json.loads((version_dir / "assets.extra" / "model_card.json").read_text())
    assert (card["name"], card["version"], card["classes"]) == ("t", 1, SHAPES)
    assert 'name: "t"' in (tmp_path / "var" / "models" / "models.config").read_text()
    # No model server is configured: the first version becomes stable at once.
    assert summary["promotion"]["decision"] == "promoted"
    assert summary["labels"] == {"stable": 1}
    assert card["promotion"] == summary["promotion"]


def test_train_text_report_prints_the_confusion_matrix_and_no_tensorflow_chatter(
    tmp_path, env, shapes_dir
):
    out = tmp_path / "job"
    del env["TF_CPP_MIN_LOG_LEVEL"]  # the defaults every ftserve process sets apply

    result = ftserve(
        env,
        "train",
        "--data", shapes_dir,
        "--model-name", "t",
        "--base-model", "small_cnn",
        "--weights", "none",
        "--epochs", "1",
        "--batch-size", "8",
        "--output", out,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "result.json").read_text())
    matrix = summary["evaluation"]["confusion_matrix"]
    lines = result.stdout.splitlines()
    start = lines.index("confusion    rows: true class, columns: predicted class")
    table = lines[start + 1 : start + 5]
    width = max(map(len, SHAPES))
    assert table[0] == "  " + " " * width + "".join(f"  {name}" for name in SHAPES)
    for line, name, row in zip(table[1:], SHAPES, matrix, strict=True):
        cells = "".join(f"  {count:>{len(col)}}" for count, col in zip(row, SHAPES, strict=True))
        assert line == f"  {name:<{width}}{cells}"
    assert [sum(row) for row in matrix] == [3, 3, 3]
    # TensorFlow's start-up messages on a machine without a GPU are silenced at the source.
    noise = ("cuda", "cudnn", "cufft", "cublas", "tf-trt", "absl::initializelog", "onednn custom")
    assert [
        line for line in result.stderr.splitlines() if any(n in line.lower() for n in noise)
    ] == []
    assert re.fullmatch(r"(head .*\n)+", result.stderr), result.stderr


def test_confusion_table_aligns_names_and_counts():
    from service.finetune.command import confusion_table

    table = confusion_table(["cat", "a_long_name", "ox"], [[120, 0, 3], [7, 9, 0], [0, 1, 1000]])

    assert table == [
        "             cat  a_long_name    ox",
        "cat          120            0     3",
        "a_long_name    7            9     0",
        "ox             0            1  1000",
    ]


def test_train_without_cached_imagenet_weights_fails_at_once(tmp_path, env, shapes_dir):
    result = ftserve(env, "train", "--data", shapes_dir, "--model-name", "t", "--json")

    error = error_of(result)
    expected = (
        tmp_path
        / "keras_home"
        / "models"
        / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    )
    assert error["code"] == "weights_unavailable"
    assert str(expected) in error["message"]
    assert "FTSERVE_WEIGHTS_DOWNLOAD" in error["message"]
    assert not expected.parent.exists()  # nothing was fetched into the cache


def test_train_config_file_with_unknown_field_is_rejected(tmp_path, env, shapes_dir):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"base_model": "small_cnn", "epochz": 1}))

    result = ftserve(
        env, "train", "--data", shapes_dir, "--model-name", "t", "--config", config, "--json"
    )

    assert error_of(result) == {
        "code": "invalid_config",
        "message": "invalid training config: epochz: Extra inputs are not permitted",
    }


def test_train_on_a_single_class_is_rejected(tmp_path, env, shapes_dir):
    data = tmp_path / "one_class"
    shutil.copytree(shapes_dir / "circle", data / "circle")

    result = ftserve(
        env,
        "train",
        "--data", data,
        "--model-name", "t",
        "--base-model", "small_cnn",
        "--weights", "none",
        "--json",
    )  # fmt: skip

    assert error_of(result) == {
        "code": "dataset_unusable",
        "message": "a dataset needs at least 2 class folders, found 1: 'circle'",
    }


def test_train_flags_map_onto_the_training_config(tmp_path):
    from service.cli import _parser
    from service.finetune.command import _config

    args = _parser().parse_args([
        "train", "--data", str(tmp_path), "--model-name", "m", "--learning-rate", "0.01",
        "--fine-tune-at", "block3_conv1", "--fine-tune-learning-rate", "1e-4",
        "--fine-tune-epochs", "2",
    ])  # fmt: skip
    by_index = _parser().parse_args(
        ["train", "--data", str(tmp_path), "--model-name", "m", "--fine-tune-at", "12"]
    )

    config = _config(args)
    assert (config.learning_rate, config.fine_tune_at, config.fine_tune_learning_rate) == (
        0.01, "block3_conv1", 1e-4,
    )  # fmt: skip
    assert config.fine_tune_epochs == 2 and config.fine_tunes
    assert _config(by_index).fine_tune_at == 12
