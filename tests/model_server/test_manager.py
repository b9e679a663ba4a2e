"""The version manager, driven one ``poll()`` at a time with real (tiny) SavedModels."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf

from service.model_server.config import VersionPolicy
from service.model_server.manager import (
    ModelManager,
    State,
    load_servable,
    version_dirs,
    versions_on_disk,
)
from service.model_server.servable import Servable
from service.model_server.status import ServingError
from tests.model_server.tiny_repo import (
    MODEL,
    TIMEOUT,
    CountingLoader,
    K,
    PollThread,
    Repo,
    configure,
    not_found,
    refused,
    served,
    settings,
    spec,
    states,
    wait_until,
)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


# -- versions on disk ---------------------------------------------------------------------


def test_versions_on_disk_are_numeric_dirs_with_a_graph_oldest_first(repo: Repo):
    repo.add(10, 2, 1)
    shutil.copytree(repo.source, repo.base / ".staging-abc123")  # being published
    shutil.copytree(repo.source / "variables", repo.base / "3" / "variables")  # still copying
    (repo.base / "4").write_text("a file, not a version")
    shutil.copytree(repo.source, repo.base / "v5")
    shutil.copytree(repo.source, repo.base / "6.bak")

    assert versions_on_disk(repo.base) == [1, 2, 10]


def test_missing_base_path_has_no_versions(tmp_path: Path):
    assert versions_on_disk(tmp_path / "nowhere") == []


def test_zero_padded_folder_is_its_number_and_loads_from_itself(manager: ModelManager, repo: Repo):
    shutil.copytree(repo.source, repo.base / "00000123")
    configure(manager, settings(repo.base))

    manager.poll()

    assert version_dirs(repo.base) == {123: repo.base / "00000123"}
    with manager.acquire(spec()) as servable:
        assert (servable.version, servable.path) == (123, repo.base / "00000123")


def test_plain_folder_wins_over_padded_spellings_of_its_version(repo: Repo):
    for name in ("0007", "7", "007", "00000008"):
        shutil.copytree(repo.source, repo.base / name)

    assert version_dirs(repo.base) == {7: repo.base / "7", 8: repo.base / "00000008"}
    assert versions_on_disk(repo.base) == [7, 8]


def test_staging_incomplete_and_file_entries_are_not_loaded(manager: ModelManager, repo: Repo):
    repo.add(1)
    shutil.copytree(repo.source, repo.base / ".staging-7")
    (repo.base / "8").mkdir()
    (repo.base / "9").write_text("not a directory")
    configure(manager, settings(repo.base, VersionPolicy("all")))

    manager.poll()

    assert states(manager) == {1: State.AVAILABLE}
    assert served(manager, spec()) == 1


# -- loading and swapping -------------------------------------------------------------------


def test_first_poll_loads_only_the_latest_version(
    manager: ModelManager, repo: Repo, loader: CountingLoader
):
    repo.add(1, 2)
    configure(manager, settings(repo.base))

    manager.poll()

    assert states(manager) == {2: State.AVAILABLE}
    assert loader.calls == Counter({(MODEL, 2): 1})
    assert manager.ready is True


def test_loaded_version_answers_requests(manager: ModelManager, repo: Repo):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()

    with manager.acquire(spec()) as servable:
        outputs = servable.run("serving_default", {"x": np.array([[1, 2]], np.float32)})

    np.testing.assert_array_equal(outputs["y"], np.array([[K, 2 * K]], np.float32))


def test_new_version_replaces_the_old_one_on_the_next_poll(manager: ModelManager, repo: Repo):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()
    assert states(manager) == {1: State.AVAILABLE}

    repo.add(2)
    assert served(manager, spec()) == 1  # nothing changes until the poll
    manager.poll()

    assert states(manager) == {1: State.END, 2: State.AVAILABLE}
    assert manager.status(MODEL, 1)[0].error is None
    assert served(manager, spec()) == 2
    assert refused(manager, spec(version=1)) == not_found("Specific(m, 1)")


def test_poll_without_changes_loads_nothing_again(
    manager: ModelManager, repo: Repo, loader: CountingLoader
):
    repo.add(1)
    configure(manager, settings(repo.base))

    for _ in range(3):
        manager.poll()

    assert loader.calls == Counter({(MODEL, 1): 1})
    assert states(manager) == {1: State.AVAILABLE}


def test_latest_two_keeps_the_two_newest(manager: ModelManager, repo: Repo):
    repo.add(1, 2, 3)
    configure(manager, settings(repo.base, VersionPolicy("latest", num_versions=2)))
    manager.poll()
    assert states(manager) == {2: State.AVAILABLE, 3: State.AVAILABLE}

    repo.add(4)
    manager.poll()

    assert states(manager) == {2: State.END, 3: State.AVAILABLE, 4: State.AVAILABLE}
    assert served(manager, spec()) == 4
    assert served(manager, spec(version=3)) == 3


def test_all_policy_serves_every_version(manager: ModelManager, repo: Repo):
    repo.add(1, 2, 3)
    configure(manager, settings(repo.base, VersionPolicy("all")))

    manager.poll()

    assert states(manager) == {1: State.AVAILABLE, 2: State.AVAILABLE, 3: State.AVAILABLE}
    assert [served(manager, spec(version=v)) for v in (1, 2, 3)] == [1, 2, 3]
    assert served(manager, spec()) == 3


def test_specific_policy_serves_only_the_listed_versions_present(
    manager: ModelManager, repo: Repo, loader: CountingLoader
):
    repo.add(1, 2, 3)
    configure(
        manager, settings(repo.base, VersionPolicy("specific", versions=frozenset({1, 3, 9})))
    )

    manager.poll()

    assert states(manager) == {1: State.AVAILABLE, 3: State.AVAILABLE}
    assert set(loader.calls) == {(MODEL, 1), (MODEL, 3)}
    assert served(manager, spec()) == 3
    assert served(manager, spec(version=1)) == 1
    assert refused(manager, spec(version=2)) == not_found("Specific(m, 2)")
    assert refused(manager, spec(version=9)) == not_found("Specific(m, 9)")


def test_policy_change_takes_effect_on_the_next_poll(manager: ModelManager, repo: Repo):
    repo.add(1, 2)
    configure(manager, settings(repo.base))
    manager.poll()
    assert states(manager) == {2: State.AVAILABLE}

    configure(manager, settings(repo.base, VersionPolicy("specific", versions=frozenset({1}))))
    manager.poll()

    assert states(manager) == {1: State.AVAILABLE, 2: State.END}
    assert served(manager, spec()) == 1


def test_latest_resolves_to_the_highest_available_version(manager: ModelManager, repo: Repo):
    repo.add(1, 2)
    repo.add_broken(3)
    configure(manager, settings(repo.base, VersionPolicy("all")))

    manager.poll()

    assert states(manager) == {1: State.AVAILABLE, 2: State.AVAILABLE, 3: State.END}
    assert served(manager, spec()) == 2
    assert refused(manager, spec(version=3)) == not_found("Specific(m, 3)")


# -- failed loads ---------------------------------------------------------------------------


def test_broken_version_ends_with_an_error_and_the_old_one_keeps_serving(
    manager: ModelManager, repo: Repo
):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()

    repo.add_broken(2)
    manager.poll()

    assert states(manager) == {1: State.AVAILABLE, 2: State.END}
    error = manager.status(MODEL, 2)[0].error
    assert error is not None
    assert error.code == grpc.StatusCode.UNKNOWN
    assert error.message.startswith(f"cannot load {repo.base / '2'}: ")
    assert len(error.message) > len(f"cannot load {repo.base / '2'}: ")
    assert served(manager, spec()) == 1


def test_model_whose_only_new_versions_fail_keeps_serving_the_old_one(
    manager: ModelManager, repo: Repo
):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()

    repo.add_broken(2)
    manager.poll()
    repo.add_broken(3)
    manager.poll()
    manager.poll()

    assert states(manager) == {1: State.AVAILABLE, 2: State.END, 3: State.END}
    assert served(manager, spec()) == 1
    assert served(manager, spec(version=1)) == 1


def test_model_whose_only_version_fails_is_not_found(manager: ModelManager, repo: Repo):
    repo.add_broken(1)
    configure(manager, settings(repo.base))

    manager.poll()

    assert states(manager) == {1: State.END}
    assert manager.ready is True
    assert refused(manager, spec()) == not_found("Latest(m)")


def test_failed_version_is_not_retried_while_its_files_are_unchanged(
    manager: ModelManager, repo: Repo, loader: CountingLoader
):
    repo.add(1)
    repo.add_broken(2)
    configure(manager, settings(repo.base, VersionPolicy("all")))

    for _ in range(3):
        manager.poll()

    assert loader.calls == Counter({(MODEL, 1): 1, (MODEL, 2): 1})
    assert states(manager) == {1: State.AVAILABLE, 2: State.END}


def test_failed_version_is_retried_once_its_files_are_replaced(
    manager: ModelManager, repo: Repo, loader: CountingLoader
):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()
    repo.add_broken(2)
    manager.poll()
    manager.poll()
    assert loader.calls[(MODEL, 2)] == 1

    repo.replace_with_good_copy(2)
    manager.poll()

    assert loader.calls[(MODEL, 2)] == 2
    assert states(manager) == {1: State.END, 2: State.AVAILABLE}
    assert manager.status(MODEL, 2)[0].error is None
    assert served(manager, spec()) == 2


def test_failed_version_is_retried_once_its_variables_are_replaced(
    manager: ModelManager, repo: Repo, loader: CountingLoader
):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()
    repo.add(2)
    shard = repo.base / "2" / "variables" / "variables.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:2])  # an interrupted copy
    manager.poll()
    assert states(manager) == {1: State.AVAILABLE, 2: State.END}

    repo.replace_with_good_copy(2)
    manager.poll()

    assert loader.calls[(MODEL, 2)] == 2
    assert states(manager) == {1: State.END, 2: State.AVAILABLE}


def test_version_with_a_corrupt_warmup_record_ends_with_an_error(manager: ModelManager, repo: Repo):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()
    repo.add(2)
    warmup = repo.base / "2" / WARMUP_FILE
    warmup.parent.mkdir()
    with tf.io.TFRecordWriter(str(warmup)) as writer:
        writer.write(b"\xff\xff\xff")  # a record that is no PredictionLog

    manager.poll()

    assert states(manager) == {1: State.AVAILABLE, 2: State.END}
    assert served(manager, spec()) == 1


# -- versions and models going away ---------------------------------------------------------


def test_version_whose_directory_disappears_is_unloaded(manager: ModelManager, repo: Repo):
    repo.add(1, 2, 3)
    configure(manager, settings(repo.base, VersionPolicy("all")))
    manager.poll()

    repo.remove(2)
    manager.poll()

    assert states(manager) == {1: State.AVAILABLE, 2: State.END, 3: State.AVAILABLE}
    assert refused(manager, spec(version=2)) == not_found("Specific(m, 2)")


def test_last_version_disappearing_leaves_nothing_to_serve(manager: ModelManager, repo: Repo):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()

    repo.remove(1)
    manager.poll()

    assert states(manager) == {1: State.END}
    assert refused(manager, spec()) == not_found("Latest(m)")


def test_newest_version_disappearing_brings_back_the_previous_one(
    manager: ModelManager, repo: Repo
):
    repo.add(1, 2)
    configure(manager, settings(repo.base))
    manager.poll()

    repo.remove(2)
    manager.poll()

    assert states(manager) == {1: State.AVAILABLE, 2: State.END}
    assert served(manager, spec()) == 1


def test_model_removed_from_the_config_is_unloaded(manager: ModelManager, tmp_path: Path, repo):
    other = Repo(tmp_path / "other", repo.source)
    repo.add(1)
    other.add(1)
    configure(manager, settings(repo.base), settings(other.base, name="other"))
    manager.poll()
    assert manager.model_names() == ["m", "other"]

    configure(manager, settings(other.base, name="other"))
    assert served(manager, spec()) == 1  # until the next poll
    manager.poll()

    assert manager.model_names() == ["other"]
    assert refused(manager, spec()) == not_found("Latest(m)")
    assert refused(manager, spec(version=1)) == not_found("Specific(m, 1)")
    with pytest.raises(ServingError) as info:
        manager.status(MODEL, None)
    assert info.value.message == "Could not find any versions of model m"
    assert served(manager, spec("other")) == 1


def test_model_removed_and_added_back_before_a_poll_stays(manager: ModelManager, repo: Repo):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()

    configure(manager)
    configure(manager, settings(repo.base))
    manager.poll()

    assert states(manager) == {1: State.AVAILABLE}
    assert served(manager, spec()) == 1


def test_unload_all_unloads_every_model(manager: ModelManager, repo: Repo):
    repo.add(1, 2)
    configure(manager, settings(repo.base, VersionPolicy("all")))
    manager.poll()
    with manager.acquire(spec()) as held:
        pass

    manager.unload_all()

    assert manager.model_names() == []
    assert refused(manager, spec()) == not_found("Latest(m)")
    assert held.version == 2


# -- resolution -----------------------------------------------------------------------------


def test_labels_resolve_to_their_versions(manager: ModelManager, repo: Repo):
    repo.add(1, 2)
    configure(manager, settings(repo.base, VersionPolicy("all")))
    manager.poll()
    # Labels go on versions already loaded (test_labels.py covers the other cases).
    configure(manager, settings(repo.base, VersionPolicy("all"), {"stable": 1, "canary": 2}))

    assert served(manager, spec(label="stable")) == 1
    assert served(manager, spec(label="canary")) == 2


def test_unknown_label_is_an_invalid_argument(manager: ModelManager, repo: Repo):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()
    configure(manager, settings(repo.base, labels={"stable": 1}))

    expected = (grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: beta")
    assert refused(manager, spec(label="beta")) == expected
    assert refused(manager, spec("nobody", label="stable")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: stable",
    )


def test_unknown_model_and_version_are_not_found(manager: ModelManager, repo: Repo):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()

    assert refused(manager, spec("nobody")) == not_found("Latest(nobody)")
    assert refused(manager, spec("nobody", version=4)) == not_found("Specific(nobody, 4)")
    assert refused(manager, spec(version=4)) == not_found("Specific(m, 4)")


def test_requests_before_the_first_poll_are_unavailable(manager: ModelManager, repo: Repo):
    repo.add(1)
    assert refused(manager, spec()) == (
        grpc.StatusCode.UNAVAILABLE,
        "The server is starting; servable Latest(m) is not loaded yet",
    )
    configure(manager, settings(repo.base))

    assert manager.ready is False
    assert refused(manager, spec()) == (
        grpc.StatusCode.UNAVAILABLE,
        "Servable Latest(m) is loading; no version is available yet",
    )
    assert refused(manager, spec(version=1)) == (
        grpc.StatusCode.UNAVAILABLE,
        "Servable Specific(m, 1) is loading; no version is available yet",
    )
    manager.poll()
    assert served(manager, spec()) == 1


def test_requests_while_the_only_version_loads_are_unavailable(repo: Repo):
    repo.add(1)
    entered, go = threading.Event(), threading.Event()

    def slow_loader(name: str, version: int, path: Path) -> Servable:
        entered.set()
        if not go.wait(TIMEOUT):
            raise TimeoutError("the test never let the load finish")
        return load_servable(name, version, path)

    manager = ModelManager(slow_loader, unload_wait_seconds=30.0)
    configure(manager, settings(repo.base))
    poll = PollThread(manager)
    poll.start()
    try:
        assert entered.wait(TIMEOUT)
        assert states(manager) == {1: State.LOADING}
        assert refused(manager, spec()) == (
            grpc.StatusCode.UNAVAILABLE,
            "Servable Latest(m) is loading; no version is available yet",
        )
    finally:
        go.set()
        poll.finish()

    assert states(manager) == {1: State.AVAILABLE}
    assert served(manager, spec()) == 1
    manager.unload_all()


def test_request_in_flight_delays_the_unload_of_its_version(manager: ModelManager, repo: Repo):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()
    repo.add(2)
    poll = PollThread(manager)

    holding = manager.acquire(spec())
    held = holding.__enter__()
    try:
        assert held.version == 1
        poll.start()
        wait_until(lambda: states(manager)[1] == State.UNLOADING, "version 1 to be UNLOADING")

        poll.join(0.2)
        assert poll.is_alive()  # still waiting for the request holding version 1
        assert manager.status(MODEL, 1)[0].in_flight == 1
        assert states(manager) == {1: State.UNLOADING, 2: State.AVAILABLE}
        assert served(manager, spec()) == 2  # new requests go to the new version
        assert refused(manager, spec(version=1)) == not_found("Specific(m, 1)")
    finally:
        holding.__exit__(None, None, None)

    poll.finish()
    assert states(manager) == {1: State.END, 2: State.AVAILABLE}
    assert manager.status(MODEL, 1)[0].in_flight == 0


def test_request_that_raises_still_releases_its_version(manager: ModelManager, repo: Repo):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()

    with pytest.raises(RuntimeError), manager.acquire(spec()):
        raise RuntimeError("the request failed")

    assert manager.status(MODEL, 1)[0].in_flight == 0


# -- status ---------------------------------------------------------------------------------


def test_status_lists_versions_newest_last(manager: ModelManager, repo: Repo):
    repo.add(3, 1, 2)
    repo.add_broken(4)
    configure(manager, settings(repo.base, VersionPolicy("all")))
    manager.poll()

    records = manager.status(MODEL, None)

    assert [(r.version, r.state) for r in records] == [
        (1, State.AVAILABLE),
        (2, State.AVAILABLE),
        (3, State.AVAILABLE),
        (4, State.END),
    ]
    assert [r.error is None for r in records] == [True, True, True, False]
    assert all(r.servable is None for r in records)  # copies, without the model
    assert [(r.version, r.state) for r in manager.status(MODEL, 2)] == [(2, State.AVAILABLE)]


def test_status_of_an_unknown_version_is_not_found(manager: ModelManager, repo: Repo):
    repo.add(1)
    configure(manager, settings(repo.base))
    manager.poll()

    with pytest.raises(ServingError) as info:
        manager.status(MODEL, 3)

    assert (info.value.code, info.value.message) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 3 of model m",
    )


@pytest.mark.parametrize("name", [MODEL, "nobody"])
def test_status_of_a_model_without_versions_is_not_found(
    manager: ModelManager, repo: Repo, name: str
):
    configure(manager, settings(repo.base))  # an empty base path
    manager.poll()

    with pytest.raises(ServingError) as info:
        manager.status(name, None)

    assert (info.value.code, info.value.message) == (
        grpc.StatusCode.NOT_FOUND,
        f"Could not find any versions of model {name}",
    )
