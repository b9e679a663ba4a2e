"""``ftserve model-server`` as a command: batching, single-model flags, start-up errors.

The two batching tests share one server: the first compares metrics before and after its
own requests, the second only sends requests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.cli import main
from tests.model_server.conftest import (
    FTSERVE,
    MODEL,
    ServerProcess,
    Template,
    add_version,
    image_request,
    outputs,
)
from tests.support.servers import WindingDown

BATCHING = """
max_batch_size { value: 16 }
batch_timeout_micros { value: 100000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
"""


def batch_sizes(metrics_text: str) -> tuple[float, float]:
    """(number of batches, rows in them) from the processed batch size histogram."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == ":tensorflow:serving:batching:processed_batch_size":
            samples = {
                s.name: s.value for s in family.samples if s.labels.get("model_name") == MODEL
            }
            return samples[family.name + "_count"], samples[family.name + "_sum"]
    raise AssertionError("no batch size histogram in the metrics")


@pytest.fixture(scope="module")
def batching_server(
    tmp_path_factory: pytest.TempPathFactory, template: Template, winding_down: WindingDown
) -> Iterator[ServerProcess]:
    """One model from the single-model flags, batching on, with Prometheus metrics."""
    root = tmp_path_factory.mktemp("batching")
    add_version(root / "repo", template.version_dir)
    (root / "batching.config").write_text(BATCHING)
    (root / "monitoring.config").write_text("prometheus_config { enable: true }")
    flags = [
        f"--model_name={MODEL}",
        f"--model_base_path={root / 'repo' / MODEL}",
        "--enable_batching=true",
        f"--batching_parameters_file={root / 'batching.config'}",
        f"--monitoring_config_file={root / 'monitoring.config'}",
    ]
    server = ServerProcess(FTSERVE, flags, root / "server.log")
    server.wait_for_version(1)
    yield server
    winding_down.add(server)


def test_batching_merges_concurrent_requests_without_mixing_results(
    batching_server: ServerProcess, template: Template
):
    server = batching_server
    images = [template.image(i) for i in range(len(template.images))]
    # One at a time first: each answer as a batch of one would give it.
    alone = [outputs(server.predict_stub.Predict(image_request([x]), timeout=30)) for x in images]
    before = batch_sizes(server.http.get("/monitoring/prometheus/metrics").text)
    results: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    errors: list[str] = []

    def client(thread: int) -> None:
        for step in range(6):
            index = (thread + step) % len(images)
            try:
                response = server.predict_stub.Predict(image_request([images[index]]), timeout=60)
                results[(thread, index)] = outputs(response)
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=client, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    for (_, index), got in results.items():
        np.testing.assert_allclose(got["probabilities"], alone[index]["probabilities"], atol=1e-5)
        np.testing.assert_array_equal(got["labels"], alone[index]["labels"])
    batches, rows = np.subtract(
        batch_sizes(server.http.get("/monitoring/prometheus/metrics").text), before
    )
    assert rows == 16 * 6
    assert batches < rows  # some batch held more than one request


def test_a_bad_image_in_a_batch_fails_only_its_own_request(
    batching_server: ServerProcess, template: Template
):
    server = batching_server
    payloads = [template.image(0), b"not an image", template.image(1), template.image(2)]
    versions: dict[int, int] = {}
    refusals: dict[int, grpc.StatusCode] = {}

    def call(index: int) -> None:
        try:
            response = server.predict_stub.Predict(image_request([payloads[index]]), timeout=60)
            versions[index] = response.model_spec.version.value
        except grpc.RpcError as exc:
            refusals[index] = exc.code()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert refusals == {1: grpc.StatusCode.INVALID_ARGUMENT}
    assert versions == {0: 1, 2: 1, 3: 1}


@pytest.fixture
def own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ftserve model-server`` sets TF_ENABLE_ONEDNN_OPTS for itself; in this process the
    setting must end with the test, not reach the processes later tests start."""
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")


@pytest.mark.usefixtures("own_environment")
def test_model_server_without_a_model_is_a_usage_error(capsys: pytest.CaptureFixture[str]):
    assert main(["model-server", "--port=0"]) == 2
    assert "--model_config_file" in capsys.readouterr().err


@pytest.mark.usefixtures("own_environment")
def test_model_server_with_an_unreadable_config_file_exits_2(tmp_path: Path, caplog):
    config = tmp_path / "models.config"
    config.write_text("model_config_list { config { name: 'x' base_path: '/x' unknown: 1 } }")
    assert main(["model-server", "--port=0", f"--model_config_file={config}"]) == 2
    assert f"cannot read {config}" in caplog.text


def test_model_server_rejects_batching_file_without_batching(capsys: pytest.CaptureFixture[str]):
    argv = ["model-server", "--model_base_path=/m", "--batching_parameters_file=/b"]
    assert main(argv) == 2
    assert "--enable_batching" in capsys.readouterr().err
