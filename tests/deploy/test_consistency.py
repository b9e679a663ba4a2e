"""The manifests agree with the code: flags, ports, paths, settings, shutdown, the queue query."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest
from google.protobuf import text_format

from service.api.server import GRACEFUL_SHUTDOWN_SECONDS
from service.config import Settings
from service.jobs.records import JobState
from service.jobs.tables import JobRow
from service.model_server.options import ServerOptions, parse_options
from service.model_server.server_config_pb2 import BatchingParameters, MonitoringConfig
from tests.deploy.manifests import (
    Doc,
    Manifests,
    all_containers,
    mount_of_claim,
    pod_spec,
    volume_of,
)

MODELS_CLAIM = "ftserve-models"
DATA_CLAIM = "ftserve-data"


def _tf_serving(manifests: Manifests) -> tuple[Doc, Doc, ServerOptions]:
    """TF Serving's pod spec, container and flags, parsed with TensorFlow Serving's names."""
    spec = pod_spec(manifests.component("tf-serving"))
    container = manifests.container("tf-serving")
    assert container["command"] == ["tensorflow_model_server"]
    # parse_options knows TensorFlow Serving's flags (ftserve model-server takes the same
    # ones): a misspelt flag, a bad value or a bad combination fails here.
    return spec, container, parse_options(container["args"])


def _port(container: Doc, name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def test_tf_serving_flags_ports_and_probes_agree(manifests: Manifests):
    _, container, options = _tf_serving(manifests)
    assert (options.port, options.rest_api_port) == (8500, 8501)
    assert _port(container, "grpc") == options.port
    assert _port(container, "rest") == options.rest_api_port
    assert options.enable_grpc_healthcheck_service
    assert options.model_config_file_poll_wait_seconds > 0  # new models appear by themselves
    assert container["readinessProbe"]["grpc"]["port"] == options.port
    assert container["readinessProbe"] != container["livenessProbe"]
    service = manifests.get("Service", "ftserve-tf-serving")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"grpc": (options.port, "grpc"), "rest": (options.rest_api_port, "rest")}


def test_tf_serving_config_files_come_from_its_config_map(manifests: Manifests):
    spec, container, options = _tf_serving(manifests)
    assert options.enable_batching
    files = {}
    for path in (options.batching_parameters_file, options.monitoring_config_file):
        assert path is not None
        mount, volume = volume_of(spec, container, str(PurePosixPath(path).parent))
        assert mount.get("readOnly") is True
        data = manifests.get("ConfigMap", volume["configMap"]["name"])["data"]
        files[path] = data[PurePosixPath(path).name]
    batching = text_format.Parse(files[options.batching_parameters_file], BatchingParameters())
    assert batching.allowed_batch_sizes[-1] == batching.max_batch_size.value
    monitoring = text_format.Parse(files[options.monitoring_config_file], MonitoringConfig())
    assert monitoring.prometheus_config.enable
    annotations = manifests.component("tf-serving")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == monitoring.prometheus_config.path
    assert int(annotations["prometheus.io/port"]) == options.rest_api_port


def test_model_repository_is_at_one_path_everywhere(manifests: Manifests):
    """models.config holds absolute base paths written by the workers and read by TF Serving
    as they are, so every pod must mount the repository at the same path."""
    spec, container, options = _tf_serving(manifests)
    assert options.model_config_file is not None
    repo = str(PurePosixPath(options.model_config_file).parent)
    mount, volume = volume_of(spec, container, repo)
    assert volume["persistentVolumeClaim"]["claimName"] == MODELS_CLAIM
    assert mount.get("readOnly") is True  # TF Serving never writes to the repository
    for component, writable in (("worker", True), ("api", False)):
        component_spec = pod_spec(manifests.component(component))
        component_container = manifests.container(component)
        assert manifests.env(component_container)["FTSERVE_MODEL_REPO"] == repo
        component_mount = mount_of_claim(component_spec, component_container, MODELS_CLAIM)
        assert component_mount is not None and component_mount["mountPath"] == repo
        assert bool(component_mount.get("readOnly")) is not writable, component


def test_models_config_seed_creates_the_file_only_when_missing(manifests: Manifests):
    spec, _, options = _tf_serving(manifests)
    (seed,) = spec["initContainers"]
    script = " ".join(seed["command"] + seed["args"])
    assert "set -C" in script  # noclobber: never truncate a models.config a worker wrote
    assert f"> {options.model_config_file}" in script
    mount = mount_of_claim(spec, seed, MODELS_CLAIM)
    assert mount is not None
    assert mount["mountPath"] == str(PurePosixPath(options.model_config_file).parent)


def test_api_and_workers_reach_every_tf_serving_pod_through_a_headless_service(
    manifests: Manifests,
):
    _, container, options = _tf_serving(manifests)
    tf_serving = manifests.component("tf-serving")["spec"]["selector"]["matchLabels"]
    for component in ("api", "worker"):
        address = manifests.env(manifests.container(component))["FTSERVE_MODEL_SERVER"]
        # gRPC's DNS resolver hands the channel every pod's address; round_robin uses them all.
        assert address.startswith("dns:///"), address
        host, _, port = address.removeprefix("dns:///").rpartition(":")
        service = manifests.get("Service", host)  # a Service in the same namespace
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"] == tf_serving
        (grpc,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
        assert grpc["targetPort"] == "grpc" and _port(container, "grpc") == options.port


def test_tf_serving_closes_connections_so_clients_find_new_replicas(manifests: Manifests):
    _, _, options = _tf_serving(manifests)
    pairs = filter(None, options.grpc_channel_arguments.split(","))
    arguments = dict(pair.split("=", 1) for pair in pairs)
    # Clients resolve the headless Service again when a connection closes.
    assert 0 < int(arguments["grpc.max_connection_age_ms"]) <= 5 * 60 * 1000


def _ftserve_env(manifests: Manifests) -> dict[str, dict]:
    """Every FTSERVE_* variable of every container, with the values each container sees."""
    found: dict[str, dict] = {}
    for workload in manifests.workloads():
        for container in all_containers(pod_spec(workload)):
            for name, value in manifests.env(container).items():
                if name.startswith("FTSERVE_"):
                    found.setdefault(name, {})[container["name"]] = value
    return found


def test_every_ftserve_variable_is_a_valid_setting(manifests: Manifests):
    variables = _ftserve_env(manifests)
    unknown = {
        n for n in variables if n.removeprefix("FTSERVE_").lower() not in Settings.model_fields
    }
    assert unknown == set()  # pydantic-settings ignores unknown FTSERVE_* variables silently
    for values in variables.values():
        assert len({str(v) for v in values.values()}) == 1, values  # the same everywhere
    literals = {
        name.removeprefix("FTSERVE_").lower(): value
        for name, values in variables.items()
        for value in values.values()
        if isinstance(value, str)
    }
    Settings(**literals)  # values of the right types, within the fields' limits


def test_secrets_come_from_secrets(manifests: Manifests):
    variables = _ftserve_env(manifests)
    for name in ("FTSERVE_API_TOKEN", "FTSERVE_DATABASE_URL"):
        for value in variables[name].values():
            assert "secretKeyRef" in value, name


def test_data_folders_are_on_the_shared_volume(manifests: Manifests):
    for component, names in (
        ("worker", ("FTSERVE_DATA_ROOT", "FTSERVE_WORK_DIR", "FTSERVE_WEIGHTS_DIR")),
        ("api", ("FTSERVE_DATA_ROOT",)),
    ):
        spec, container = pod_spec(manifests.component(component)), manifests.container(component)
        mount = mount_of_claim(spec, container, DATA_CLAIM)
        assert mount is not None and not mount.get("readOnly"), component
        env = manifests.env(container)
        for name in names:
            assert PurePosixPath(env[name]).is_relative_to(mount["mountPath"]), name


def test_api_shutdown_outlasts_the_graceful_drain(manifests: Manifests):
    spec = pod_spec(manifests.component("api"))
    container = manifests.container("api")
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= int(command[1]) + GRACEFUL_SHUTDOWN_SECONDS
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    annotations = manifests.component("api")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == _port(container, "http")


def test_worker_has_time_to_hand_back_or_finish_its_job(manifests: Manifests):
    assert pod_spec(manifests.component("worker"))["terminationGracePeriodSeconds"] >= 600


def test_gpu_overlay_gives_each_worker_and_model_server_a_gpu(gpu: Manifests, dev: Manifests):
    for component in ("worker", "tf-serving"):
        spec = pod_spec(gpu.component(component))
        container = gpu.container(component)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {t["key"] for t in spec["tolerations"]} == {"nvidia.com/gpu"}
        assert "nvidia.com/gpu" not in dev.container(component)["resources"].get("limits", {})
    assert gpu.container("tf-serving")["image"].endswith("-gpu")


_QUERY = re.compile(
    r"SELECT COUNT\(\*\) FROM (?P<table>\w+) WHERE (?P<column>\w+) IN \((?P<states>[^)]*)\)"
)


def test_workers_scale_on_the_jobs_that_need_one(gpu: Manifests):
    worker = gpu.component("worker")
    assert "replicas" not in worker["spec"]  # KEDA owns the count; an apply must not reset it
    scaled = gpu.get("ScaledObject", "ftserve-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] == 0
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    match = _QUERY.fullmatch(trigger["metadata"]["query"])
    assert match is not None, trigger["metadata"]["query"]
    assert match["table"] == JobRow.__tablename__
    assert match["column"] in JobRow.__table__.columns
    states = {s.strip().strip("'") for s in match["states"].split(",")}
    # Running jobs count too: their workers must not be scaled away mid-training.
    assert states == {JobState.QUEUED.value, JobState.RUNNING.value}
    assert float(trigger["metadata"]["targetQueryValue"]) == 1  # one worker per job


def test_dev_runs_one_worker_without_keda(dev: Manifests):
    assert dev.component("worker")["spec"]["replicas"] == 1
    assert dev.of_kind("ScaledObject") == []


@pytest.mark.parametrize("component", ["api", "tf-serving"])
def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(
    manifests: Manifests, component: str
):
    workload = manifests.component(component)
    assert "replicas" not in workload["spec"]  # an apply would reset the autoscaler's count
    hpa = manifests.get("HorizontalPodAutoscaler", workload["metadata"]["name"])
    assert hpa["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
    assert manifests.get("PodDisruptionBudget", workload["metadata"]["name"])
