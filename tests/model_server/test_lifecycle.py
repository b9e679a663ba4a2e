"""Versions coming and going under a running server, as a publisher and an operator cause them."""

from __future__ import annotations

import shutil
import signal
import threading
import time

import grpc
import pytest
from tensorflow_serving.apis import model_management_pb2

from tests.model_server.conftest import (
    AVAILABLE,
    END,
    FTSERVE,
    MODEL,
    Template,
    add_version,
    image_request,
    repo_flags,
)
from tests.model_server.server_fixtures import LATEST_TWO

CLIENT_THREADS = 8
MIN_REQUESTS = 1000


def latest_version(server, template: Template, model: str = MODEL) -> int:
    request = image_request([template.image()], model=model)
    return server.predict_stub.Predict(request, timeout=30).model_spec.version.value


def test_hot_swap_under_load_loses_no_request(server_kind, start_server, tmp_path, template):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    server = start_server(server_kind, repo_flags(repo))
    server.wait_for_version(1)
    seen: list[list[int]] = [[] for _ in range(CLIENT_THREADS)]
    errors: list[str] = []
    swapped = threading.Event()
    done = threading.Event()

    def client(index: int) -> None:
        request = image_request([template.image(index)])
        after_swap = 0
        while not done.is_set():
            try:
                response = server.predict_stub.Predict(request, timeout=30)
                seen[index].append(response.model_spec.version.value)
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")
            if swapped.is_set():
                after_swap += 1
                if after_swap >= 50 and sum(map(len, seen)) >= MIN_REQUESTS:
                    return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    try:
        while sum(map(len, seen)) < 100 and not errors:
            time.sleep(0.05)
        assert add_version(repo, template.version_dir) == 2
        server.wait_until(
            lambda: {v: s.state for v, s in server.status().items()} == {1: END, 2: AVAILABLE},
            "version 2 to replace version 1",
        )
        swapped.set()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        done.set()
    assert errors == []
    assert sum(map(len, seen)) >= MIN_REQUESTS
    for versions in seen:
        assert set(versions) <= {1, 2}
        # Once a client has been answered by version 2, version 1 never answers it again.
        first_new = versions.index(2)
        assert set(versions[first_new:]) == {2}
    assert any(1 in versions for versions in seen)


def test_staging_half_written_and_broken_versions_never_serve(
    server_kind, start_server, tmp_path, template
):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    server = start_server(server_kind, repo_flags(repo))
    server.wait_for_version(1)
    model_dir = repo / MODEL
    # A publish in progress: a complete model, but under a staging name.
    shutil.copytree(template.version_dir, model_dir / ".staging-0123456789abcdef")
    # A copy in progress: a numeric folder without its graph yet.
    shutil.copytree(template.version_dir / "variables", model_dir / "5" / "variables")
    time.sleep(3)  # three polls
    assert latest_version(server, template) == 1
    assert server.status()[1].state == AVAILABLE
    if server_kind == FTSERVE:
        assert set(server.status()) == {1}

    broken = model_dir / "7"
    shutil.copytree(template.version_dir, broken)
    (broken / "saved_model.pb").write_bytes(b"this is not a graph")
    server.wait_until(lambda: 7 in server.status() and server.status()[7].state == END, "v7 END")
    failed = server.status()[7]
    assert failed.status.error_code != 0
    assert failed.status.error_message
    assert latest_version(server, template) == 1
    assert server.status()[1].state == AVAILABLE

    good = add_version(repo, template.version_dir)
    assert good == 8
    server.wait_for_version(8)
    server.wait_until(lambda: server.status()[1].state == END, "version 1 to be unloaded")
    assert latest_version(server, template) == 8


def test_latest_two_policy_keeps_two_versions(shapes_server, template):
    # The shared server's LATEST_TWO: three versions published, latest { num_versions: 2 }.
    shapes_server.wait_for_version(3, LATEST_TWO)
    shapes_server.wait_for_version(2, LATEST_TWO)
    versions = shapes_server.status(LATEST_TWO)
    assert 1 not in versions or versions[1].state == END
    assert latest_version(shapes_server, template, LATEST_TWO) == 3


def test_reload_config_request_swaps_the_model_list(server_kind, start_server, tmp_path, template):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    add_version(repo, template.version_dir, model="other")
    server = start_server(server_kind, repo_flags(repo))
    server.wait_for_version(1)
    server.wait_for_version(1, model="other")
    request = model_management_pb2.ReloadConfigRequest()
    entry = request.config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = "renamed", str(repo / MODEL), "tensorflow"
    response = server.model_stub.HandleReloadConfigRequest(request, timeout=120)
    assert response.status.error_code == 0
    renamed = image_request([template.image()], model="renamed")
    assert server.predict_stub.Predict(renamed, timeout=30).model_spec.name == "renamed"
    with pytest.raises(grpc.RpcError) as error:
        server.predict_stub.Predict(image_request([template.image()]), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_polled_config_file_picks_up_a_newly_published_model(
    server_kind, start_server, tmp_path, template
):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    flags = [*repo_flags(repo), "--model_config_file_poll_wait_seconds=1"]
    server = start_server(server_kind, flags)
    server.wait_for_version(1)
    add_version(repo, template.version_dir, model="flowers")  # rewrites models.config
    server.wait_for_version(1, model="flowers")
    request = image_request([template.image()], model="flowers")
    assert server.predict_stub.Predict(request, timeout=30).model_spec.name == "flowers"


# -- ftserve's own promises -------------------------------------------------------------


def test_requests_before_the_first_load_are_unavailable(start_server, tmp_path, template):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    server = start_server(FTSERVE, repo_flags(repo))
    # The ports open before models load (TensorFlow Serving opens them after): poll until the
    # server answers, and check every early answer is UNAVAILABLE, never NOT_FOUND.
    codes = []
    while True:
        try:
            server.predict_stub.Predict(image_request([template.image()]), timeout=30)
            break
        except grpc.RpcError as exc:
            codes.append(exc.code())
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
            assert server.process.poll() is None, server.log()
            time.sleep(0.05)
    assert codes  # the server was reachable before the model was


def test_sigterm_finishes_requests_in_flight(start_server, tmp_path, template):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    server = start_server(FTSERVE, [*repo_flags(repo), "--shutdown_grace_seconds=60"])
    server.wait_for_version(1)
    batch = [template.image(i) for i in range(256)]  # slow enough to still be running
    finished: list[float] = []
    failures: list[str] = []
    first_finished = threading.Event()

    def call() -> None:
        try:
            server.predict_stub.Predict(image_request(batch), timeout=120)
            finished.append(time.monotonic())
            first_finished.set()
        except grpc.RpcError as exc:
            failures.append(f"{exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=call) for _ in range(12)]
    for thread in threads:
        thread.start()
    # Long enough for all twelve calls to reach the server on a busy machine, short of the
    # seconds they take to run; on an idle one the first answer comes sooner, and the calls
    # sent with it have reached the server by then while most are still running.
    first_finished.wait(timeout=2.0)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=180)
    assert server.process.wait(timeout=120) == 0, server.log()
    assert failures == []
    assert len(finished) == len(threads)
    assert max(finished) > signalled  # some were still running when the signal came
