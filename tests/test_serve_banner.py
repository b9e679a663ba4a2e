"""``ftserve serve`` prints one banner once the stack is ready, and every address in it answers.

The stack runs as a user runs it (``python -m service.cli serve`` on free ports), on a
Postgres schema of its own reached with a password, and with an API token: neither may
appear in its output. The banner's pure parts (several workers, a wildcard host, a model
server started elsewhere) are checked without processes.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text

from service import stack as stack_module
from service.config import Settings
from service.stack import Ports, ReadyWatch, banner, child_commands, masked_url, worker_names
from tests.jobs.conftest import postgres_schema
from tests.support.servers import free_port
from tests.support.stack import Stack, serve_command

PASSWORD = "not-shown-7c1e"
TOKEN = "banner-token-5d2a"
LABELS = [
    "API",
    "web page",
    "API docs",
    "model server",
    "model repository",
    "job store",
    "workers",
    "API token",
]
# What TensorFlow prints at start-up on a machine without a GPU, unless silenced.
NOISE = ("cuda", "cudnn", "cufft", "cublas", "tf-trt", "absl::initializelog", "onednn custom")


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with postgres_schema("ftserve_banner") as url:
        yield url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, database_url: str
) -> Iterator[tuple[Stack, Ports, Path]]:
    root = tmp_path_factory.mktemp("banner")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the defaults of service.quiet_tensorflow apply
    env.update(
        FTSERVE_DATA_ROOT=str(root / "data"),
        FTSERVE_WORK_DIR=str(root / "jobs"),
        FTSERVE_MODEL_REPO=str(root / "models"),
        FTSERVE_WEIGHTS_DIR=str(root / "weights"),
        FTSERVE_DATABASE_URL=database_url,
        FTSERVE_API_TOKEN=TOKEN,
    )
    api, grpc_port = free_port(), free_port()
    command = serve_command(api, grpc_port)
    rest = int(command[-1].partition("=")[2])
    command.append("--workers=2")
    running = Stack(root, command, env, api)
    try:
        yield running, Ports(api, grpc_port, rest), root
    finally:
        assert running.stop() == 0, running.log()


def banner_rows(stack: Stack, timeout: float = 180) -> list[tuple[str, str]]:
    """The banner's rows, (label, value), once it is printed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = stack.log_path.read_text(errors="replace")
        found = re.search(r"^ftserve is ready:\n(.*?)^Ctrl-C stops them all\.$", log, re.M | re.S)
        if found:
            cells = [
                re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in found[1].splitlines()
            ]
            return [(label, value) for label, value in cells]
        assert stack.process.poll() is None, stack.log()
        time.sleep(0.3)
    pytest.fail(f"no banner:\n{stack.log()}")


