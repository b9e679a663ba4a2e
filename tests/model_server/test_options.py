"""The model server's command line: TensorFlow Serving's flags, defaults and checks."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service.model_server.options import (
    DEFAULT_MAX_IMAGE_PIXELS,
    GRPC_MAX_MESSAGE_BYTES,
    ServerOptions,
    add_arguments,
    no_effect_message,
    options_from_args,
    parse_options,
)

BASE = "--model_base_path=/models/m"

IGNORED_FLAGS = [
    "rest_api_num_threads",
    "num_load_threads",
    "num_unload_threads",
    "max_num_load_retries",
    "load_retry_interval_micros",
    "grpc_max_threads",
    "num_tflite_pools",
    "num_request_iterations_for_warmup",
]


def parsed_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_tensorflow_servings():
    options = parse_options([BASE])

    assert options.port == 8500
    assert options.rest_api_port == 0
    assert options.rest_api_timeout_in_ms == 30000
    assert options.model_name == "default"
    assert options.model_config_file is None
    assert options.model_config_file_poll_wait_seconds == 0
    assert options.file_system_poll_wait_seconds == 1
    assert options.enable_model_warmup is True
    assert options.enable_batching is False
    assert options.batching_parameters_file is None
    assert options.monitoring_config_file is None
    assert options.enable_grpc_healthcheck_service is False
    assert options.allow_version_labels_for_unavailable_models is False
    assert options.grpc_max_message_bytes == GRPC_MAX_MESSAGE_BYTES == 2**31 - 1
    assert options == ServerOptions(model_base_path="/models/m")


def test_equals_sign_syntax_sets_every_flag(tmp_path: Path):
    options = parse_options(
        [
            "--port=9000",
            "--rest_api_port=9001",
            "--rest_api_timeout_in_ms=500",
            "--host=127.0.0.1",
            f"--model_config_file={tmp_path / 'models.config'}",
            "--model_config_file_poll_wait_seconds=60",
            "--file_system_poll_wait_seconds=5",
            "--enable_batching=true",
            f"--batching_parameters_file={tmp_path / 'batching.config'}",
            f"--monitoring_config_file={tmp_path / 'monitoring.config'}",
            "--enable_model_warmup=false",
            "--grpc_max_message_bytes=1024",
            "--grpc_channel_arguments=grpc.max_concurrent_streams=10",
            "--enable_grpc_healthcheck_service=true",
            "--allow_version_labels_for_unavailable_models=true",
            "--shutdown_grace_seconds=2.5",
        ]
    )

    assert options == ServerOptions(
        port=9000,
        rest_api_port=9001,
        rest_api_timeout_in_ms=500,
        host="127.0.0.1",
        model_config_file=tmp_path / "models.config",
        model_config_file_poll_wait_seconds=60,
        file_system_poll_wait_seconds=5,
        enable_batching=True,
        batching_parameters_file=tmp_path / "batching.config",
        monitoring_config_file=tmp_path / "monitoring.config",
        enable_model_warmup=False,
        grpc_max_message_bytes=1024,
        grpc_channel_arguments="grpc.max_concurrent_streams=10",
        enable_grpc_healthcheck_service=True,
        allow_version_labels_for_unavailable_models=True,
        shutdown_grace_seconds=2.5,
    )


def test_space_separated_syntax_equals_the_equals_sign_syntax():
    spaced = parse_options(
        [
            "--port",
            "9000",
            "--rest_api_port",
            "9001",
            "--model_name",
            "shapes",
            "--model_base_path",
            "/models/shapes",
            "--file_system_poll_wait_seconds",
            "5",
            "--enable_batching",
            "true",
        ]
    )
    joined = parse_options(
        [
            "--port=9000",
            "--rest_api_port=9001",
            "--model_name=shapes",
            "--model_base_path=/models/shapes",
            "--file_system_poll_wait_seconds=5",
            "--enable_batching=true",
        ]
    )

    assert spaced == joined
    assert spaced == ServerOptions(
        port=9000,
        rest_api_port=9001,
        model_name="shapes",
        model_base_path="/models/shapes",
        file_system_poll_wait_seconds=5,
        enable_batching=True,
    )


def test_config_file_paths_are_paths(tmp_path: Path):
    options = parse_options([f"--model_config_file={tmp_path}/models.config"])

    assert options.model_config_file == tmp_path / "models.config"
    assert options.model_base_path is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--enable_batching"], True),
        (["--enable_batching=true"], True),
        (["--enable_batching=1"], True),
        (["--enable_batching=false"], False),
        (["--enable_batching=0"], False),
        (["--enable_batching", "true"], True),
        (["--enable_batching", "false"], False),
        (["--enable_batching", "--port=9000"], True),
    ],
)
def test_boolean_flag_forms(argv: list[str], expected: bool):
    assert parse_options([BASE, *argv]).enable_batching is expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--enable_model_warmup=false"], False),
        (["--enable_model_warmup=0"], False),
        (["--enable_model_warmup"], True),
        (["--enable_model_warmup=true"], True),
    ],
)
def test_boolean_flag_that_defaults_to_true_can_be_turned_off(argv: list[str], expected: bool):
    assert parse_options([BASE, *argv]).enable_model_warmup is expected


@pytest.mark.parametrize(
    "argv",
    [
        ["--enable_grpc_healthcheck_service"],
        ["--enable_grpc_healthcheck_service=true"],
        ["--enable_grpc_healthcheck_service", "1"],
    ],
)
def test_healthcheck_flag_turns_the_health_service_on(argv: list[str]):
    assert parse_options([BASE, *argv]).enable_grpc_healthcheck_service is True


@pytest.mark.parametrize("value", ["maybe", "2", "", "on"])
def test_bad_boolean_value_exits_with_usage_error(value: str, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as info:
        parse_options([BASE, f"--enable_batching={value}"])

    assert info.value.code == 2
    assert f"argument --enable_batching: expected true or false, got {value!r}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("name", IGNORED_FLAGS)
def test_ignored_tensorflow_serving_flag_is_accepted_and_changes_nothing(name: str):
    expected = ServerOptions(model_base_path="/models/m", no_effect_flags=(name,))

    assert parse_options([BASE, f"--{name}=4"]) == expected
    assert parse_options([BASE, f"--{name}", "4"]) == expected


def test_ignored_flags_with_string_values_are_accepted():
    options = parse_options(
        [BASE, "--saved_model_tags=serve,gpu", "--platform_config_file=/etc/platform.config"]
    )

    assert options == ServerOptions(
        model_base_path="/models/m",
        no_effect_flags=("platform_config_file", "saved_model_tags"),
    )


def test_no_effect_boolean_flag_takes_tensorflow_boolean_syntax():
    options = parse_options([BASE, "--enable_profiler", "--skip_initialize_tpu=false"])

    assert options.no_effect_flags == ("enable_profiler", "skip_initialize_tpu")
    assert no_effect_message("skip_initialize_tpu") == (
        "--skip_initialize_tpu has no effect: this server runs on the CPU"
    )


def test_thread_flags_parse_as_integers():
    options = parse_options(
        [BASE, "--tensorflow_intra_op_parallelism=2", "--tensorflow_inter_op_parallelism=1"]
    )

    assert (options.tensorflow_intra_op_parallelism, options.tensorflow_inter_op_parallelism) == (
        2,
        1,
    )
    assert options.tensorflow_session_parallelism == 0


def test_all_three_thread_flags_are_a_value_error():
    with pytest.raises(ValueError, match="not all three"):
        options_from_args(
            parsed_args(
                [
                    BASE,
                    "--tensorflow_session_parallelism=1",
                    "--tensorflow_intra_op_parallelism=1",
                    "--tensorflow_inter_op_parallelism=1",
                ]
            )
        )


def test_version_needs_no_model():
    assert parse_options(["--version"]) == ServerOptions(version=True)


def test_unknown_flag_exits_with_usage_error(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as info:
        parse_options([BASE, "--no_such_flag=1"])

    assert info.value.code == 2
    assert "unrecognized arguments: --no_such_flag=1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give --model_config_file, or --model_name and --model_base_path"),
        (["--model_name=m"], "give --model_config_file, or --model_name and --model_base_path"),
        (
            ["--model_config_file=/etc/models.config", BASE],
            "--model_config_file and --model_base_path exclude each other",
        ),
        ([BASE, "--port=8600", "--rest_api_port=8600"], "--rest_api_port must differ from --port"),
        ([BASE, "--rest_api_port=8500"], "--rest_api_port must differ from --port"),
        (
            [BASE, "--batching_parameters_file=/etc/batching.config"],
            "--batching_parameters_file needs --enable_batching",
        ),
        (
            [BASE, "--enable_batching=false", "--batching_parameters_file=/etc/batching.config"],
            "--batching_parameters_file needs --enable_batching",
        ),
    ],
)
def test_bad_flag_combination_is_a_value_error(argv: list[str], message: str):
    with pytest.raises(ValueError) as info:
        options_from_args(parsed_args(argv))

    assert str(info.value) == message


def test_parse_options_turns_a_bad_combination_into_a_usage_error(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as info:
        parse_options([BASE, "--rest_api_port=8500"])

    assert info.value.code == 2
    assert "error: --rest_api_port must differ from --port" in capsys.readouterr().err


def test_rest_port_zero_may_coincide_with_grpc_port_zero():
    options = parse_options([BASE, "--port=0", "--rest_api_port=0"])

    assert (options.port, options.rest_api_port) == (0, 0)


def test_batching_file_with_batching_enabled_is_accepted():
    options = parse_options(
        [BASE, "--enable_batching", "--batching_parameters_file=/etc/batching.config"]
    )

    assert options.enable_batching is True
    assert options.batching_parameters_file == Path("/etc/batching.config")


def test_max_image_pixels_defaults_to_the_apis_image_limit():
    assert parse_options([BASE]).max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS == 40_000_000


@pytest.mark.parametrize("argv", [["--max_image_pixels=1000"], ["--max_image_pixels", "1000"]])
def test_max_image_pixels_sets_the_limit(argv: list[str]):
    options = parse_options([BASE, *argv])

    assert options == ServerOptions(model_base_path="/models/m", max_image_pixels=1000)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "error: --max_image_pixels must be > 0"),
        ("-5", "error: --max_image_pixels must be > 0"),
        ("lots", "argument --max_image_pixels: invalid int value: 'lots'"),
    ],
)
def test_max_image_pixels_that_is_not_a_positive_number_is_a_usage_error(
    value: str, message: str, capsys: pytest.CaptureFixture
):
    with pytest.raises(SystemExit) as info:
        parse_options([BASE, f"--max_image_pixels={value}"])

    assert info.value.code == 2
    assert message in capsys.readouterr().err
