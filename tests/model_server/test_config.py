"""ModelServerConfig, batching and monitoring files in TensorFlow Serving's text format."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import wrappers_pb2

from service.model_server.config import (
    DEFAULT_PROMETHEUS_PATH,
    ConfigError,
    ModelSettings,
    VersionPolicy,
    initial_config,
    model_settings,
    prometheus_path,
    read_batching_parameters,
    read_model_server_config,
    single_model_config,
)
from service.model_server.options import ServerOptions


def write(tmp_path: Path, text: str, name: str = "models.config") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def settings_of(tmp_path: Path, text: str) -> dict[str, ModelSettings]:
    return model_settings(read_model_server_config(write(tmp_path, text)))


def one_model(tmp_path: Path, body: str) -> ModelSettings:
    text = f'model_config_list {{ config {{ name: "m" base_path: "/models/m" {body} }} }}'
    return settings_of(tmp_path, text)["m"]


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        settings_of(tmp_path, text)
    return str(info.value)


# -- model configs ------------------------------------------------------------------------


def test_minimal_model_config_serves_the_latest_version(tmp_path: Path):
    settings = settings_of(
        tmp_path,
        """
        model_config_list {
          config {
            name: "shapes"
            base_path: "/models/shapes"
            model_platform: "tensorflow"
          }
        }
        """,
    )

    assert settings == {
        "shapes": ModelSettings("shapes", Path("/models/shapes"), VersionPolicy("latest", 1), {})
    }


def test_platform_may_be_left_out(tmp_path: Path):
    assert one_model(tmp_path, "").policy == VersionPolicy("latest", 1)


def test_several_models_keep_their_own_settings(tmp_path: Path):
    settings = settings_of(
        tmp_path,
        """
        model_config_list {
          config { name: "a" base_path: "/models/a" }
          config {
            name: "b"
            base_path: "/models/b"
            model_version_policy { all {} }
            version_labels { key: "stable" value: 4 }
          }
        }
        """,
    )

    assert settings == {
        "a": ModelSettings("a", Path("/models/a"), VersionPolicy(), {}),
        "b": ModelSettings("b", Path("/models/b"), VersionPolicy("all"), {"stable": 4}),
    }


def test_empty_config_file_has_no_models(tmp_path: Path):
    assert settings_of(tmp_path, "") == {}


def test_latest_policy_keeps_num_versions(tmp_path: Path):
    settings = one_model(tmp_path, "model_version_policy { latest { num_versions: 3 } }")

    assert settings.policy == VersionPolicy("latest", num_versions=3)


@pytest.mark.parametrize(
    "body", ["model_version_policy { latest { num_versions: 0 } }", "model_version_policy { }"]
)
def test_num_versions_zero_means_one(tmp_path: Path, body: str):
    policy = one_model(tmp_path, body).policy

    assert policy == VersionPolicy("latest", num_versions=1)
    assert policy.aspired([1, 2, 3]) == {3}


def test_all_policy(tmp_path: Path):
    assert one_model(tmp_path, "model_version_policy { all { } }").policy == VersionPolicy("all")


def test_specific_policy_keeps_its_versions(tmp_path: Path):
    settings = one_model(
        tmp_path, "model_version_policy { specific { versions: 3 versions: 1 versions: 3 } }"
    )

    assert settings.policy == VersionPolicy("specific", versions=frozenset({1, 3}))


def test_version_labels(tmp_path: Path):
    settings = one_model(
        tmp_path,
        """
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
        """,
    )

    assert settings.labels == {"stable": 1, "canary": 2}


# -- version policies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_versions", "on_disk", "aspired"),
    [
        (1, [1, 2, 3], {3}),
        (2, [1, 2, 3], {2, 3}),
        (3, [1, 2, 3], {1, 2, 3}),
        (5, [1, 2], {1, 2}),
        (1, [7], {7}),
        (2, [], set()),
    ],
)
def test_latest_policy_aspires_the_newest_versions(
    num_versions: int, on_disk: list[int], aspired: set[int]
):
    assert VersionPolicy("latest", num_versions=num_versions).aspired(on_disk) == aspired


@pytest.mark.parametrize(("on_disk", "aspired"), [([1, 2, 5], {1, 2, 5}), ([], set())])
def test_all_policy_aspires_every_version(on_disk: list[int], aspired: set[int]):
    assert VersionPolicy("all").aspired(on_disk) == aspired


@pytest.mark.parametrize(
    ("on_disk", "aspired"),
    [([1, 2, 3, 4], {1, 3}), ([3], {3}), ([2, 4], set()), ([], set())],
)
def test_specific_policy_aspires_the_listed_versions_present(on_disk: list[int], aspired: set[int]):
    policy = VersionPolicy("specific", versions=frozenset({1, 3, 9}))

    assert policy.aspired(on_disk) == aspired


# -- invalid model configs ----------------------------------------------------------------


def test_custom_model_config_is_rejected(tmp_path: Path):
    message = config_error(tmp_path, 'custom_model_config { type_url: "type.googleapis.com/x" }')

    assert message == "custom_model_config is not supported; use model_config_list"


@pytest.mark.parametrize("platform", ["onnx", "tensorflow_lite", "TensorFlow"])
def test_other_platform_is_rejected(tmp_path: Path, platform: str):
    message = config_error(
        tmp_path,
        f'model_config_list {{ config {{ name: "m" base_path: "/m" model_platform: "{platform}"'
        " } }",
    )

    assert message == f"model 'm': platform {platform!r} is not supported"


def test_duplicate_model_names_are_rejected(tmp_path: Path):
    message = config_error(
        tmp_path,
        """
        model_config_list {
          config { name: "m" base_path: "/models/a" }
          config { name: "m" base_path: "/models/b" }
        }
        """,
    )

    assert message == "model 'm' is configured twice"


def test_model_without_a_name_is_rejected(tmp_path: Path):
    message = config_error(tmp_path, 'model_config_list { config { base_path: "/models/m" } }')

    assert message == "a model config has no name"


def test_model_without_a_base_path_is_rejected(tmp_path: Path):
    message = config_error(tmp_path, 'model_config_list { config { name: "m" } }')

    assert message == "model 'm' has no base_path"


@pytest.mark.parametrize("version", [0, -1])
def test_label_of_a_non_positive_version_is_rejected(tmp_path: Path, version: int):
    message = config_error(
        tmp_path,
        'model_config_list { config { name: "m" base_path: "/m"'
        f' version_labels {{ key: "stable" value: {version} }} }} }}',
    )

    assert message == "model 'm': version labels must name positive versions"


def test_specific_policy_without_versions_is_rejected(tmp_path: Path):
    message = config_error(
        tmp_path,
        'model_config_list { config { name: "m" base_path: "/m"'
        " model_version_policy { specific { } } } }",
    )

    assert message == "model 'm': a specific policy needs versions"


def test_syntax_error_names_the_file_and_the_position(tmp_path: Path):
    path = write(tmp_path, 'model_config_list { config { name: "m" base_path: "/m" ')

    with pytest.raises(ConfigError) as info:
        read_model_server_config(path)

    assert str(info.value) == (
        f"cannot read {path}: Error parsing text-format tensorflow.serving.ModelServerConfig:"
        ' 1:51 : Expected "}".'
    )


def test_unknown_field_names_the_field(tmp_path: Path):
    path = write(tmp_path, 'model_config_list { config { name: "m" bse_path: "/m" } }')

    with pytest.raises(ConfigError) as info:
        read_model_server_config(path)

    assert str(info.value) == (
        f"cannot read {path}: Error parsing text-format tensorflow.serving.ModelServerConfig:"
        " 1:40 : Message type"
        ' "tensorflow.serving.ModelConfig" has no field named "bse_path".'
    )


def test_missing_file_is_a_config_error(tmp_path: Path):
    path = tmp_path / "missing.config"

    with pytest.raises(ConfigError) as info:
        read_model_server_config(path)

    assert str(info.value) == (f"cannot read {path}: [Errno 2] No such file or directory: '{path}'")


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path):
    path = tmp_path / "binary.config"
    path.write_bytes(b"\xff\xfe")

    with pytest.raises(ConfigError) as info:
        read_model_server_config(path)

    assert str(info.value).startswith(f"cannot read {path}: 'utf-8' codec can't decode")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# -- the config the flags stand for ---------------------------------------------------------


def test_single_model_config_is_one_tensorflow_model():
    config = single_model_config("shapes", "/models/shapes")

    assert model_settings(config) == {
        "shapes": ModelSettings("shapes", Path("/models/shapes"), VersionPolicy(), {})
    }
    assert config.model_config_list.config[0].model_platform == "tensorflow"


def test_initial_config_from_model_name_and_base_path():
    options = ServerOptions(model_name="shapes", model_base_path="/models/shapes")

    assert initial_config(options) == single_model_config("shapes", "/models/shapes")


def test_initial_config_from_config_file(tmp_path: Path):
    path = write(tmp_path, 'model_config_list { config { name: "a" base_path: "/models/a" } }')

    config = initial_config(ServerOptions(model_config_file=path))

    assert list(model_settings(config)) == ["a"]


# -- batching parameters ------------------------------------------------------------------


def test_batching_parameters_use_tensorflow_servings_field_names(tmp_path: Path):
    path = write(
        tmp_path,
        """
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 5000 }
        max_enqueued_batches { value: 100 }
        num_batch_threads { value: 4 }
        thread_pool_name { value: "batch_threads" }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 16
        allowed_batch_sizes: 32
        pad_variable_length_inputs: true
        enable_large_batch_splitting { value: true }
        max_execution_batch_size { value: 16 }
        """,
        name="batching.config",
    )

    params = read_batching_parameters(path)

    assert params.max_batch_size == wrappers_pb2.Int64Value(value=32)
    assert params.batch_timeout_micros.value == 5000
    assert params.max_enqueued_batches.value == 100
    assert params.num_batch_threads.value == 4
    assert params.thread_pool_name.value == "batch_threads"
    assert list(params.allowed_batch_sizes) == [8, 16, 32]
    assert params.pad_variable_length_inputs is True
    assert params.enable_large_batch_splitting.value is True
    assert params.max_execution_batch_size.value == 16


def test_batching_fields_left_out_are_unset(tmp_path: Path):
    params = read_batching_parameters(
        write(tmp_path, "max_batch_size { value: 8 }", name="batching.config")
    )

    assert params.HasField("max_batch_size")
    assert not params.HasField("batch_timeout_micros")
    assert not params.HasField("num_batch_threads")
    assert list(params.allowed_batch_sizes) == []


def test_no_batching_file_means_every_field_unset():
    params = read_batching_parameters(None)

    assert params.ListFields() == []


def test_unknown_batching_field_is_a_config_error(tmp_path: Path):
    path = write(tmp_path, "max_batch_sizes { value: 8 }", name="batching.config")

    with pytest.raises(ConfigError) as info:
        read_batching_parameters(path)

    assert str(info.value).startswith(
        f"cannot read {path}: Error parsing text-format ftserve.model_server.BatchingParameters:"
        " 1:1 : "
    )
    assert 'has no field named "max_batch_sizes"' in str(info.value)


def test_missing_batching_file_is_a_config_error(tmp_path: Path):
    path = tmp_path / "batching.config"

    with pytest.raises(ConfigError) as info:
        read_batching_parameters(path)

    assert str(info.value).startswith(f"cannot read {path}: [Errno 2] No such file")


# -- monitoring ---------------------------------------------------------------------------


def test_prometheus_default_path(tmp_path: Path):
    path = write(tmp_path, "prometheus_config { enable: true }", name="monitoring.config")

    assert prometheus_path(path) == DEFAULT_PROMETHEUS_PATH == "/monitoring/prometheus/metrics"


def test_prometheus_custom_path(tmp_path: Path):
    path = write(
        tmp_path, 'prometheus_config { enable: true path: "/metrics" }', name="monitoring.config"
    )

    assert prometheus_path(path) == "/metrics"


@pytest.mark.parametrize(
    "text",
    ['prometheus_config { enable: false path: "/metrics" }', "prometheus_config { }", ""],
)
def test_prometheus_disabled_means_no_path(tmp_path: Path, text: str):
    assert prometheus_path(write(tmp_path, text, name="monitoring.config")) is None


def test_no_monitoring_file_means_no_path():
    assert prometheus_path(None) is None


def test_invalid_monitoring_file_is_a_config_error(tmp_path: Path):
    path = write(tmp_path, "prometheus_config { enable: yes_please }", name="monitoring.config")

    with pytest.raises(ConfigError) as info:
        prometheus_path(path)

    assert str(info.value).startswith(
        f"cannot read {path}: Error parsing text-format ftserve.model_server.MonitoringConfig: 1:"
    )
