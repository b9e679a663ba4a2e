"""``--ssl_config_file``: the gRPC port speaks TLS and, with client_verify, wants a client cert."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from tests.model_server.conftest import FTSERVE, ServerProcess
from tests.model_server.upstream_flags import TLS_GROUP, UPSTREAM_FLAGS
from tests.support.servers import WindingDown

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
MODEL = "m"


def self_signed(directory: Path) -> tuple[bytes, bytes]:
    """A key and a certificate for localhost that signs itself: server, client and CA."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return key.read_bytes(), cert.read_bytes()


def status(channel: grpc.Channel) -> list[tuple[int, int]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
    return [(s.version, s.state) for s in response.model_version_status]


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, saved_model: Path, winding_down: WindingDown
) -> Iterator[tuple[ServerProcess, bytes, bytes]]:
    root = tmp_path_factory.mktemp("tls")
    key, cert = self_signed(root)
    ssl_config = root / "ssl.config"
    ssl_config.write_text(
        f"server_key: {key.decode()!r}\nserver_cert: {cert.decode()!r}\n"
        f"custom_ca: {cert.decode()!r}\nclient_verify: true\n"
    )
    shutil.copytree(saved_model, root / "models" / "1")
    files = {"ssl_config_file": str(ssl_config), "model_base_path": str(root / "models")}
    flags = [f"--{name}={UPSTREAM_FLAGS[name].format(**files)}" for name in TLS_GROUP]
    server = ServerProcess(FTSERVE, flags, root / "server.log")
    credentials = grpc.ssl_channel_credentials(cert, key, cert)
    with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
        server.wait_until(lambda: status(channel) == [(1, AVAILABLE)], "m AVAILABLE over TLS")
    yield server, key, cert
    winding_down.add(server)


def test_client_with_a_certificate_is_served_over_tls(tls_server):
    server, key, cert = tls_server
    credentials = grpc.ssl_channel_credentials(cert, key, cert)

    with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
        assert status(channel) == [(1, AVAILABLE)]
    assert "Using SSL credentials" in server.log_path.read_text()


def test_plain_text_client_is_refused(tls_server):
    server, _, _ = tls_server

    with (
        grpc.insecure_channel(f"localhost:{server.port}") as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        status(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_without_a_certificate_is_refused_with_client_verify(tls_server):
    server, _, cert = tls_server

    credentials = grpc.ssl_channel_credentials(cert)
    with (
        grpc.secure_channel(f"localhost:{server.port}", credentials) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        status(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_session_parallelism_sizes_both_thread_pools(tls_server):
    server, _, _ = tls_server

    assert "TensorFlow threads: intra-op 1, inter-op 1" in server.log_path.read_text()
