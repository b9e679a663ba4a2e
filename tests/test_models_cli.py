"""``ftserve models``: the real CLI against the real API, served by uvicorn on loopback.

Listing, showing, label deletes and refusals run on fake versions (plain files) with no
model server (versions say UNKNOWN). Label moves, rollback and deletes wait for a model
server to load or unload versions, so they run against one real ``ftserve model-server``
per module, serving copies of the session's exported model.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from service.api.app import create_app
from service.cli import main
from service.contract.repository import ASSETS_EXTRA, MODEL_CARD_FILE, ModelRepository
from service.contract.serving_state import ServingState
from tests.api.conftest import LiveServer, make_settings
from tests.support.import_rules import TF, Rule, violations
from tests.support.servers import FTSERVE, ServerProcess, free_port
from tests.support.trained import Template

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"
Serve = Callable[..., AbstractContextManager[str]]


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's API address, token or HTTP proxy must not reach these tests."""
    for name in ("FTSERVE_API_URL", "FTSERVE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


def card(created: str, accuracy: float, macro_f1: float, decision: str | None) -> dict[str, Any]:
    """A model card with what ``GET /models/{name}`` shows of one."""
    promotion = None if decision is None else {"decision": decision, "reason": "test"}
    evaluation = {"accuracy": accuracy, "macro_f1": macro_f1, "loss": 0.5, "count": 12}
    return {"created": created, "evaluation": evaluation, "promotion": promotion}


def publish(
    repo: ModelRepository, model: str, model_card: dict[str, Any], source: Path | None = None
) -> int:
    """The next version of ``model``: a copy of ``source``, else a fake, with ``model_card``."""
    with repo.staging(model) as staging:
        if source is None:
            (staging / "saved_model.pb").write_bytes(b"\x08\x01fake-graph")
        else:
            shutil.copytree(source, staging, dirs_exist_ok=True)
        (staging / ASSETS_EXTRA).mkdir(exist_ok=True)
        (staging / ASSETS_EXTRA / MODEL_CARD_FILE).write_text(json.dumps(model_card))
        return repo.publish(model, staging)


def set_labels(repo: ModelRepository, model: str, *moves: tuple[str, int]) -> None:
    def move(state: ServingState) -> None:
        for label, version in moves:
            state.set_label(label, version)

    repo.update_state(model, move)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``ftserve models ARGS`` in this process: (exit status, stdout, stderr)."""
    status = main(["models", *args])
    out, err = capsys.readouterr()
    return status, out, err


def error_of(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, str]:
    """The error document ``ftserve models ARGS --json`` prints, checking it exits 2."""
    status, out, err = run(capsys, *args, "--json")
    assert (status, err, out.count("\n")) == (2, "", 1), (status, out, err)
    body = json.loads(out)
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "message"], body
    return body["error"]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``with serve(**settings) as url``: the API on loopback, repository under tmp_path."""

    @contextmanager
    def start(**overrides: object) -> Iterator[str]:
        with LiveServer(create_app(make_settings(tmp_path, **overrides))) as server:
            yield server.url

    yield start


# -- fake versions, no model server ----------------------------------------------------------

SHAPES_CARDS = [
    card("2024-05-01T10:00:00Z", 0.8125, 0.8, "promoted"),
    card("2024-05-02T11:30:00Z", 0.9, 0.88, "promoted"),
    card("2024-05-03T09:15:00Z", 0.85, 0.84, "held"),
]


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    """``shapes`` 1-3 (stable 2, after 1; canary 3) and ``flowers`` 1 (stable), no cards."""
    repo = ModelRepository(tmp_path / "models")
    for model_card in SHAPES_CARDS:
        publish(repo, "shapes", model_card)
    set_labels(repo, "shapes", ("stable", 1), ("stable", 2), ("canary", 3))
    publish(repo, "flowers", {})
    set_labels(repo, "flowers", ("stable", 1))
    return repo


@pytest.fixture
def api(serve: Serve, repo: ModelRepository, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The API on ``repo``, with FTSERVE_API_URL pointing at it (so no --api-url needed)."""
    with serve(model_repo=repo.root) as url:
        monkeypatch.setenv("FTSERVE_API_URL", url)
        yield url


def test_list_prints_a_table_of_models_versions_and_labels(api, capsys):
    assert run(capsys, "list") == (
        0,
        "NAME     VERSIONS  LABELS\n"
        "flowers  1         stable=1\n"
        "shapes   1,2,3     canary=3 stable=2\n",
        "",
    )


def test_list_json_prints_the_apis_document_on_one_line(api, capsys):
    status, out, err = run(capsys, "list", "--json")
    assert (status, err) == (0, "")
    flowers = {"name": "flowers", "versions": [1], "labels": {"stable": 1}}
    shapes = {"name": "shapes", "versions": [1, 2, 3], "labels": {"canary": 3, "stable": 2}}
    assert out == json.dumps({"models": [flowers, shapes]}) + "\n"


def test_show_prints_labels_then_a_version_table(api, capsys):
    unreachable = version_error(capsys, "shapes")
    status, out, err = run(capsys, "show", "shapes")
    assert (status, err) == (0, "")
    assert out == (
        "shapes labels: canary=3 stable=2\n"
        "VERSION  SERVED  STATE    LABELS  ACCURACY  MACRO F1  CREATED               PROMOTION\n"
        "1        no      UNKNOWN  -       0.8125    0.8000    2024-05-01T10:00:00Z  promoted\n"
        "2        yes     UNKNOWN  stable  0.9000    0.8800    2024-05-02T11:30:00Z  promoted\n"
        "3        yes     UNKNOWN  canary  0.8500    0.8400    2024-05-03T09:15:00Z  held\n"
        f"versions 1, 2, 3: {unreachable}\n"
    )


def version_error(capsys: pytest.CaptureFixture[str], model: str) -> str:
    """The error every version of ``model`` reports (the model server cannot be asked)."""
    status, out, _ = run(capsys, "show", model, "--json")
    errors = {version["error"] for version in json.loads(out)["versions"]}
    assert status == 0 and len(errors) == 1, errors
    return errors.pop()


def test_show_json_is_the_model_detail(api, capsys):
    status, out, err = run(capsys, "show", "flowers", "--json")
    assert (status, err, out.count("\n")) == (0, "", 1)
    detail = json.loads(out)
    (version,) = detail.pop("versions")
    assert detail == {"name": "flowers", "labels": {"stable": 1}}
    assert version["error"]
    assert version == {
        "version": 1,
        "served": True,
        "state": "UNKNOWN",
        "error": version["error"],
        "labels": ["stable"],
        "created_at": None,
        "metrics": {},
        "promotion": None,
        "onnx_url": None,
        "card_url": None,
    }


def test_show_a_model_without_cards_prints_dashes(api, capsys):
    unreachable = version_error(capsys, "flowers")
    assert run(capsys, "show", "flowers") == (
        0,
        "flowers labels: stable=1\n"
        "VERSION  SERVED  STATE    LABELS  ACCURACY  MACRO F1  CREATED  PROMOTION\n"
        "1        yes     UNKNOWN  stable  -         -         -        -\n"
        f"version 1: {unreachable}\n",
        "",
    )


def test_delete_label_prints_the_labels_left(api, capsys, repo: ModelRepository):
    assert run(capsys, "label", "shapes", "canary", "--delete") == (
        0,
        "shapes labels: stable=2\n",
        "",
    )
    assert repo.serving_state("shapes").labels == {"stable": 2}


def test_delete_stable_label_needs_force(api, capsys, repo: ModelRepository):
    status, out, err = run(capsys, "label", "shapes", "stable", "--delete")
    assert (status, out) == (2, "")
    assert err.startswith("ftserve: error: 'stable' answers /predict by default")
    assert err.endswith(" (label_in_use)\n")
    assert run(capsys, "label", "shapes", "stable", "--delete", "--force") == (
        0,
        "shapes labels: canary=3\n",
        "",
    )


def test_delete_labelled_version_exits_2_with_version_labelled(api, capsys, repo):
    assert run(capsys, "delete", "shapes", "--version", "3") == (
        2,
        "",
        "ftserve: error: Version 3 of model 'shapes' is labelled canary: move or delete"
        " those labels first (version_labelled)\n",
    )
    assert error_of(capsys, "delete", "shapes", "--version", "3") == {
        "code": "version_labelled",
        "message": "Version 3 of model 'shapes' is labelled canary: move or delete those"
        " labels first",
    }
    assert repo.versions("shapes") == [1, 2, 3]


def test_unknown_model_exits_2_with_model_not_found(api, capsys):
    message = "No model named 'tulips' in the model repository"
    assert run(capsys, "show", "tulips") == (
        2,
        "",
        f"ftserve: error: {message} (model_not_found)\n",
    )
    assert error_of(capsys, "rollback", "tulips") == {"code": "model_not_found", "message": message}


def test_label_move_to_a_missing_version_exits_2(api, capsys, repo):
    assert run(capsys, "label", "shapes", "canary", "9") == (
        2,
        "",
        "ftserve: error: Model 'shapes' has no version 9 (version_not_found)\n",
    )
    assert repo.serving_state("shapes").labels == {"canary": 3, "stable": 2}


def test_names_cannot_reach_other_routes(api, capsys):
    # Each name is quoted as one path segment: "../models" cannot turn `show` into `list`.
    assert error_of(capsys, "show", "..")["code"] == "invalid_model_name"
    assert error_of(capsys, "show", "../models")["code"] == "not_found"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["label", "shapes", "stable", "3", "--force"], "--force goes with --delete"),
        (
            ["delete", "shapes", "--version", "3", "--force"],
            "--force deletes the whole model; it does not go with --version",
        ),
    ],
)
def test_force_where_it_means_nothing_is_refused_before_any_request(capsys, args, message):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request would fail otherwise
    assert run(capsys, *args, "--api-url", url) == (2, "", f"ftserve: error: {message}\n")


def test_token_is_sent_from_the_environment(serve: Serve, repo, capsys, monkeypatch):
    with serve(model_repo=repo.root, api_token=TOKEN) as url:
        assert run(capsys, "list", "--api-url", url) == (
            2,
            "",
            "ftserve: error: Send the API token as 'Authorization: Bearer <token>'"
            " (unauthorized)\n",
        )
        monkeypatch.setenv("FTSERVE_API_TOKEN", "wrong")
        assert error_of(capsys, "list", "--api-url", url) == {
            "code": "unauthorized",
            "message": "The API token is not valid",
        }
        monkeypatch.setenv("FTSERVE_API_TOKEN", TOKEN)
        status, out, err = run(capsys, "list", "--api-url", url)
    assert (status, err) == (0, "")
    assert out.splitlines()[0] == "NAME     VERSIONS  LABELS"


def test_unreachable_api_exits_2(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert run(capsys, "list", "--api-url", url) == (
        2,
        "",
        f"ftserve: error: Cannot reach the API at {url}/models: [Errno 111] Connection refused"
        " (api_unreachable)\n",
    )
    assert error_of(capsys, "show", "shapes", "--api-url", url)["code"] == "api_unreachable"


def test_an_api_that_does_not_answer_times_out(capsys):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never accepts
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert run(capsys, "list", "--api-url", url, "--timeout", "0.2") == (
            2,
            "",
            f"ftserve: error: No answer from the API at {url}/models within 0.2 s"
            " (api_unreachable)\n",
        )


@pytest.mark.parametrize("seconds", ["0", "-1", "inf", "nan", "soon"])
def test_timeout_must_be_a_positive_number(capsys, seconds: str):
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "list", "--timeout", seconds])
    assert exit_info.value.code == 2
    assert "argument --timeout" in capsys.readouterr().err


def test_not_an_http_url_is_refused(capsys):
    assert run(capsys, "list", "--api-url", "file:///etc/passwd") == (
        2,
        "",
        "ftserve: error: The API URL must look like http://host:port, not 'file:///etc/passwd'"
        " (invalid_api_url)\n",
    )


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # stderr belongs to the CLI under test


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP file server on loopback, serving ``tmp_path/site``: not the API."""
    site = tmp_path / "site"
    (site / "models").mkdir(parents=True)
    (site / "models" / "shapes").write_text("<html>shapes</html>")
    handler = functools.partial(_QuietFiles, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()
        thread.join()


def test_answers_that_are_not_the_apis_are_reported(file_server: str, capsys):
    def error(*args: str) -> dict[str, str]:
        return error_of(capsys, *args, "--api-url", file_server)

    assert error("show", "shapes") == {
        "code": "bad_response",
        "message": f"{file_server}/models/shapes answered 200 without a JSON object:"
        " is it the ftserve API?",
    }
    assert error("show", "tulips") == {
        "code": "bad_response",
        "message": f"{file_server}/models/tulips answered 404 Not Found, not an ftserve API error",
    }
    # A redirect is not followed: urllib would send the token along to wherever it points.
    assert error("list") == {
        "code": "bad_response",
        "message": f"{file_server}/models answered 301 Moved Permanently (to /models/),"
        " not an ftserve API error",
    }


def ftserve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "models", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ftserve_models_as_a_process(api: str):
    env = {**os.environ, "FTSERVE_API_URL": api}
    listed = ftserve(env, "list")
    assert (listed.returncode, listed.stderr) == (0, "")
    assert listed.stdout == (
        "NAME     VERSIONS  LABELS\n"
        "flowers  1         stable=1\n"
        "shapes   1,2,3     canary=3 stable=2\n"
    )
    unknown = ftserve(env, "show", "tulips")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr == (
        "ftserve: error: No model named 'tulips' in the model repository (model_not_found)\n"
    )


def test_the_client_imports_neither_the_api_nor_tensorflow():
    rule = Rule("service.api_client", ("service.api", *TF), "the CLI's client is stdlib only")
    assert violations(ROOT, (rule,)) == []


# -- a real model server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, template: Template
) -> Iterator[tuple[ModelRepository, ServerProcess]]:
    """An empty repository and ``ftserve model-server`` watching its models.config."""
    root = tmp_path_factory.mktemp("models-cli")
    repo = ModelRepository(root / "models")
    repo.root.mkdir()
    repo.write_models_config()
    # models.config as the serving states render it, reread every second; TF Serving checks
    # labels before it loads anything, so a config with labels needs the last flag.
    flags = [
        f"--model_config_file={repo.config_path}",
        "--file_system_poll_wait_seconds=1",
        "--model_config_file_poll_wait_seconds=1",
        "--allow_version_labels_for_unavailable_models=true",
    ]
    process = ServerProcess(FTSERVE, flags, root / "server.log")
    try:
        yield repo, process  # label moves wait for it to answer; nothing else needs to
    finally:
        process.stop()


@pytest.fixture
def served_api(
    served: tuple[ModelRepository, ServerProcess], serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The API on the module's repository and model server, FTSERVE_API_URL set to it."""
    repo, process = served
    model_server = f"127.0.0.1:{process.port}"
    # A version that never loads fails its test in a minute, not in the default five.
    settings = {"model_server": model_server, "label_move_timeout_seconds": 60}
    with serve(model_repo=repo.root, **settings) as url:
        monkeypatch.setenv("FTSERVE_API_URL", url)
        yield url


def publish_copies(served, template: Template, model: str, count: int) -> list[int]:
    """``count`` versions of ``model``, copies of the template, with the SHAPES cards."""
    repo, _ = served
    cards = SHAPES_CARDS[:count]
    return [publish(repo, model, model_card, template.version_dir) for model_card in cards]


def test_label_move_waits_for_the_version_then_show_has_it_available(
    served, served_api, template, capsys
):
    repo, process = served
    assert publish_copies(served, template, "moved", 2) == [1, 2]
    set_labels(repo, "moved", ("stable", 1))
    process.wait_for_version(1, model="moved")

    assert run(capsys, "label", "moved", "canary", "2") == (
        0,
        "moved labels: canary=2 stable=1\n",
        "",
    )
    assert run(capsys, "show", "moved") == (
        0,
        "moved labels: canary=2 stable=1\n"
        "VERSION  SERVED  STATE      LABELS  ACCURACY  MACRO F1  CREATED               PROMOTION\n"
        "1        yes     AVAILABLE  stable  0.8125    0.8000    2024-05-01T10:00:00Z  promoted\n"
        "2        yes     AVAILABLE  canary  0.9000    0.8800    2024-05-02T11:30:00Z  promoted\n",
        "",
    )


def test_rollback_points_stable_back_then_has_nowhere_to_go(served, served_api, template, capsys):
    repo, _ = served
    publish_copies(served, template, "rolled", 2)
    set_labels(repo, "rolled", ("stable", 1), ("stable", 2))

    assert run(capsys, "rollback", "rolled") == (0, "rolled labels: stable=1\n", "")
    assert repo.serving_state("rolled").labels == {"stable": 1}
    assert run(capsys, "rollback", "rolled") == (
        2,
        "",
        "ftserve: error: Model 'rolled' has no earlier stable version to roll back to"
        " (no_previous_version)\n",
    )


def test_delete_a_version_then_the_whole_model(served, served_api, template, capsys):
    repo, process = served
    publish_copies(served, template, "pruned", 3)
    set_labels(repo, "pruned", ("stable", 1))
    process.wait_for_version(1, model="pruned")

    assert run(capsys, "delete", "pruned", "--version", "3") == (
        0,
        "pruned: deleted version 3\n",
        "",
    )
    assert error_of(capsys, "delete", "pruned")["code"] == "label_in_use"
    assert run(capsys, "delete", "pruned", "--force") == (
        0,
        "pruned: deleted versions 1, 2 (the whole model)\n",
        "",
    )
    assert repo.versions("pruned") == []
    assert "pruned" not in run(capsys, "list")[1]
