"""The API spreads ``POST /predict`` over every model server its gRPC target names.

In a cluster the target is a headless Service (``dns:///...``) whose name resolves to every
TF Serving pod. Here two ``ftserve model-server`` processes serve the same model and the
target lists both addresses (``ipv4:127.0.0.1:P1,127.0.0.1:P2``), which gRPC treats the same
way. Each server's Prometheus request counter says how many predictions it answered; with
gRPC's default policy (pick_first) the first server would answer them all.

Since predictions take turns, a label move is done only once every server has applied it:
the second server reads ``models.config`` far less often than the first, and a move must
wait for it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api.app import create_app
from service.contract.lifecycle import Lifecycle
from service.contract.repository import ModelRepository
from service.contract.serving_state import STABLE
from service.model_client import PredictClient
from tests.api.conftest import TestClient, make_settings
from tests.support.servers import FTSERVE, MODEL, ServerProcess, add_version, labelled_flags
from tests.support.trained import Template

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
# How often the second server reads models.config (the first: every second).
SLOW_POLL_SECONDS = 5
REQUESTS = 40
_ANSWERED = re.compile(
    r'^:tensorflow:serving:request_count\{API="predict",model_name="(?P<model>[^"]*)",'
    r'status="OK"\} (?P<count>\d+)$',
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def two_servers(
    tmp_path_factory: pytest.TempPathFactory, template: Template
) -> Iterator[tuple[list[ServerProcess], Path]]:
    """Two model servers on one repository (version 1 of ``shapes``, labelled ``stable``)."""
    root = tmp_path_factory.mktemp("load-spread")
    repo = root / "models"
    add_version(repo, template.version_dir, label="stable")
    monitoring = root / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{PROMETHEUS_PATH}" }}')
    servers = [
        ServerProcess(
            FTSERVE,
            [*labelled_flags(repo, poll), f"--monitoring_config_file={monitoring}"],
            root / f"server-{i}.log",
        )
        for i, poll in enumerate((1, SLOW_POLL_SECONDS))
    ]
    try:
        for server in servers:
            server.wait_for_version(1)
        yield servers, repo
    finally:
        for server in servers:
            server.stop()


def predictions_answered(server: ServerProcess) -> int:
    """Predict calls on ``shapes`` the server has answered with OK, from its metrics."""
    text = server.http.get(PROMETHEUS_PATH).text
    return sum(int(m["count"]) for m in _ANSWERED.finditer(text) if m["model"] == MODEL)


def test_predictions_take_turns_over_every_model_server(
    two_servers: tuple[list[ServerProcess], Path], template: Template, tmp_path: Path
):
    servers, repo = two_servers
    target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server in servers)
    settings = make_settings(tmp_path, model_server=target, model_repo=repo)
    before = [predictions_answered(server) for server in servers]
    body = {"model": MODEL, "instances": [{"b64": base64.b64encode(template.image()).decode()}]}
    with TestClient(create_app(settings)) as client:
        for _ in range(REQUESTS):
            response = client.post("/predict", json=body)
            assert response.status_code == 200, response.text
    answered = [predictions_answered(s) - count for s, count in zip(servers, before, strict=True)]
    assert sum(answered) == REQUESTS
    # Turns start once both connections are up: the first call or two may find only one.
    assert min(answered) >= REQUESTS // 4, answered


def test_a_label_move_waits_for_every_model_server(
    two_servers: tuple[list[ServerProcess], Path], template: Template
):
    servers, repo = two_servers
    repository = ModelRepository(repo)
    version = add_version(repo, template.version_dir, model="spread")
    target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server in servers)

    async def move() -> None:
        client = PredictClient(target, 10)
        try:
            assert len(await client.each_server()) == 2
            lifecycle = Lifecycle(repository, client, timeout=60, poll_seconds=0.1)
            await lifecycle.set_label("spread", STABLE, version)
        finally:
            await client.close()

    started = time.monotonic()
    asyncio.run(move())
    # Asked just now, each server resolves the label to the new version: the move waited
    # for the slow one too, not only for whichever the shared channel reached first.
    for server in servers:
        assert server.label_version("spread", STABLE) == version
    assert time.monotonic() - started < 60
