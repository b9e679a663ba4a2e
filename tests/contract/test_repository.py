"""The model repository only moves directories, so plain files stand in for SavedModels."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format

from service.contract import repository
from service.contract.model_server_config_pb2 import ModelServerConfig
from service.contract.repository import ModelRepository
from service.errors import InvalidModelNameError


def write_fake_model(directory: Path, marker: str) -> None:
    (directory / "saved_model.pb").write_bytes(b"\x08\x01fake-graph")
    (directory / "variables").mkdir()
    (directory / "variables" / "variables.index").write_bytes(b"index")
    (directory / "marker.txt").write_text(marker)


def publish_marker(repo: ModelRepository, model: str, marker: str) -> int:
    with repo.staging(model) as staging:
        write_fake_model(staging, marker)
        return repo.publish(model, staging)


def entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def read_config(repo: ModelRepository) -> ModelServerConfig:
    return text_format.Parse(repo.config_path.read_text(), ModelServerConfig())


def expected_config(*models: tuple[str, str, dict[str, int]]) -> ModelServerConfig:
    """Each model served at the versions its labels name, with those labels."""
    config = ModelServerConfig()
    config.model_config_list.SetInParent()
    for name, base_path, labels in models:
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = base_path
        entry.model_platform = "tensorflow"
        entry.model_version_policy.specific.versions.extend(sorted(set(labels.values())))
        for label, version in labels.items():
            entry.version_labels[label] = version
    return config


def label(repo: ModelRepository, model: str, name: str, version: int) -> None:
    repo.update_state(model, lambda state: state.set_label(name, version))


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(tmp_path / "repo")


def test_publish_gives_1_then_2_and_moves_contents_intact(repo: ModelRepository):
    with repo.staging("flowers") as staging:
        write_fake_model(staging, "first")
        first = repo.publish("flowers", staging)
    second = publish_marker(repo, "flowers", "second")

    assert (first, second) == (1, 2)
    assert not staging.exists()
    assert entries(repo.root / "flowers") == ["1", "2", "serving.json"]
    version_1 = repo.version_path("flowers", 1)
    assert version_1 == repo.root / "flowers" / "1"
    assert entries(version_1) == ["marker.txt", "saved_model.pb", "variables"]
    assert (version_1 / "saved_model.pb").read_bytes() == b"\x08\x01fake-graph"
    assert (version_1 / "variables" / "variables.index").read_bytes() == b"index"
    assert (version_1 / "marker.txt").read_text() == "first"
    assert (repo.version_path("flowers", 2) / "marker.txt").read_text() == "second"
    assert repo.versions("flowers") == [1, 2]
    assert repo.latest("flowers") == 2


def test_unknown_model_has_no_versions(repo: ModelRepository):
    assert repo.versions("flowers") == []
    assert repo.latest("flowers") is None
    assert repo.models() == []


def test_verify_runs_on_the_staging_dir_before_it_becomes_a_version(repo: ModelRepository):
    seen: list[tuple[Path, list[str], list[str]]] = []

    def verify(path: Path) -> None:
        seen.append((path, entries(path), entries(path.parent)))

    with repo.staging("flowers") as staging:
        write_fake_model(staging, "v1")
        assert repo.publish("flowers", staging, verify=verify) == 1

    # Beside it, only its publisher's lock: no version number yet.
    beside = [staging.name, f"{staging.name}.lock"]
    assert seen == [(staging, ["marker.txt", "saved_model.pb", "variables"], beside)]
    assert entries(staging.parent) == ["1", "serving.json"]


def test_failing_verify_removes_staging_and_creates_no_version(repo: ModelRepository):
    def verify(path: Path) -> None:
        raise RuntimeError("reloaded model answers differently")

    with (
        pytest.raises(RuntimeError, match=r"^reloaded model answers differently$"),
        repo.staging("flowers") as staging,
    ):
        write_fake_model(staging, "v1")
        repo.publish("flowers", staging, verify=verify)

    assert not staging.exists()
    assert entries(repo.root / "flowers") == []
    assert repo.versions("flowers") == []
    assert not repo.config_path.exists()


def test_failing_verify_outside_the_with_block_also_removes_staging(repo: ModelRepository):
    with repo.staging("flowers") as staging:
        write_fake_model(staging, "v1")

    def verify(path: Path) -> None:
        raise ValueError("wrong top-1 label")

    with pytest.raises(ValueError, match=r"^wrong top-1 label$"):
        repo.publish("flowers", staging, verify=verify)

    assert entries(repo.root / "flowers") == []


def test_raising_with_block_removes_staging(repo: ModelRepository):
    with pytest.raises(KeyError), repo.staging("flowers") as staging:
        write_fake_model(staging, "half-written")
        raise KeyError("export failed")

    assert not staging.exists()
    assert entries(repo.root / "flowers") == []


def test_crash_between_staging_and_rename_is_cleaned_at_start_up(tmp_path: Path):
    crashed = ModelRepository(tmp_path / "repo")
    staging = crashed.root / "flowers" / ".staging-0123abcd"
    staging.mkdir(parents=True)
    write_fake_model(staging, "never published")
    (crashed.root / "flowers" / ".snapshot").mkdir()
    leftover_tmp = crashed.root / ".models.config.tmp-feed"
    leftover_tmp.write_text("half a config")

    restarted = ModelRepository(tmp_path / "repo")
    removed = restarted.clean_stale_staging()

    assert removed == [leftover_tmp, staging]
    assert entries(restarted.root / "flowers") == [".snapshot"]
    assert restarted.versions("flowers") == []
    assert restarted.clean_stale_staging() == []


def test_clean_stale_staging_of_missing_repository_removes_nothing(tmp_path: Path):
    assert ModelRepository(tmp_path / "absent").clean_stale_staging() == []
    assert not (tmp_path / "absent").exists()


def test_eight_threads_publish_eight_distinct_versions(repo: ModelRepository):
    barrier = threading.Barrier(8)
    results: dict[str, int] = {}

    def all_at_once(path: Path) -> None:
        barrier.wait(timeout=30)  # every thread picks its version number at about the same time

    def publish(marker: str) -> None:
        with repo.staging("flowers") as staging:
            write_fake_model(staging, marker)
            results[marker] = repo.publish("flowers", staging, verify=all_at_once)

    threads = [threading.Thread(target=publish, args=(f"thread-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results.values()) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert repo.versions("flowers") == [1, 2, 3, 4, 5, 6, 7, 8]
    for marker, version in results.items():
        assert (repo.version_path("flowers", version) / "marker.txt").read_text() == marker
    assert entries(repo.root / "flowers") == [*"12345678", "serving.json"]
    assert repo.serving_state("flowers").max_version == 8


def publish_twice_in_process(root: str, worker: int, barrier: Any) -> None:
    repo = ModelRepository(Path(root))
    for i in range(2):
        with repo.staging("flowers") as staging:
            write_fake_model(staging, f"process-{worker}-{i}")
            # Every process picks its version number at about the same time.
            repo.publish("flowers", staging, verify=lambda path: barrier.wait(timeout=30))


def test_four_processes_publish_eight_distinct_versions(repo: ModelRepository):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    processes = [
        context.Process(target=publish_twice_in_process, args=(str(repo.root), i, barrier))
        for i in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()  # a failed peer left it waiting; the exit code assertion reports it
            process.join()

    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    assert repo.versions("flowers") == [1, 2, 3, 4, 5, 6, 7, 8]
    markers = {(repo.version_path("flowers", v) / "marker.txt").read_text() for v in range(1, 9)}
    assert markers == {f"process-{w}-{i}" for w in range(4) for i in range(2)}
    assert repo.serving_state("flowers").max_version == 8
    assert read_config(repo) == expected_config()  # published, but nothing serves them yet


def test_publish_takes_the_next_number_when_another_publisher_wins_the_race(
    repo: ModelRepository, monkeypatch: pytest.MonkeyPatch
):
    real_rename = os.rename
    targets: list[str] = []

    def rename_after_a_rival(src: str | Path, dst: str | Path) -> None:
        # Another publisher renames its own version into place just before our first try.
        if not targets:
            Path(dst).mkdir()
            (Path(dst) / "marker.txt").write_text("rival")
        targets.append(Path(dst).name)
        real_rename(src, dst)

    with repo.staging("flowers") as staging:
        write_fake_model(staging, "ours")
        monkeypatch.setattr(repository.os, "rename", rename_after_a_rival)
        version = repo.publish("flowers", staging)

    assert version == 2
    assert targets == ["1", "2"]
    assert (repo.version_path("flowers", 1) / "marker.txt").read_text() == "rival"
    assert (repo.version_path("flowers", 2) / "marker.txt").read_text() == "ours"


def test_existing_version_is_never_rewritten(repo: ModelRepository):
    version_1 = repo.root / "flowers" / "1"
    version_1.mkdir(parents=True)
    (version_1 / "saved_model.pb").write_bytes(b"original")

    assert publish_marker(repo, "flowers", "new") == 2
    assert entries(version_1) == ["saved_model.pb"]
    assert (version_1 / "saved_model.pb").read_bytes() == b"original"


def test_only_numeric_directories_are_versions_and_numeric_files_are_skipped(
    repo: ModelRepository,
):
    model_dir = repo.root / "flowers"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "0").mkdir()
    (model_dir / "notes").mkdir()
    (model_dir / "3").write_text("not a version")

    assert repo.versions("flowers") == [1]
    # The file named 3 is not a version, but a version must never land on its name.
    assert publish_marker(repo, "flowers", "new") == 4
    assert repo.versions("flowers") == [1, 4]
    assert (model_dir / "3").read_text() == "not a version"


def test_publish_rejects_a_directory_that_is_not_its_staging(repo: ModelRepository, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "saved_model.pb").write_bytes(b"x")
    with repo.staging("other") as other_staging:
        (other_staging / "saved_model.pb").write_bytes(b"x")

    with pytest.raises(ValueError, match="is not a staging directory of"):
        repo.publish("flowers", elsewhere)
    with pytest.raises(ValueError, match="is not a staging directory of"):
        repo.publish("flowers", other_staging)

    assert entries(elsewhere) == ["saved_model.pb"]
    assert entries(repo.root / "other") == [other_staging.name]
    assert repo.versions("flowers") == []


def test_publish_refuses_an_empty_staging_dir(repo: ModelRepository):
    with (
        pytest.raises(ValueError, match=r"is empty: nothing to publish$"),
        repo.staging("flowers") as staging,
    ):
        repo.publish("flowers", staging)

    assert entries(repo.root / "flowers") == []


@pytest.mark.parametrize("name", ["../x", "A", "", "x" * 64, "a/b", "-a", "_a", "a.b", "a\n"])
def test_invalid_model_names_are_rejected_before_touching_disk(tmp_path: Path, name: str):
    repo = ModelRepository(tmp_path / "repo")
    calls = [
        lambda: repo.staging(name).__enter__(),
        lambda: repo.publish(name, tmp_path),
        lambda: repo.versions(name),
        lambda: repo.latest(name),
        lambda: repo.version_path(name, 1),
    ]

    for call in calls:
        with pytest.raises(InvalidModelNameError) as raised:
            call()
        assert raised.value.status == HTTPStatus.BAD_REQUEST
        assert raised.value.to_dict() == {
            "error": {
                "code": "invalid_model_name",
                "message": f"Invalid model name {name!r}: use 1 to 63 characters from a-z,"
                " 0-9, '_' and '-', starting with a letter or digit",
            }
        }
    assert entries(tmp_path) == []


@pytest.mark.parametrize("name", ["a", "0", "resnet_50-v2", "x" * 63])
def test_valid_model_names_are_accepted(repo: ModelRepository, name: str):
    assert publish_marker(repo, name, "v1") == 1
    assert repo.models() == [name]


def test_version_path_rejects_non_positive_versions(repo: ModelRepository):
    with pytest.raises(ValueError, match=r"^versions are positive integers, got 0$"):
        repo.version_path("flowers", 0)


def test_models_lists_valid_model_directories_sorted(repo: ModelRepository):
    publish_marker(repo, "tulips", "v1")
    publish_marker(repo, "daisies", "v1")
    (repo.root / "Not-Valid").mkdir()
    (repo.root / "stray-file").write_text("")

    assert repo.models() == ["daisies", "tulips"]


def test_a_published_version_is_not_served_until_a_label_points_at_it(repo: ModelRepository):
    publish_marker(repo, "tulips", "v1")
    assert read_config(repo) == expected_config()
    label(repo, "tulips", "stable", 1)
    assert read_config(repo) == expected_config(
        ("tulips", str(repo.root / "tulips"), {"stable": 1})
    )


def test_models_config_lists_every_served_model_with_its_labels(repo: ModelRepository):
    publish_marker(repo, "tulips", "v1")
    publish_marker(repo, "daisies", "v1")
    publish_marker(repo, "daisies", "v2")
    label(repo, "tulips", "stable", 1)
    label(repo, "daisies", "stable", 1)
    label(repo, "daisies", "canary", 2)

    assert read_config(repo) == expected_config(
        ("daisies", str(repo.root / "daisies"), {"stable": 1, "canary": 2}),
        ("tulips", str(repo.root / "tulips"), {"stable": 1}),
    )
    assert all(Path(c.base_path).is_absolute() for c in read_config(repo).model_config_list.config)
    assert entries(repo.root) == [".lock", "daisies", "models.config", "tulips"]


def test_models_config_uses_the_base_path_prefix(tmp_path: Path):
    repo = ModelRepository(tmp_path / "repo", base_path_prefix="/models/")
    publish_marker(repo, "flowers", "v1")
    publish_marker(repo, "flowers", "v2")
    label(repo, "flowers", "stable", 2)
    label(repo, "flowers", "canary", 1)

    assert repo.config_path.read_text() == (
        "model_config_list {\n"
        "  config {\n"
        '    name: "flowers"\n'
        '    base_path: "/models/flowers"\n'
        '    model_platform: "tensorflow"\n'
        "    model_version_policy {\n"
        "      specific {\n"
        "        versions: 1\n"
        "        versions: 2\n"
        "      }\n"
        "    }\n"
        "    version_labels {\n"
        '      key: "canary"\n'
        "      value: 1\n"
        "    }\n"
        "    version_labels {\n"
        '      key: "stable"\n'
        "      value: 2\n"
        "    }\n"
        "  }\n"
        "}\n"
    )


def test_relative_root_still_writes_absolute_base_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    repo = ModelRepository(Path("repo"))
    publish_marker(repo, "flowers", "v1")
    label(repo, "flowers", "stable", 1)

    assert read_config(repo) == expected_config(
        ("flowers", str(tmp_path / "repo" / "flowers"), {"stable": 1})
    )


def test_models_config_leaves_out_models_without_a_version(repo: ModelRepository):
    with repo.staging("tulips"):
        publish_marker(repo, "daisies", "v1")
        label(repo, "daisies", "stable", 1)

        assert read_config(repo) == expected_config(
            ("daisies", str(repo.root / "daisies"), {"stable": 1})
        )


def test_models_config_rewrite_replaces_the_file_and_leaves_no_temp_files(repo: ModelRepository):
    publish_marker(repo, "daisies", "v1")
    inode_before = repo.config_path.stat().st_ino
    repo.write_models_config()

    assert repo.config_path.stat().st_ino != inode_before  # replaced by rename, not rewritten
    assert entries(repo.root) == [".lock", "daisies", "models.config"]


def test_clean_stale_staging_spares_a_publish_in_progress_however_old(tmp_path: Path):
    repo = ModelRepository(tmp_path / "repo")
    with repo.staging("flowers") as live:
        write_fake_model(live, "in progress")
        a_day_ago = time.time() - 86400
        os.utime(live, (a_day_ago, a_day_ago))

        assert ModelRepository(tmp_path / "repo").clean_stale_staging() == []
        assert live.is_dir()
        assert publish_marker(repo, "flowers", "other") == 1  # others publish meanwhile
        assert live.is_dir()


def _publish_then_hang(root: str, ready: Any) -> None:
    with ModelRepository(Path(root)).staging("flowers") as staging:
        write_fake_model(staging, "killed mid-publish")
        ready.set()
        time.sleep(600)


def test_a_killed_publisher_s_staging_is_removed_at_once(tmp_path: Path):
    ready = multiprocessing.get_context("spawn").Event()
    publisher = multiprocessing.get_context("spawn").Process(
        target=_publish_then_hang, args=(str(tmp_path / "repo"), ready)
    )
    publisher.start()
    assert ready.wait(60)
    (staging,) = (tmp_path / "repo" / "flowers").glob(".staging-*[!k]")
    repo = ModelRepository(tmp_path / "repo")
    assert repo.clean_stale_staging() == []  # alive: spared
    publisher.kill()
    publisher.join()

    assert repo.clean_stale_staging() == [staging]
    assert entries(repo.root / "flowers") == []
