"""Pod Security "restricted" and more for every pod; network policies that deny by default."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import (
    COMPONENT,
    K8S_VERSION,
    NAMESPACE,
    Doc,
    Manifests,
    all_containers,
    pod_labels,
    pod_spec,
    selects,
)

# Volume types Pod Security "restricted" allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def test_namespace_enforces_restricted_pod_security(manifests: Manifests):
    labels = manifests.get("Namespace", NAMESPACE)["metadata"]["labels"]
    version = "v" + ".".join(K8S_VERSION.split(".")[:2])
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == version


def _effective(pod: Doc, container: Doc, key: str):
    """A security setting as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext", {})
    return own[key] if key in own else pod.get("securityContext", {}).get(key)


def test_every_pod_is_hardened(manifests: Manifests):
    problems = []
    for workload in manifests.workloads():
        name, spec = workload["metadata"]["name"], pod_spec(workload)
        pod = spec.get("securityContext", {})
        for key in ("runAsUser", "runAsGroup", "fsGroup"):
            if not pod.get(key):  # set, and not root
                problems.append(f"{name}: pod securityContext.{key} is {pod.get(key)!r}")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                problems.append(f"{name}: {key}")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: mounts a service account token")
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            if not kinds <= RESTRICTED_VOLUMES:
                problems.append(f"{name}: volume {volume['name']} is {kinds}")
        for container in all_containers(spec):
            where = f"{name}/{container['name']}"
            context = container.get("securityContext", {})
            expected = {
                "runAsNonRoot": _effective(spec, container, "runAsNonRoot") is True,
                "runAsUser != 0": _effective(spec, container, "runAsUser") not in (None, 0),
                "seccompProfile RuntimeDefault": (
                    (_effective(spec, container, "seccompProfile") or {}).get("type")
                    == "RuntimeDefault"
                ),
                "allowPrivilegeEscalation false": context.get("allowPrivilegeEscalation") is False,
                "readOnlyRootFilesystem": context.get("readOnlyRootFilesystem") is True,
                "capabilities drop ALL": context.get("capabilities", {}).get("drop") == ["ALL"],
                "no added capabilities": not context.get("capabilities", {}).get("add"),
                "not privileged": not context.get("privileged"),
                "no hostPort": not any("hostPort" in p for p in container.get("ports", [])),
            }
            problems += [f"{where}: {rule}" for rule, ok in expected.items() if not ok]
    assert problems == []


def test_every_main_container_writes_tmp_to_an_empty_dir(manifests: Manifests):
    for workload in manifests.workloads():
        spec = pod_spec(workload)
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in spec["containers"]:
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in empty_dirs, f"{workload['metadata']['name']}: /tmp"


def test_every_container_has_memory_limits_and_cpu_requests(manifests: Manifests):
    for workload in manifests.workloads():
        for container in all_containers(pod_spec(workload)):
            resources = container.get("resources", {})
            assert "cpu" in resources.get("requests", {}), container["name"]
            assert "memory" in resources.get("limits", {}), container["name"]


# Network policies -------------------------------------------------------------------------


def _policies(manifests: Manifests, labels: dict[str, str], direction: str) -> list[Doc]:
    return [
        policy
        for policy in manifests.of_kind("NetworkPolicy")
        if direction in policy["spec"]["policyTypes"]
        and selects(policy["spec"]["podSelector"], labels)
    ]