def test_banner_lists_every_address_and_each_answers(served):
    stack, ports, root = served

    rows = dict(banner_rows(stack))

    assert list(rows) == LABELS
    api = f"http://127.0.0.1:{ports.api}"
    assert rows["API"] == api
    assert rows["web page"] == f"{api}/ui/"
    assert rows["API docs"] == f"{api}/docs"
    grpc_address, rest_url = re.fullmatch(r"gRPC (\S+)\s+REST (\S+)", rows["model server"]).groups()
    assert (grpc_address, rest_url) == (
        f"127.0.0.1:{ports.grpc}",
        f"http://127.0.0.1:{ports.rest}",
    )
    assert rows["model repository"] == str(root / "models")
    assert rows["job store"].startswith("postgresql+psycopg://postgres:***@127.0.0.1:5432/test?")
    assert rows["API token"] == "required: Authorization: Bearer $FTSERVE_API_TOKEN"

    with httpx.Client(timeout=30) as http:
        assert http.get(f"{api}/healthz").status_code == 200
        assert http.get(f"{api}/readyz").json()["status"] == "ready"
        home = http.get(api)
        assert (home.status_code, home.headers["location"]) == (307, "/ui/")
        for page in (rows["web page"], rows["API docs"]):  # no token needed for either
            answer = http.get(page)
            assert answer.status_code == 200, page
            assert answer.headers["content-type"].startswith("text/html"), page
        assert http.get(f"{api}/models").status_code == 401  # the token is required
        authorized = http.get(f"{api}/models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert authorized.status_code == 200
        unknown = http.get(f"{rest_url}/v1/models/absent")
        assert unknown.status_code == 404 and "error" in unknown.json()
    with grpc.insecure_channel(grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (Path(rows["model repository"]) / "models.config").is_file()
    engine = create_engine(rows["job store"].replace("***", PASSWORD))
    try:
        with engine.connect() as db:
            assert db.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
    finally:
        engine.dispose()


def test_banner_workers_are_the_running_worker_processes(served):
    stack, _, _ = served
    rows = dict(banner_rows(stack))

    count, pids = re.fullmatch(r"(\d+) \(pids? ([\d, ]+)\)", rows["workers"]).groups()

    workers = [int(pid) for pid in pids.split(", ")]
    assert int(count) == len(workers) == 2  # `ftserve serve --workers=2`
    for pid in workers:
        assert (
            "service.cli worker"
            in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        )
        assert Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1] == str(
            stack.process.pid
        )


def test_banner_comes_once_and_the_output_keeps_secrets_and_tensorflow_noise_out(served):
    stack, _, _ = served
    banner_rows(stack)

    log = stack.log_path.read_text(errors="replace")

    assert log.count("ftserve is ready:") == 1
    assert PASSWORD not in log and TOKEN not in log
    noisy = [line for line in log.splitlines() if any(n in line.lower() for n in NOISE)]
    assert noisy == []


def test_banner_with_several_workers_a_wildcard_host_and_an_outside_model_server(tmp_path):
    settings = Settings(
        model_repo=tmp_path / "models",
        data_root=tmp_path / "data",
        model_server="tf-serving.internal:8500",
    )
    children = {
        name: subprocess.Popen(["true"])  # any process: the banner reads its pid
        for name in ["model-server", *worker_names(3), "api"]
    }
    for child in children.values():
        child.wait()

    text_ = banner(settings, "0.0.0.0", Ports(9000, 9500, 9501), children)

    pids = ", ".join(str(children[f"worker-{n}"].pid) for n in (1, 2, 3))
    assert text_.splitlines() == [
        "ftserve is ready:",
        "  API               http://127.0.0.1:9000   (listening on every address)",
        "  web page          http://127.0.0.1:9000/ui/",
        "  API docs          http://127.0.0.1:9000/docs",
        "  model server      gRPC tf-serving.internal:8500 (from FTSERVE_MODEL_SERVER)",
        f"  model repository  {tmp_path / 'models'}",
        f"  job store         sqlite:///{tmp_path / 'data' / 'ftserve.db'}",
        f"  workers           3 (pids {pids})",
        "Ctrl-C stops them all.",
    ]


def test_several_workers_are_started_and_an_outside_model_server_is_not(tmp_path):
    settings = Settings(model_repo=tmp_path / "models", model_server="tf-serving.internal:8500")

    commands = child_commands(settings, "127.0.0.1", Ports(), workers=2)

    assert list(commands) == ["worker-1", "worker-2", "api"]
    assert commands["worker-1"][-1] == commands["worker-2"][-1] == "worker"
    with pytest.raises(ValueError, match="at least one worker"):
        worker_names(0)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://u:p%40ss@db:5432/ftserve",
            "postgresql+psycopg://u:***@db:5432/ftserve",
        ),
        ("postgresql+psycopg://u@db/ftserve", "postgresql+psycopg://u@db/ftserve"),
        ("sqlite:////var/data/ftserve.db", "sqlite:////var/data/ftserve.db"),
        ("user:secret@nowhere", "(not a SQLAlchemy URL)"),
    ],
)
def test_job_store_url_is_shown_without_its_password(url, shown):
    assert masked_url(url) == shown


def test_a_stack_not_ready_in_time_says_once_what_it_waits_for(monkeypatch, capsys):
    monkeypatch.setattr(stack_module, "READY_PATIENCE_SECONDS", 0.0)
    port = free_port()  # nothing listens there
    ready: list[bool] = []
    watch = ReadyWatch(
        f"http://127.0.0.1:{port}", [("127.0.0.1", port)], lambda: ready.append(True)
    )

    for _ in range(2):
        watch.next_ask = 0.0
        watch.poll()

    assert ready == []
    assert capsys.readouterr().err == (
        f"ftserve: not ready after 0 s: 127.0.0.1:{port} accepts no connection"
        " (Connection refused)\n"
    )
