"""The API spreads ``POST /predict`` over every model server its gRPC target names.

In a cluster the target is a headless Service (``dns:///...``) whose name resolves to every
TF Serving pod. Here two ``ftserve model-server`` processes serve the same model and the
target lists both addresses (``ipv4:127.0.0.1:P1,127.0.0.1:P2``), which gRPC treats the same
way. Each server's Prometheus request counter says how many predictions it answered; with
gRPC's default policy (pick_first) the first server would answer them all.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api.app import create_app
from tests.api.conftest import TestClient, make_settings
from tests.support.servers import FTSERVE, MODEL, ServerProcess, add_version, labelled_flags
from tests.support.trained import Template

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
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
    flags = [*labelled_flags(repo), f"--monitoring_config_file={monitoring}"]
    servers = [ServerProcess(FTSERVE, flags, root / f"server-{i}.log") for i in range(2)]
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