def test_default_deny_covers_every_pod_both_ways(manifests: Manifests):
    deny = [
        p
        for p in manifests.of_kind("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1


def test_every_pod_may_resolve_names(manifests: Manifests):
    for workload in manifests.workloads():
        rules = [
            rule
            for p in _policies(manifests, pod_labels(workload), "Egress")
            for rule in p["spec"].get("egress", [])
        ]
        dns = {
            (port["protocol"], port["port"])
            for rule in rules
            if any(
                peer.get("podSelector", {}).get("matchLabels", {}).get("k8s-app") == "kube-dns"
                for peer in rule.get("to", [])
            )
            for port in rule.get("ports", [])
        }
        assert dns == {("UDP", 53), ("TCP", 53)}, workload["metadata"]["name"]


def _admits(peer: Doc, source: dict[str, str] | str) -> bool:
    """Whether one rule peer admits ``source``: pod labels in this namespace, an address
    outside the cluster ("external"), or a namespace with a label ("ns:key=value")."""
    if isinstance(source, dict):
        return set(peer) == {"podSelector"} and selects(peer["podSelector"], source)
    if source == "external":
        return "ipBlock" in peer
    key, _, value = source.removeprefix("ns:").partition("=")
    return set(peer) == {"namespaceSelector"} and selects(peer["namespaceSelector"], {key: value})


def _allows(peers: list[Doc], source: dict[str, str] | str) -> bool:
    return any(_admits(peer, source) for peer in peers)


def _egress_allowed(manifests: Manifests, source: dict, target: dict | str, port: int) -> bool:
    return any(
        _allows(rule.get("to", []), target)
        and any(p["port"] == port for p in rule.get("ports", []))
        for policy in _policies(manifests, source, "Egress")
        for rule in policy["spec"].get("egress", [])
    )


def _ingress_allowed(manifests: Manifests, target: dict, source: dict | str, port: int) -> bool:
    return any(
        _allows(rule.get("from", []), source)
        and any(p["port"] == port for p in rule.get("ports", []))
        for policy in _policies(manifests, target, "Ingress")
        for rule in policy["spec"].get("ingress", [])
    )


def _labels(manifests: Manifests, component: str) -> dict[str, str]:
    return pod_labels(manifests.component(component))


@pytest.mark.parametrize(
    ("source", "target", "port"),
    [
        ("api", "tf-serving", 8500),
        ("worker", "tf-serving", 8500),
        ("api", "postgres", 5432),
        ("worker", "postgres", 5432),
    ],
)
def test_components_reach_what_they_need(manifests: Manifests, source, target, port):
    src = _labels(manifests, source)
    if target == "postgres" and manifests.overlay == "gpu":
        # An external database: only egress towards addresses outside the cluster.
        assert _egress_allowed(manifests, src, "external", port)
        return
    dst = _labels(manifests, target)
    assert _egress_allowed(manifests, src, dst, port)
    assert _ingress_allowed(manifests, dst, src, port)


def test_tf_serving_accepts_only_the_api_workers_grpc_clients_and_prometheus(
    manifests: Manifests,
):
    tf_serving = _labels(manifests, "tf-serving")
    allowed = set()
    for policy in _policies(manifests, tf_serving, "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule["ports"]}
            for peer in rule["from"]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    labels = peer["podSelector"]["matchLabels"]
                    allowed |= {(f"pod:{labels[COMPONENT]}", port) for port in ports}
                else:
                    labels = peer["namespaceSelector"]["matchLabels"]
                    allowed |= {(f"ns:{k}={v}", port) for k, v in labels.items() for port in ports}
    assert allowed == {
        ("pod:api", 8500),
        ("pod:worker", 8500),
        ("ns:ftserve.io/grpc-client=true", 8500),
        ("ns:kubernetes.io/metadata.name=monitoring", 8501),
    }


def test_workers_accept_no_connections(manifests: Manifests):
    worker = _labels(manifests, "worker")
    rules = [
        r for p in _policies(manifests, worker, "Ingress") for r in p["spec"].get("ingress", [])
    ]
    assert rules == []


def test_prometheus_may_scrape_what_is_annotated(manifests: Manifests):
    for workload in manifests.workloads():
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        port = int(annotations["prometheus.io/port"])
        assert _ingress_allowed(
            manifests, pod_labels(workload), "ns:kubernetes.io/metadata.name=monitoring", port
        ), workload["metadata"]["name"]
