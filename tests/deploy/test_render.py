"""Each overlay renders, validates against Kubernetes' schemas, and refers only to real objects."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.manifests import (
    K8S_VERSION,
    NAMESPACE,
    Doc,
    Manifests,
    all_containers,
    pod_labels,
    pod_spec,
    selects,
)

SCHEMAS = Path(__file__).parent / "schemas"
# Custom resources have no schema in kubernetes-validate: each is checked against a small
# schema of our own, of the fields the manifests use (unknown fields refused).
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda-v1alpha1.json",
}
# Objects the manifests refer to that an operator creates (the README says how).
EXTERNAL = {"gpu": {("Secret", "ftserve-secrets")}}
CLUSTER_SCOPED = {"Namespace"}


def _schema_errors(doc: Doc) -> list[str]:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text(encoding="utf-8"))
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no schema: {exc.message} (add one to CRD_SCHEMAS if it is a custom resource)"]
    return []


def test_every_object_validates_strictly(manifests: Manifests):
    errors = {
        f"{doc['kind']}/{doc['metadata']['name']}": found
        for doc in manifests.docs
        if (found := _schema_errors(doc))
    }
    assert errors == {}


def test_crd_schemas_refuse_unknown_fields():
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [], "minReplicas": 0},
    }
    assert len(_schema_errors(scaled)) == 2  # empty triggers, unknown minReplicas


def test_every_namespaced_object_lands_in_the_ftserve_namespace(manifests: Manifests):
    misplaced = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in manifests.docs
        if d["kind"] not in CLUSTER_SCOPED and d["metadata"].get("namespace") != NAMESPACE
    ]
    assert misplaced == []


def test_every_image_is_pinned_to_a_version(manifests: Manifests):
    images = {
        container["image"]
        for workload in manifests.workloads()
        for container in all_containers(pod_spec(workload))
    }
    unpinned = [
        image
        for image in images
        if "@sha256:" not in image
        and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"))
    ]
    assert images and unpinned == []


def _referenced(manifests: Manifests) -> set[tuple[str, str]]:
    refs: set[tuple[str, str]] = set()
    for workload in manifests.workloads():
        spec = pod_spec(workload)
        if "serviceAccountName" in spec:
            refs.add(("ServiceAccount", spec["serviceAccountName"]))
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                refs.add(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                refs.add(("Secret", volume["secret"]["secretName"]))
            if "persistentVolumeClaim" in volume:
                refs.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        for container in all_containers(spec):
            for source in container.get("envFrom", []):
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in source:
                        refs.add((kind, source[key]["name"]))
            for var in container.get("env", []):
                value_from = var.get("valueFrom", {})
                for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    if key in value_from:
                        refs.add((kind, value_from[key]["name"]))
    for hpa in manifests.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        refs.add((target["kind"], target["name"]))
    for scaled in manifests.of_kind("ScaledObject"):
        refs.add(("Deployment", scaled["spec"]["scaleTargetRef"]["name"]))
        for trigger in scaled["spec"]["triggers"]:
            if "authenticationRef" in trigger:
                refs.add(("TriggerAuthentication", trigger["authenticationRef"]["name"]))
    for auth in manifests.of_kind("TriggerAuthentication"):
        refs.update(("Secret", ref["name"]) for ref in auth["spec"].get("secretTargetRef", []))
    for ingress in manifests.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            refs.update(
                ("Service", path["backend"]["service"]["name"]) for path in rule["http"]["paths"]
            )
    return refs


def test_every_reference_names_a_rendered_object(manifests: Manifests):
    rendered = {(d["kind"], d["metadata"]["name"]) for d in manifests.docs}
    external = EXTERNAL.get(manifests.overlay, set())
    assert _referenced(manifests) - rendered == external


@pytest.mark.parametrize("kind", ["Service", "PodDisruptionBudget"])
def test_selectors_match_pods(manifests: Manifests, kind: str):
    pods = [pod_labels(w) for w in manifests.workloads()]
    for doc in manifests.of_kind(kind):
        selector = doc["spec"]["selector"]
        selector = selector if kind == "PodDisruptionBudget" else {"matchLabels": selector}
        assert any(selects(selector, labels) for labels in pods), doc["metadata"]["name"]


def test_service_target_ports_are_container_ports(manifests: Manifests):
    for service in manifests.of_kind("Service"):
        workload = next(
            w
            for w in manifests.workloads()
            if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(w))
        )
        ports = {
            key
            for container in pod_spec(workload)["containers"]
            for port in container.get("ports", [])
            for key in (port.get("name"), port["containerPort"])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)


def test_ingress_backend_port_is_a_service_port(gpu: Manifests):
    for ingress in gpu.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = gpu.get("Service", backend["name"])
                names = {p["name"] for p in service["spec"]["ports"]}
                assert backend["port"]["name"] in names
