"""Version labels follow TensorFlow Serving: a config may only label a version that serves.

``ServerCore::ReloadConfig`` checks the labels before it adds the config's models, so a
label can name only a version an earlier config loaded; otherwise the whole config is
refused with FAILED_PRECONDITION and the old one stays.
``--allow_version_labels_for_unavailable_models`` lets a new (or unchanged) label wait for
its version, but never moves an existing label onto a version that cannot answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from service.model_server.config import ModelSettings, VersionPolicy
from service.model_server.manager import ModelManager, State, load_servable
from service.model_server.servable import Servable
from service.model_server.status import ServingError
from tests.model_server import tiny_repo
from tests.model_server.conftest import (
    AVAILABLE,
    FTSERVE,
    MODEL,
    Template,
    add_version,
    image_request,
    two_version_config,
)
from tests.model_server.server_fixtures import write_config
from tests.model_server.tiny_repo import (
    TIMEOUT,
    CountingLoader,
    PollThread,
    Repo,
    configure,
    not_found,
    refused,
    served,
    settings,
    spec,
    states,
)

TINY = tiny_repo.MODEL


def not_available(version: int, model: str) -> tuple[grpc.StatusCode, str]:
    """The refusal TensorFlow Serving's ``UpdateModelVersionLabelMap`` answers with."""
    return (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"Request to assign label to version {version} of model {model},"
        " which is not currently available for inference",
    )


def refused_config(manager: ModelManager, *models: ModelSettings) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ServingError) as info:
        configure(manager, *models)
    return info.value.code, info.value.message


def specific(*versions: int) -> VersionPolicy:
    return VersionPolicy("specific", versions=frozenset(versions))


@pytest.fixture
def flagged(loader: CountingLoader) -> Iterator[ModelManager]:
    """A manager started with ``--allow_version_labels_for_unavailable_models=true``."""
    manager = ModelManager(
        loader, unload_wait_seconds=30.0, allow_version_labels_for_unavailable_models=True
    )
    yield manager
    manager.unload_all()


# -- the manager ----------------------------------------------------------------------------


def test_label_on_an_available_version_is_accepted(manager: ModelManager, repo: Repo):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()

    configure(manager, settings(repo.base, labels={"stable": 1}))

    assert served(manager, spec(label="stable")) == 1


def test_label_before_anything_loaded_is_refused(manager: ModelManager, repo: Repo):
    repo.add(1)
    labelled = settings(repo.base, labels={"stable": 1})

    assert refused_config(manager, labelled) == not_available(1, TINY)
    assert manager.model_names() == []  # the config was not taken at all


def test_refused_config_adds_no_version_and_keeps_the_old_label(
    manager: ModelManager, repo: Repo, loader: CountingLoader
):
    repo.add(1, 2)
    configure(manager, settings(repo.base, specific(1)))
    manager.poll()
    configure(manager, settings(repo.base, specific(1), {"stable": 1}))

    moved = settings(repo.base, specific(1, 2), {"stable": 2})
    assert refused_config(manager, moved) == not_available(2, TINY)
    manager.poll()

    assert states(manager) == {1: State.AVAILABLE}  # version 2 was never asked for
    assert loader.calls == {(TINY, 1): 1}
    assert served(manager, spec(label="stable")) == 1


def test_one_bad_label_refuses_every_model_of_the_config(manager: ModelManager, repo: Repo):
    repo.add(1)
    other = Repo(repo.base.parent / "other", repo.source)
    other.add(1)
    configure(manager, settings(repo.base))
    manager.poll()

    good = settings(repo.base, labels={"stable": 1})
    bad = settings(other.base, labels={"stable": 1}, name="other")  # "other" is not loaded
    assert refused_config(manager, good, bad) == not_available(1, "other")
    manager.poll()

    assert manager.model_names() == [TINY]
    assert refused(manager, spec(label="stable")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: stable",
    )


