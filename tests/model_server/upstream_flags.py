"""Every flag of TensorFlow Serving 2.21's ``tensorflow_model_server``, with a sample value.

Taken from ``tensorflow_serving/model_servers/main.cc`` (the ``flag_list`` of ``main``) at
tensorflow/serving commit 9d981c5c2708d23c5407c7c1e30309e6f9798874 (Thu Jul 30 2026).
A value in braces is filled in by the test: a free port or a file it writes.
"""

from __future__ import annotations

UPSTREAM_FLAGS: dict[str, str] = {
    "port": "{port}",
    "grpc_socket_path": "{grpc_socket_path}",
    "rest_api_port": "{rest_api_port}",
    "rest_api_num_threads": "4",
    "rest_api_timeout_in_ms": "20000",
    "rest_api_enable_cors_support": "true",
    "enable_batching": "true",
    "allow_version_labels_for_unavailable_models": "true",
    "batching_parameters_file": "{batching_parameters_file}",
    "enable_per_model_batching_parameters": "true",
    "model_config_file": "{model_config_file}",
    "model_config_file_poll_wait_seconds": "30",
    "model_name": "m",
    "model_base_path": "{model_base_path}",
    "num_load_threads": "2",
    "num_unload_threads": "2",
    "max_num_load_retries": "3",
    "load_retry_interval_micros": "1000000",
    "file_system_poll_wait_seconds": "1",
    "flush_filesystem_caches": "false",
    "tensorflow_session_parallelism": "1",
    "tensorflow_session_config_file": "{tensorflow_session_config_file}",
    "tensorflow_intra_op_parallelism": "2",
    "tensorflow_inter_op_parallelism": "1",
    "use_alts_credentials": "false",
    "ssl_config_file": "{ssl_config_file}",
    "platform_config_file": "{platform_config_file}",
    "per_process_gpu_memory_fraction": "0.5",
    "saved_model_tags": "serve",
    "grpc_channel_arguments": "grpc.max_connection_age_ms=600000",
    "grpc_max_threads": "8",
    "enable_model_warmup": "true",
    "num_request_iterations_for_warmup": "2",
    "version": "true",
    "monitoring_config_file": "{monitoring_config_file}",
    "remove_unused_fields_from_bundle_metagraph": "true",
    "prefer_tflite_model": "false",
    "num_tflite_pools": "2",
    "num_tflite_interpreters_per_pool": "1",
    "enable_signature_method_name_check": "true",
    "xla_cpu_compilation_enabled": "false",
    "xla_gpu_compilation_enabled": "false",
    "enable_profiler": "true",
    "thread_pool_factory_config_file": "{thread_pool_factory_config_file}",
    "mixed_precision": "bfloat16",
    "skip_initialize_tpu": "true",
    "enable_grpc_healthcheck_service": "true",
    "enable_serialization_as_tensor_content": "false",
}

# The flags ServerProcess gives every server itself.
GIVEN_BY_SERVER_PROCESS = ("port", "rest_api_port", "enable_grpc_healthcheck_service")
# One server start each; together with the above they cover every flag once.
MODEL_CONFIG_GROUP = tuple(
    name
    for name in UPSTREAM_FLAGS
    if name
    not in {
        *GIVEN_BY_SERVER_PROCESS,
        "version",
        "ssl_config_file",
        "model_name",
        "model_base_path",
        "tensorflow_session_parallelism",
    }
)
TLS_GROUP = ("ssl_config_file", "model_name", "model_base_path", "tensorflow_session_parallelism")
