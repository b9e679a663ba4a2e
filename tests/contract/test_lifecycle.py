"""Label moves, rollback and deletes against a real ``ftserve model-server``.

The server watches the repository's ``models.config`` (polled every second), so each step
is seen the way TF Serving would see it: a version is served first, labelled only once the
server reports it AVAILABLE, and removed from disk only after it was unloaded.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from service.contract.lifecycle import Lifecycle
from service.contract.repository import ModelRepository
from service.contract.serving_state import STABLE
from service.errors import (
    LabelInUseError,
    ModelServerTimeoutError,
    NoPreviousVersionError,
    VersionFailedError,
    VersionLabelledError,
    VersionNotFoundError,
)
from service.model_client import PredictClient
from tests.support.servers import FTSERVE, ServerProcess, add_version, labelled_flags
from tests.support.trained import Template

T = TypeVar("T")


@pytest.fixture(scope="module")
def served_repo(
    tmp_path_factory: pytest.TempPathFactory, template: Template
) -> Iterator[tuple[ServerProcess, ModelRepository]]:
    root = tmp_path_factory.mktemp("lifecycle")
    repo = root / "models"
    add_version(repo, template.version_dir, model="anchor", label=STABLE)
    process = ServerProcess(FTSERVE, labelled_flags(repo), root / "server.log")
    try:
        process.wait_for_version(1, model="anchor")
        yield process, ModelRepository(repo)
    finally:
        process.stop()


def run(
    process: ServerProcess | None,
    repository: ModelRepository,
    step: Callable[[Lifecycle], Awaitable[T]],
    timeout: float = 60.0,
) -> T:
    async def main() -> T:
        client = None if process is None else PredictClient(f"127.0.0.1:{process.port}", 10)
        try:
            return await step(Lifecycle(repository, client, timeout=timeout, poll_seconds=0.1))
        finally:
            if client is not None:
                await client.close()

    return asyncio.run(main())


def publish(repository: ModelRepository, source: Path, model: str) -> int:
    return add_version(repository.root, source, model=model)


def test_a_label_moves_once_the_version_has_loaded(served_repo, template: Template):
    process, repository = served_repo
    assert publish(repository, template.version_dir, "moves") == 1
    assert repository.render_config().model_config_list.config[-1].name != "moves"

    state = run(process, repository, lambda lc: lc.set_label("moves", STABLE, 1))

    assert state.labels == {STABLE: 1}
    assert process.status("moves")[1].state == 30  # AVAILABLE before the label was written
    version, _ = process.predict([template.image()], model="moves")
    assert version == 1


def test_stable_moves_and_rolls_back(served_repo, template: Template):
    process, repository = served_repo
    for _ in range(2):
        publish(repository, template.version_dir, "rolls")
    run(process, repository, lambda lc: lc.set_label("rolls", STABLE, 1))
    state = run(process, repository, lambda lc: lc.set_label("rolls", STABLE, 2))
    assert (state.labels, state.stable_history, state.served) == ({STABLE: 2}, [1], [2])

    state = run(process, repository, lambda lc: lc.roll_back("rolls"))
    assert (state.labels, state.stable_history) == ({STABLE: 1}, [])
    with pytest.raises(NoPreviousVersionError):
        run(process, repository, lambda lc: lc.roll_back("rolls"))


def test_a_version_that_cannot_load_is_refused_and_no_longer_served(served_repo, tmp_path):
    process, repository = served_repo
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a graph")
    publish(repository, broken, "broken")

    with pytest.raises(VersionFailedError, match="could not load version 1"):
        run(process, repository, lambda lc: lc.set_label("broken", STABLE, 1))
    state = repository.serving_state("broken")
    assert (state.labels, state.served) == ({}, [])


def test_a_version_the_server_never_loads_times_out_with_the_label_unchanged(
    served_repo, template: Template, tmp_path: Path
):
    process, _ = served_repo
    # A repository the running server does not watch: the version never becomes AVAILABLE.
    elsewhere = ModelRepository(tmp_path / "elsewhere")
    publish(elsewhere, template.version_dir, "lonely")
    with pytest.raises(ModelServerTimeoutError, match="did not load within 1 s"):
        run(process, elsewhere, lambda lc: lc.set_label("lonely", STABLE, 1), timeout=1.0)
    assert elsewhere.serving_state("lonely").labels == {}


def test_without_a_model_server_labels_are_written_at_once(template: Template, tmp_path: Path):
    repository = ModelRepository(tmp_path / "repo")
    publish(repository, template.version_dir, "offline")
    state = run(None, repository, lambda lc: lc.set_label("offline", "canary", 1))
    assert state.labels == {"canary": 1}


def test_delete_refuses_a_labelled_version_then_removes_it_for_good(
    served_repo, template: Template
):
    process, repository = served_repo
    for _ in range(2):
        publish(repository, template.version_dir, "deletes")
    run(process, repository, lambda lc: lc.set_label("deletes", STABLE, 1))
    run(process, repository, lambda lc: lc.set_label("deletes", "canary", 2))

    with pytest.raises(VersionLabelledError, match="labelled canary"):
        run(process, repository, lambda lc: lc.delete_version("deletes", 2))
    run(process, repository, lambda lc: lc.drop_label("deletes", "canary"))
    process.wait_until(lambda: process.status("deletes")[2].state == 50, "version 2 to be unloaded")
    run(process, repository, lambda lc: lc.delete_version("deletes", 2))

    assert repository.versions("deletes") == [1]
    with pytest.raises(VersionNotFoundError):
        run(process, repository, lambda lc: lc.delete_version("deletes", 2))
    # The number stays used: the next publish is 3.
    assert publish(repository, template.version_dir, "deletes") == 3


def test_stable_is_only_dropped_with_force_while_other_versions_exist(
    served_repo, template: Template
):
    process, repository = served_repo
    for _ in range(2):
        publish(repository, template.version_dir, "keeps")
    run(process, repository, lambda lc: lc.set_label("keeps", STABLE, 2))
    with pytest.raises(LabelInUseError):
        run(process, repository, lambda lc: lc.drop_label("keeps", STABLE))
    state = run(process, repository, lambda lc: lc.drop_label("keeps", STABLE, force=True))
    assert state.labels == {}


def test_delete_model_needs_force_while_labelled_and_keeps_the_numbers(
    served_repo, template: Template
):
    process, repository = served_repo
    publish(repository, template.version_dir, "gone")
    run(process, repository, lambda lc: lc.set_label("gone", STABLE, 1))
    with pytest.raises(LabelInUseError):
        run(process, repository, lambda lc: lc.delete_model("gone"))
    deleted = run(process, repository, lambda lc: lc.delete_model("gone", force=True))

    assert deleted == [1]
    assert repository.versions("gone") == []
    assert publish(repository, template.version_dir, "gone") == 2
    shutil.rmtree(repository.model_dir("gone"))