def test_label_moves_once_its_loading_version_is_available(repo: Repo):
    repo.add(1)
    entered, go = threading.Event(), threading.Event()

    def gated_loader(name: str, version: int, path: Path) -> Servable:
        if version == 2:
            entered.set()
            if not go.wait(TIMEOUT):
                raise TimeoutError("the test never let version 2 load")
        return load_servable(name, version, path)

    manager = ModelManager(gated_loader, unload_wait_seconds=30.0)
    configure(manager, settings(repo.base, VersionPolicy("all")))
    manager.poll()
    configure(manager, settings(repo.base, VersionPolicy("all"), {"stable": 1}))
    repo.add(2)
    moved = settings(repo.base, VersionPolicy("all"), {"stable": 2})
    poll = PollThread(manager)
    poll.start()
    try:
        assert entered.wait(TIMEOUT)
        assert states(manager)[2] == State.LOADING
        assert refused_config(manager, moved) == not_available(2, TINY)
        assert served(manager, spec(label="stable")) == 1
    finally:
        go.set()
        poll.finish()

    configure(manager, moved)
    assert served(manager, spec(label="stable")) == 2
    manager.unload_all()


# -- the manager with --allow_version_labels_for_unavailable_models --------------------------


def test_flag_accepts_labels_before_anything_loaded(flagged: ModelManager, repo: Repo):
    repo.add(1, 2)
    configure(flagged, settings(repo.base, VersionPolicy("all"), {"stable": 1, "next": 7}))
    flagged.poll()

    assert served(flagged, spec(label="stable")) == 1
    assert refused(flagged, spec(label="next")) == not_found("Specific(m, 7)")


def test_flag_accepts_an_unchanged_label_on_an_unavailable_version(
    flagged: ModelManager, repo: Repo
):
    repo.add(1)
    configure(flagged, settings(repo.base, labels={"next": 2}))
    flagged.poll()

    configure(flagged, settings(repo.base, VersionPolicy("all"), {"next": 2}))
    repo.add(2)
    flagged.poll()

    assert served(flagged, spec(label="next")) == 2


def test_flag_refuses_to_move_a_label_onto_an_unavailable_version(
    flagged: ModelManager, repo: Repo, loader: CountingLoader
):
    repo.add(1, 2)
    configure(flagged, settings(repo.base, specific(1), {"stable": 1}))
    flagged.poll()

    moved = settings(repo.base, specific(1, 2), {"stable": 2})
    assert refused_config(flagged, moved) == not_available(2, TINY)
    flagged.poll()

    assert states(flagged) == {1: State.AVAILABLE}
    assert loader.calls == {(TINY, 1): 1}
    assert served(flagged, spec(label="stable")) == 1


def test_flag_treats_the_label_of_a_dropped_model_as_new(flagged: ModelManager, repo: Repo):
    repo.add(1)
    configure(flagged, settings(repo.base, labels={"stable": 1}))
    flagged.poll()
    configure(flagged)  # drops the model and its labels...

    # ...so, even before a poll unloads it, "stable" may name a version not loaded yet.
    configure(flagged, settings(repo.base, labels={"stable": 5}))

    assert refused(flagged, spec(label="stable")) == not_found("Specific(m, 5)")


# -- the server -----------------------------------------------------------------------------


def model_config(repo: Path, versions: list[int], labels: dict[str, int]) -> ModelServerConfig:
    """MODEL under ``repo``, serving exactly ``versions``, with ``labels``."""
    config = ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = MODEL, str(repo / MODEL), "tensorflow"
    entry.model_version_policy.specific.versions.extend(versions)
    entry.version_labels.update(labels)
    return config


def reload_request(config: ModelServerConfig) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(config)
    return request


def labelled_version(server, template: Template, label: str) -> int:
    request = image_request([template.image()])
    request.model_spec.version_label = label
    return server.predict_stub.Predict(request, timeout=30).model_spec.version.value


