"""``ftserve jobs`` and ``ftserve predict`` as a user runs them.

The end-to-end tests run the CLI as a process against one real ``ftserve serve`` stack per
module (model server, worker, API) that fine-tunes on scikit-learn's digits. The event-stream
tests serve canned bytes from a small HTTP server on loopback, so that a dropped connection,
a replayed history and a redone epoch happen on cue.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from service.client.follow import JobWatch, Update
from service.client.progress import BarDisplay, bar_line
from service.client.sse import Event, EventParser
from service.client.upload import read_config, zip_folder
from service.training.sample_data import make_digits_dataset
from tests.support.servers import free_port
from tests.support.stack import Stack, serving_stack

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "base_model": "small_cnn",
    "weights": "none",
    "image_size": 32,
    "epochs": 2,
    "batch_size": 16,
    "fine_tune_at": 0,
    "fine_tune_epochs": 1,
}
CLASSES = ["digit_0", "digit_1", "digit_7"]


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's API address, token or HTTP proxy must not reach these tests."""
    for name in ("FTSERVE_API_URL", "FTSERVE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


# -- the event stream, byte by byte ----------------------------------------------------------

STREAM = (
    b"\xef\xbb\xbfretry: 10\r\n"
    b": a comment\r\n\r\n"
    b'id: 7\nevent: state\ndata: {"status": "running"}\n\n'
    b'event: epoch\rdata: {"phase": "head",\rdata: "epoch": 1}\r\r'
    b"data: first\ndata:second\nid\n\n"
    b"event: ignored\nid: 9\n\n"
    b"data: unfinished"
)
EVENTS = [
    Event("state", '{"status": "running"}', "7"),
    Event("epoch", '{"phase": "head",\n"epoch": 1}', "7"),
    Event("message", "first\nsecond", ""),
]


def test_sse_parser_gives_the_same_events_however_the_bytes_are_split():
    whole = EventParser()
    assert whole.feed(STREAM) + whole.finish() == EVENTS
    assert (whole.retry_ms, whole.last_event_id) == (10, "9")
    for size in (1, 2, 5, 13):
        parser = EventParser()
        events = [e for i in range(0, len(STREAM), size) for e in parser.feed(STREAM[i : i + size])]
        assert events + parser.finish() == EVENTS, size


def test_sse_parser_waits_for_the_lf_of_a_crlf_split_between_chunks():
    parser = EventParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == []  # "\r\n" ends the data line; "\r" may be half of one
    assert parser.feed(b"\n") == [Event("message", "a", None)]
    assert parser.feed(b"data: b\n\r") == []
    assert parser.finish() == [Event("message", "b", None)]


def test_sse_parser_keeps_multibyte_characters_split_between_chunks():
    data = 'data: {"message": "café ✓"}\n\n'.encode()
    parser = EventParser()
    events = [e for i in range(len(data)) for e in parser.feed(data[i : i + 1])]
    assert events == [Event("message", '{"message": "café ✓"}', None)]


def test_job_watch_passes_each_epoch_once_and_marks_a_redone_one():
    watch = JobWatch()
    head1 = {"phase": "head", "epoch": 1, "loss": 0.5}
    assert watch.apply("state", {"job_id": "j", "status": "running", "attempts": 1}) == [
        Update("state", {"job_id": "j", "status": "running", "attempts": 1})
    ]
    assert watch.apply("epoch", head1) == [Update("epoch", head1)]
    # A reconnect replays the state and the history: nothing new.
    assert watch.apply("state", {"job_id": "j", "status": "running", "attempts": 1}) == []
    assert watch.apply("epoch", dict(head1)) == []
    redone = {**head1, "loss": 0.4}
    assert watch.apply("epoch", redone) == [Update("epoch", redone, replaced=True)]
    assert watch.apply("progress", {"phase": "head", "step": 2}) == [
        Update("progress", {"phase": "head", "step": 2})
    ]
    assert watch.apply("unknown", {"x": 1}) == []
    assert not watch.finished
    watch.apply("state", {"job_id": "j", "status": "failed", "error": None})
    assert watch.finished


def test_job_watch_reads_an_older_api_that_sends_the_whole_job():
    job = {
        "job_id": "j",
        "status": "succeeded",
        "model_name": "digits",
        "attempts": 1,
        "cancel_requested": False,
        "started_at": "2024-05-01T10:00:00Z",
        "finished_at": "2024-05-01T10:01:00Z",
        "progress": {"phase": "evaluate", "epoch": 1},
        "history": [{"phase": "head", "epoch": 1, "loss": 0.5}],
        "result": {"model": "digits", "version": 1},
        "error": None,
    }
    updates = JobWatch().apply("progress", job)
    assert [u.kind for u in updates] == ["epoch", "progress", "state"]
    assert updates[2].data == {
        "job_id": "j",
        "status": "succeeded",
        "attempts": 1,
        "cancel_requested": False,
        "started_at": "2024-05-01T10:00:00Z",
        "finished_at": "2024-05-01T10:01:00Z",
        "result": {"model": "digits", "version": 1},
        "error": None,
    }


def test_the_progress_bar_fits_its_width_and_shows_phase_steps_eta_and_metrics():
    progress = {
        "phase": "fine_tune",
        "epoch": 2,
        "epochs": 4,
        "step": 5,
        "steps": 10,
        "eta_seconds": 75.4,
        "metrics": {"loss": 0.25, "accuracy": 0.875, "lr": 1e-5},
    }
    line = bar_line(progress, 120)
    # Half-way through the phase: epoch 2 of 4, step 5 of 10 → 15 of 40 steps.
    assert line == (
        "fine-tune  epoch 2/4  [###########...................]  5/10  ETA 1:15"
        "  loss 0.2500  accuracy 0.8750"
    )
    assert len(bar_line(progress, 60)) == 60


def test_on_a_terminal_the_bar_is_redrawn_in_place_under_the_epoch_lines():
    out = io.StringIO()
    display = BarDisplay(out, {"head": 3})
    progress = {"phase": "head", "epoch": 1, "epochs": 3, "step": 1, "steps": 2}
    display.show(Update("progress", progress))
    display.show(Update("epoch", {"phase": "head", "epoch": 1, "loss": 0.5}))
    display.show(Update("state", {"job_id": "j", "status": "succeeded"}))
    bar = bar_line(progress, display_width())
    assert out.getvalue() == (
        f"\r\x1b[K{bar}\r\x1b[Khead       epoch 1/3  loss 0.5000\n{bar}\r\x1b[Kjob j: succeeded\n"
    )


def display_width() -> int:
    import shutil

    return shutil.get_terminal_size().columns - 1


# -- jobs watch against canned streams -------------------------------------------------------

RUNNING = {
    "job_id": "abc",
    "status": "running",
    "attempts": 1,
    "cancel_requested": False,
    "started_at": "2024-05-01T10:00:00Z",
    "finished_at": None,
}
HEAD_1 = {"phase": "head", "epoch": 1, "loss": 0.8, "accuracy": 0.6, "val_loss": 0.7}
HEAD_2 = {"phase": "head", "epoch": 2, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.6}
HEAD_2_REDONE = {**HEAD_2, "val_loss": 0.55}
RESULT = {
    "model": "digits",
    "version": 3,
    "classes": ["zero", "one"],
    "evaluation": {
        "count": 10,
        "accuracy": 0.9,
        "macro_f1": 0.8990,
        "per_class": {
            "zero": {"precision": 1.0, "recall": 0.8, "f1": 0.8889, "support": 5},
            "one": {"precision": 0.8333, "recall": 1.0, "f1": 0.9091, "support": 5},
        },
        "confusion_matrix": [[4, 1], [0, 5]],
    },
    "promotion": {"decision": "promoted", "reason": "first version"},
    "labels": {"stable": 3},
}
FAILED_ERROR = {"code": "dataset_unusable", "message": "class 'one' has no images"}


def event(kind: str, data: dict[str, Any], event_id: int) -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def job_document(state: dict[str, Any], history: list[dict[str, Any]], **final: Any) -> dict:
    return {
        **state,
        "model_name": "digits",
        "config": {"model_name": "digits", "epochs": 2, "fine_tune_epochs": 0},
        "created_at": "2024-05-01T09:59:00Z",
        "updated_at": "2024-05-01T10:00:00Z",
        "max_attempts": 3,
        "progress": None,
        "history": history,
        "result": None,
        "error": None,
        **final,
    }


class CannedApi(http.server.BaseHTTPRequestHandler):
    """``GET /finetune/abc`` and its events; each events request gets the next canned body,
    and the job document follows what the streams have told."""

    streams: list[bytes]
    documents: list[dict[str, Any]]
    seen_last_ids: list[str | None]

    def do_GET(self) -> None:
        if self.path == "/finetune/abc/events":
            self.seen_last_ids.append(self.headers.get("Last-Event-ID"))
            body, content_type = self.streams.pop(0), "text/event-stream"
        elif self.path == "/finetune/abc":
            # The first document before any stream, the last once the streams are spent.
            document = self.documents[0] if self.streams else self.documents[-1]
            body, content_type = json.dumps(document).encode(), "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.end_headers()
        self.wfile.write(body)  # HTTP/1.0: closing the connection ends the body

    def log_message(self, format: str, *args: Any) -> None:
        pass  # stderr belongs to the CLI under test


@pytest.fixture
def canned_api() -> Iterator[type[CannedApi]]:
    """A loopback server; set ``streams`` and ``documents`` on the yielded class."""
    handler = type("Handler", (CannedApi,), {"streams": [], "documents": [], "seen_last_ids": []})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        handler.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield handler
        server.shutdown()
        thread.join()


def test_watch_reopens_a_dropped_stream_and_shows_each_epoch_once(canned_api, capsys):
    progress = {"phase": "head", "epoch": 1, "epochs": 2, "step": 3, "steps": 4, "metrics": {}}
    succeeded = {**RUNNING, "status": "succeeded", "finished_at": "2024-05-01T10:02:05Z"}
    canned_api.streams = [
        # Cut off mid-event: the half-sent epoch must not count.
        b"retry: 10\n\n"
        + event("state", RUNNING, 1)
        + event("progress", progress, 2)
        + event("epoch", HEAD_1, 3)
        + b'id: 4\nevent: epoch\ndata: {"phase": "he',
        # A server that ignores Last-Event-ID: it replays what it sent before.
        event("state", RUNNING, 1)
        + event("epoch", HEAD_1, 2)
        + event("epoch", HEAD_2, 3)
        + event("epoch", HEAD_2_REDONE, 4)
        + event("state", {**succeeded, "result": RESULT, "error": None}, 5),
    ]
    canned_api.documents = [
        job_document(RUNNING, []),
        job_document(succeeded, [HEAD_1, HEAD_2_REDONE], result=RESULT),
    ]
    status = main(["jobs", "watch", "abc", "--api-url", canned_api.url])
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    assert out == (
        "job abc: running (attempt 1)\n"
        "head       epoch 1/2  loss 0.8000  accuracy 0.6000  val_loss 0.7000\n"
        "head       epoch 2/2  loss 0.5000  accuracy 0.8000  val_loss 0.6000\n"
        "head       epoch 2/2  loss 0.5000  accuracy 0.8000  val_loss 0.5500  (redone)\n"
        "job abc: succeeded\n"
        "\n"
        "model digits version 3, promoted: first version (labels stable=3)\n"
        "accuracy 0.9000 on 10 validation images, macro F1 0.8990\n"
        "\n"
        "CLASS  PRECISION  RECALL  F1      SUPPORT\n"
        "zero   1.0000     0.8000  0.8889  5\n"
        "one    0.8333     1.0000  0.9091  5\n"
        "\n"
        "confusion matrix (rows: true class, columns: predicted class)\n"
        "TRUE \\ PREDICTED  zero  one\n"
        "zero              4     1\n"
        "one               0     5\n"
        "\n"
        f"page: {canned_api.url}/ui/#/jobs/abc\n"
    )
    assert canned_api.seen_last_ids == [None, "3"]


def test_watch_of_a_failed_job_exits_1_with_its_error(canned_api, capsys):
    failed = {**RUNNING, "status": "failed", "finished_at": "2024-05-01T10:00:09Z"}
    canned_api.streams = [
        event("state", RUNNING, 1) + event("state", {**failed, "error": FAILED_ERROR}, 2)
    ]
    canned_api.documents = [
        job_document(RUNNING, []),
        job_document(failed, [], error=FAILED_ERROR),
    ]
    status = main(["jobs", "watch", "abc", "--api-url", canned_api.url])
    out, err = capsys.readouterr()
    assert status == 1
    assert out == (
        "job abc: running (attempt 1)\n"
        "job abc: failed: class 'one' has no images (dataset_unusable)\n"
        f"page: {canned_api.url}/ui/#/jobs/abc\n"
    )
    assert err == "ftserve: error: job abc failed: class 'one' has no images (dataset_unusable)\n"


def test_watch_json_prints_only_the_final_job(canned_api, capsys):
    cancelled = {**RUNNING, "status": "cancelled", "finished_at": "2024-05-01T10:00:09Z"}
    final = job_document(cancelled, [HEAD_1])
    canned_api.streams = [event("epoch", HEAD_1, 1) + event("state", cancelled, 2)]
    canned_api.documents = [job_document(RUNNING, []), final]
    status = main(["jobs", "watch", "abc", "--json", "--api-url", canned_api.url])
    out, err = capsys.readouterr()
    assert (status, err) == (1, "")
    assert out == json.dumps(final) + "\n"


# -- what submit sends -----------------------------------------------------------------------


def test_a_folder_is_zipped_with_its_classes_at_the_root_and_no_hidden_files(tmp_path):
    import zipfile

    data = tmp_path / "data"
    for name in ("cats/a.png", "cats/.DS_Store", "dogs/b.jpg", ".git/config", "dogs/.x/c.png"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(name.encode())
    assert zip_folder(data, tmp_path / "data.zip") == 2
    with zipfile.ZipFile(tmp_path / "data.zip") as archive:
        assert archive.namelist() == ["cats/a.png", "dogs/b.jpg"]
        assert archive.read("dogs/b.jpg") == b"dogs/b.jpg"


def test_the_config_is_a_file_or_inline_json_and_the_model_name_flag_wins(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('{"model_name": "a", "epochs": 2}')
    assert read_config(str(path), None) == {"model_name": "a", "epochs": 2}
    assert read_config(str(path), "b") == {"model_name": "b", "epochs": 2}
    assert read_config(' {"epochs": 1}', "c") == {"epochs": 1, "model_name": "c"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "{nope", "--model-name", "m"], "--config is not valid JSON: Expecting"),
        (["--config", "[1]", "--model-name", "m"], "--config must hold a JSON object"),
        (["--config", "/nowhere.json"], "Cannot read config file /nowhere.json: No such file"),
        ([], "Name the model: --model-name NAME, or model_name in --config"),
    ],
)
def test_a_bad_config_is_refused_before_anything_is_sent(tmp_path, capsys, args, message):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request would fail otherwise
    status = main(["jobs", "submit", str(tmp_path / "data"), "--api-url", url, *args])
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert err.startswith(f"ftserve: error: {message}"), err
    assert err.endswith(" (invalid_input)\n")


