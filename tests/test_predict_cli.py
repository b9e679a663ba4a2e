"""``ftserve predict`` and the client's errors that need no running stack.

Predictions against a trained model, over HTTP and gRPC, are in ``tests/test_jobs_cli.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from service.client.predict import rank
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FTSERVE_API_URL", "FTSERVE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def nowhere() -> str:
    """An API URL nothing listens on: a request sent there would fail differently."""
    return f"http://127.0.0.1:{free_port()}"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_a_missing_image_is_refused_before_anything_is_sent(tmp_path, capsys, nowhere):
    image = tmp_path / "rose.png"
    image.write_bytes(PNG)
    missing = tmp_path / "tulip.png"
    assert run(capsys, "predict", "flowers", str(image), str(missing), "--api-url", nowhere) == (
        2,
        "",
        f"ftserve: error: Cannot read image {missing}: No such file or directory (invalid_input)\n",
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"hello", "{path} is not a JPEG, PNG, GIF, BMP or WebP image"),
        ("empty.png", b"", "{path} is not a JPEG, PNG, GIF, BMP or WebP image"),
        ("folder", None, "Image {path} is a folder, not a file"),
    ],
)
def test_what_is_not_an_image_file_is_refused(tmp_path, capsys, nowhere, name, content, message):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    status, out, err = run(capsys, "predict", "m", str(path), "--api-url", nowhere, "--json")
    assert (status, err) == (2, "")
    expected = {"code": "invalid_input", "message": message.format(path=path)}
    assert json.loads(out) == {"error": expected}


def test_an_unreachable_api_exits_2(tmp_path, capsys, nowhere):
    image = tmp_path / "rose.png"
    image.write_bytes(PNG)
    assert run(capsys, "predict", "flowers", str(image), "--api-url", nowhere) == (
        2,
        "",
        f"ftserve: error: Cannot reach the API at {nowhere}/predict: [Errno 111] Connection"
        " refused (api_unreachable)\n",
    )
    status, out, err = run(capsys, "jobs", "list", "--api-url", nowhere, "--json")
    assert (status, err) == (2, "")
    assert json.loads(out)["error"]["code"] == "api_unreachable"
    assert run(capsys, "jobs", "watch", "abc", "--api-url", nowhere)[2] == (
        f"ftserve: error: Cannot reach the API at {nowhere}/finetune/abc: [Errno 111]"
        " Connection refused (api_unreachable)\n"
    )


def test_an_unreachable_model_server_names_its_address(tmp_path):
    image = tmp_path / "rose.png"
    image.write_bytes(PNG)
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "predict", "m", str(image), "--grpc", address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "ftserve: error: The model server is unavailable or the model is still loading;"
        f" retry shortly (model server at {address}) (model_server_unavailable)\n"
    )


@pytest.mark.parametrize("address", ["8500", "host:", "host:port", ":8500", "host:70000"])
def test_grpc_takes_host_and_port(tmp_path, capsys, address):
    image = tmp_path / "rose.png"
    image.write_bytes(PNG)
    assert run(capsys, "predict", "m", str(image), "--grpc", address) == (
        2,
        "",
        f"ftserve: error: --grpc takes HOST:PORT, not {address!r}\n",
    )


def test_version_and_label_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "m", "x.png", "--version", "1", "--label", "canary"])
    assert exit_info.value.code == 2
    assert "argument --label: not allowed with argument --version" in capsys.readouterr().err


def test_a_dataset_that_is_neither_folder_nor_archive_is_refused(tmp_path, capsys, nowhere):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    args = ["--model-name", "m", "--api-url", nowhere]
    assert run(capsys, "jobs", "submit", str(notes), *args)[2] == (
        f"ftserve: error: Dataset {notes} is neither a folder nor an archive (.zip, .tar,"
        " .tar.gz, .tgz, .tar.bz2, .tbz2, .tar.xz, .txz) (invalid_input)\n"
    )
    assert run(capsys, "jobs", "submit", str(tmp_path / "gone"), *args)[2] == (
        f"ftserve: error: Dataset {tmp_path / 'gone'} does not exist (invalid_input)\n"
    )
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    assert run(capsys, "jobs", "submit", str(tmp_path / "empty"), *args)[2] == (
        f"ftserve: error: Dataset folder {tmp_path / 'empty'} holds no files (hidden ones are"
        " left out) (invalid_input)\n"
    )


def test_probabilities_alone_are_ranked_by_class_index():
    outputs = {"probabilities": np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)}
    ranked = rank(outputs, top_k=2)
    assert [p["label"] for p in ranked] == ["1", "0"]
    assert [[e["label"] for e in p["top_k"]] for p in ranked] == [["1", "2"], ["0", "2"]]
    assert ranked[0]["score"] == pytest.approx(0.7)


def test_labels_and_scores_are_taken_as_the_model_ranked_them():
    outputs = {
        "labels": np.array([[b"rose", b"tulip"]], dtype=object),
        "label_scores": np.array([[0.9, 0.1]], dtype=np.float32),
        "probabilities": np.array([[0.1, 0.9]], dtype=np.float32),
    }
    (prediction,) = rank(outputs, top_k=5)
    assert prediction == {
        "label": "rose",
        "score": pytest.approx(0.9),
        "top_k": [
            {"label": "rose", "score": pytest.approx(0.9)},
            {"label": "tulip", "score": pytest.approx(0.1)},
        ],
    }