def test_start_up_with_a_label_needs_the_flag(server_kind, start_server, tmp_path, template):
    config = two_version_config(tmp_path, template.version_dir)
    server = start_server(server_kind, [f"--model_config_file={config}"])

    code = server.process.wait(timeout=120)

    # TensorFlow Serving's main returns -1; ftserve exits 2 like on any other config error.
    assert code == (2 if server_kind == FTSERVE else 255), server.log()
    assert (
        f"Request to assign label to version 1 of model {MODEL},"
        " which is not currently available for inference"
    ) in server.log()


def test_start_up_with_a_label_and_the_flag_serves_it(shapes_server, template):
    # The shared server started on two_version_config's labels with ALLOW_LABELS.
    assert labelled_version(shapes_server, template, "stable") == 1


def test_polled_config_cannot_label_a_version_before_it_loads(
    server_kind, start_server, tmp_path, template
):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    add_version(repo, template.version_dir)
    config = tmp_path / "labels.config"
    write_config(config, model_config(repo, [1], {}))
    flags = [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"]
    server = start_server(server_kind, flags)
    server.wait_for_version(1)
    write_config(config, model_config(repo, [1], {"stable": 1}))
    server.wait_until(lambda: labelled_version(server, template, "stable") == 1, "stable → 1")

    # Serving version 2 and labelling it in one step is refused, poll after poll.
    write_config(config, model_config(repo, [1, 2], {"stable": 2}))
    refusal = (
        "PollFilesystemAndReloadConfig failed to ReloadConfig: Request to assign label to"
        f" version 2 of model {MODEL}, which is not currently available for inference"
    )
    server.wait_until(lambda: server.log_path.read_text().count(refusal) >= 2, "two refusals")
    assert set(server.status()) == {1}
    assert labelled_version(server, template, "stable") == 1

    # Serving it first, and moving the label once it is AVAILABLE, works.
    write_config(config, model_config(repo, [1, 2], {"stable": 1}))
    server.wait_for_version(2)
    write_config(config, model_config(repo, [1, 2], {"stable": 2}))
    server.wait_until(lambda: labelled_version(server, template, "stable") == 2, "stable → 2")


def test_reload_config_request_with_a_bad_label_fails_the_call(
    server_kind, start_server, tmp_path, template
):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    add_version(repo, template.version_dir)
    config = tmp_path / "labels.config"
    write_config(config, model_config(repo, [1], {}))
    server = start_server(server_kind, [f"--model_config_file={config}"])
    server.wait_for_version(1)
    request = reload_request(model_config(repo, [1, 2], {"stable": 2}))

    with pytest.raises(grpc.RpcError) as error:
        server.model_stub.HandleReloadConfigRequest(request, timeout=120)

    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details() == (
        f"Request to assign label to version 2 of model {MODEL},"
        " which is not currently available for inference"
    )
    assert set(server.status()) == {1}  # version 2 was not added
    request = reload_request(model_config(repo, [1, 2], {"stable": 1}))
    response = server.model_stub.HandleReloadConfigRequest(request, timeout=120)
    assert response.HasField("status")
    assert response.status.error_code == 0
    assert labelled_version(server, template, "stable") == 1
    server.wait_for_version(2)


def test_reload_config_request_with_an_invalid_config_fails_the_call(
    server_kind, start_server, tmp_path, template
):
    repo = tmp_path / "repo"
    add_version(repo, template.version_dir)
    config = tmp_path / "models.config"
    write_config(config, model_config(repo, [1], {}))
    server = start_server(server_kind, [f"--model_config_file={config}"])
    server.wait_for_version(1)
    twice = model_config(repo, [1], {})
    twice.model_config_list.config.add().CopyFrom(twice.model_config_list.config[0])

    with pytest.raises(grpc.RpcError) as error:
        server.model_stub.HandleReloadConfigRequest(reload_request(twice), timeout=120)

    # TensorFlow Serving's message differs: "Illegal to list model shapes multiple times...".
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.status()[1].state == AVAILABLE