# -- the real stack: ftserve serve, the CLI as a process -------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of 8x8 digits as PNG, and a hidden file the upload must leave out."""
    root = tmp_path_factory.mktemp("digits")
    folder, _ = make_digits_dataset(root / "digits", digits=(0, 1, 7), per_class=20, seed=5)
    (folder / ".notes").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int]]:
    with serving_stack(tmp_path_factory.mktemp("stack")) as found:
        yield found


def api_url(stack: tuple[Stack, int]) -> str:
    return str(stack[0].http.base_url).rstrip("/")


def ftserve(
    stack: tuple[Stack, int], *args: str | Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``ftserve ARGS`` as a process, with FTSERVE_API_URL naming the stack's API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")}
    env.update(FTSERVE_API_URL=api_url(stack), no_proxy="127.0.0.1")
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def trained(stack, digits: Path) -> tuple[str, str]:
    """The digits job, submitted as a folder with ``--wait``: (its id, what the CLI printed)."""
    done = ftserve(
        stack,
        *("jobs", "submit", digits, "--config", json.dumps(CONFIG), "--model-name", "digits"),
        "--wait",
        timeout=600,
    )
    assert (done.returncode, done.stderr) == (0, ""), (done.stdout, stack[0].log())
    return done.stdout.split()[1], done.stdout


def get_job(stack: tuple[Stack, int], job_id: str) -> dict[str, Any]:
    answer = stack[0].http.get(f"/finetune/{job_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def expected_epoch_prefixes(job: dict[str, Any]) -> list[str]:
    planned = {"head": CONFIG["epochs"], "fine_tune": CONFIG["fine_tune_epochs"]}
    names = {"head": "head", "fine_tune": "fine-tune"}
    return [
        f"{names[row['phase']]:<9}  epoch {row['epoch']}/{planned[row['phase']]}  loss "
        for row in job["history"]
    ]


def assert_evaluation_printed(lines: list[str], result: dict[str, Any]) -> None:
    evaluation = result["evaluation"]
    assert result["classes"] == CLASSES
    accuracy = f"accuracy {evaluation['accuracy']:.4f} on {evaluation['count']} validation images"
    assert any(line.startswith(accuracy) for line in lines), lines
    per_class = evaluation["per_class"]
    for name in CLASSES:
        scores = per_class[name]
        row = [f"{scores[k]:.4f}" for k in ("precision", "recall", "f1")]
        assert [name, *row, str(scores["support"])] in [line.split() for line in lines]
    matrix_at = lines.index("confusion matrix (rows: true class, columns: predicted class)")
    assert lines[matrix_at + 1].split() == ["TRUE", "\\", "PREDICTED", *CLASSES]
    matrix = evaluation["confusion_matrix"]
    for offset, (name, counts) in enumerate(zip(CLASSES, matrix, strict=True)):
        assert lines[matrix_at + 2 + offset].split() == [name, *map(str, counts)]


def test_submit_wait_trains_and_prints_the_page_link_and_the_evaluation(stack, trained):
    job_id, out = trained
    job = get_job(stack, job_id)
    assert job["status"] == "succeeded" and job["model_name"] == "digits"
    lines = out.splitlines()
    page = f"page: {api_url(stack)}/ui/#/jobs/{job_id}"
    assert lines[:2] == [f"job {job_id} queued: model digits", page]
    assert lines[-1] == page
    epochs = [line for line in lines if "  epoch " in line]
    assert len(epochs) == len(job["history"]) > CONFIG["epochs"]  # both phases ran
    for line, prefix in zip(epochs, expected_epoch_prefixes(job), strict=True):
        assert line.startswith(prefix), (line, prefix)
    assert f"job {job_id}: succeeded" in lines
    assert_evaluation_printed(lines, job["result"])
    result = job["result"]
    assert f"model digits version {result['version']}, promoted" in out


def test_watch_of_a_finished_job_prints_the_history_and_the_final_table(stack, trained):
    job_id, submitted = trained
    watched = ftserve(stack, "jobs", "watch", job_id)
    assert (watched.returncode, watched.stderr) == (0, "")
    # What submit --wait printed after its first two lines, less the states it saw pass.
    passing = (f"job {job_id}: queued", f"job {job_id}: running")
    expected = [line for line in submitted.splitlines()[2:] if not line.startswith(passing)]
    assert watched.stdout.splitlines() == expected

    as_json = ftserve(stack, "jobs", "watch", job_id, "--json")
    assert (as_json.returncode, as_json.stdout.count("\n")) == (0, 1)
    assert json.loads(as_json.stdout) == get_job(stack, job_id)


def test_list_shows_the_job_in_a_table_and_as_json(stack, trained):
    job_id, _ = trained
    listed = ftserve(stack, "jobs", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "MODEL", "STATUS", "PROGRESS", "CREATED", "(UTC)", "DURATION"]
    row = next(line.split() for line in lines if line.startswith(job_id))
    assert row[1:4] == ["digits", "succeeded", "-"]

    page = ftserve(stack, "jobs", "list", "--status", "succeeded", "--limit", "1", "--json")
    document = json.loads(page.stdout)
    assert (document["limit"], document["offset"]) == (1, 0)
    assert [job["job_id"] for job in document["items"]] == [job_id]


def test_output_into_a_closed_pipe_ends_quietly(stack, trained):
    job_id, _ = trained
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")}
    env.update(FTSERVE_API_URL=api_url(stack), no_proxy="127.0.0.1")
    read, write = os.pipe()
    os.close(read)  # as `ftserve jobs show ID | head -0` leaves it
    try:
        shown = subprocess.run(
            [sys.executable, "-m", "service.cli", "jobs", "show", job_id],
            cwd=ROOT,
            env=env,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert (shown.returncode, shown.stderr) == (141, "")


def test_show_prints_the_summary_history_and_evaluation(stack, trained):
    job_id, _ = trained
    job = get_job(stack, job_id)
    shown = ftserve(stack, "jobs", "show", job_id)
    assert (shown.returncode, shown.stderr) == (0, "")
    lines = shown.stdout.splitlines()
    assert lines[:3] == [
        f"job       {job_id}",
        "model     digits",
        f"status    succeeded (attempt 1 of {job['max_attempts']})",
    ]
    header = lines.index(next(line for line in lines if line.startswith("PHASE")))
    assert lines[header].split()[:4] == ["PHASE", "EPOCH", "LOSS", "ACCURACY"]
    history = lines[header + 1 : header + 1 + len(job["history"])]
    assert [line.split()[:2] for line in history] == [
        [{"head": "head", "fine_tune": "fine-tune"}[row["phase"]], str(row["epoch"])]
        for row in job["history"]
    ]
    assert_evaluation_printed(lines, job["result"])
    assert lines[-1] == f"page: {api_url(stack)}/ui/#/jobs/{job_id}"
    assert json.loads(ftserve(stack, "jobs", "show", job_id, "--json").stdout) == job


def test_cancel_stops_a_second_job(stack, trained, digits: Path):
    long_run = json.dumps({**CONFIG, "epochs": 200, "batch_size": 4})
    submitted = ftserve(
        stack, "jobs", "submit", digits, "--config", long_run, "--model-name", "long", "--json"
    )
    assert submitted.returncode == 0, submitted.stderr
    accepted = json.loads(submitted.stdout)
    job_id = accepted["job_id"]
    assert (accepted["status"], accepted["model_name"]) == ("queued", "long")

    cancelled = ftserve(stack, "jobs", "cancel", job_id)
    assert (cancelled.returncode, cancelled.stderr) == (0, "")
    job = get_job(stack, job_id)
    if job["status"] == "cancelled":
        assert cancelled.stdout == f"job {job_id}: cancelled\n"
    else:  # the worker had claimed it already
        assert (job["status"], job["cancel_requested"]) == ("running", True)
        assert cancelled.stdout == (
            f"job {job_id}: cancel requested; its worker stops after the current batch\n"
        )

    watched = ftserve(stack, "jobs", "watch", job_id, timeout=300)
    assert watched.returncode == 1, watched.stdout
    assert watched.stderr.startswith(f"ftserve: error: job {job_id} cancelled")
    assert get_job(stack, job_id)["status"] == "cancelled"

    again = ftserve(stack, "jobs", "cancel", job_id)  # cancelling twice changes nothing
    assert (again.returncode, again.stdout) == (0, f"job {job_id}: cancelled\n")
    finished = ftserve(stack, "jobs", "cancel", trained[0])
    assert (finished.returncode, finished.stdout) == (2, "")
    assert finished.stderr == (
        f"ftserve: error: job {trained[0]} already succeeded; it cannot be cancelled"
        " (job_finished)\n"
    )


def test_predict_over_http_and_grpc_gives_the_same_answer(stack, trained, digits: Path):
    images = [sorted((digits / name).iterdir())[0] for name in ("digit_7", "digit_0")]
    over_http = ftserve(stack, "predict", "digits", *images, "--json")
    grpc_address = f"127.0.0.1:{stack[1]}"
    over_grpc = ftserve(stack, "predict", "digits", *images, "--json", "--grpc", grpc_address)
    assert (over_http.returncode, over_grpc.returncode) == (0, 0), (over_http, over_grpc)
    http_answer, grpc_answer = json.loads(over_http.stdout), json.loads(over_grpc.stdout)
    version = get_job(stack, trained[0])["result"]["version"]
    assert (http_answer["model"], http_answer["version"]) == ("digits", version)
    assert (grpc_answer["model"], grpc_answer["version"]) == ("digits", version)
    for by_http, by_grpc in zip(
        http_answer["predictions"], grpc_answer["predictions"], strict=True
    ):
        assert by_http["label"] == by_grpc["label"]
        assert [e["label"] for e in by_http["top_k"]] == [e["label"] for e in by_grpc["top_k"]]
        for a, b in zip(by_http["top_k"], by_grpc["top_k"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert sorted(e["label"] for e in by_http["top_k"]) == CLASSES

    table = ftserve(stack, "predict", "digits", *images, "--top-k", "2", "--grpc", grpc_address)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[:2] == [f"digits version {version}", lines[1]]
    assert lines[1].split() == ["IMAGE", "RANK", "LABEL", "SCORE"]
    expected = [
        [str(image), str(rank), entry["label"], f"{entry['score']:.4f}"]
        for image, prediction in zip(images, grpc_answer["predictions"], strict=True)
        for rank, entry in enumerate(prediction["top_k"][:2], start=1)
    ]
    assert [line.split() for line in lines[2:]] == expected


def test_an_unknown_job_exits_2_with_the_apis_message(stack):
    answer = stack[0].http.get("/finetune/no-such-job")
    assert answer.status_code == 404
    error = answer.json()["error"]
    shown = ftserve(stack, "jobs", "show", "no-such-job")
    assert (shown.returncode, shown.stdout) == (2, "")
    assert shown.stderr == f"ftserve: error: {error['message']} ({error['code']})\n"
    watched = ftserve(stack, "jobs", "watch", "no-such-job", "--json")
    assert (watched.returncode, watched.stderr) == (2, "")
    assert json.loads(watched.stdout) == answer.json()


@pytest.fixture
def live_api(tmp_path: Path) -> Iterator[str]:
    """The API alone (no worker) on loopback, taking uploads of at most 64 KiB."""
    from service.api.app import create_app
    from tests.api.conftest import LiveServer, make_settings

    with LiveServer(create_app(make_settings(tmp_path, max_upload_bytes=64 * 1024))) as server:
        yield server.url


def test_an_archive_is_sent_as_it_is_and_a_queued_job_cancels_at_once(live_api, tmp_path, capsys):
    import tarfile

    from PIL import Image

    folder = tmp_path / "shapes"
    for label, color in (("circle", "red"), ("square", "blue")):
        (folder / label).mkdir(parents=True)
        for n in range(3):
            Image.new("RGB", (8, 8), color).save(folder / label / f"{n}.png")
    archive = tmp_path / "shapes.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for label in ("circle", "square"):
            tar.add(folder / label, arcname=label)
    url = ["--api-url", live_api]
    status = main(["jobs", "submit", str(archive), "--model-name", "shapes", "--json", *url])
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    accepted = json.loads(out)
    assert (accepted["status"], accepted["model_name"]) == ("queued", "shapes")

    assert main(["jobs", "list", *url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == [accepted["job_id"], "shapes", "queued", "-"]
    assert main(["jobs", "cancel", accepted["job_id"], *url]) == 0
    assert capsys.readouterr().out == f"job {accepted['job_id']}: cancelled\n"


def test_an_upload_the_api_refuses_mid_body_reports_the_apis_error(live_api, tmp_path, capsys):
    archive = tmp_path / "big.zip"
    archive.write_bytes(os.urandom(4 * 1024 * 1024))  # far past the limit: refused early
    status = main(["jobs", "submit", str(archive), "--model-name", "m", "--api-url", live_api])
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert err.startswith("ftserve: error: The request body is larger than ")
    assert err.endswith(" bytes (upload_too_large)\n")
