"""Render the kustomize overlays under deploy/k8s and look things up in what they produce."""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "gpu")
NAMESPACE = "ftserve"
# The Kubernetes version every rendered object is validated against (kubernetes-validate must
# ship its schemas) and the namespace's Pod Security Standards version. One place to bump.
K8S_VERSION = "1.32.0"

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")

Doc = dict[str, Any]


def render(overlay: str) -> list[Doc]:
    """The objects ``kubectl kustomize deploy/k8s/overlays/<overlay>`` prints.

    Skips the calling test when kubectl is not installed: rendering needs its bundled
    kustomize, and nothing here can be checked without the rendered objects.
    """
    if shutil.which("kubectl") is None:
        pytest.skip(
            f"kubectl is not on PATH: cannot render deploy/k8s/overlays/{overlay} "
            "(install kubectl, which bundles kustomize)"
        )
    return _render(overlay)


@functools.cache
def _render(overlay: str) -> list[Doc]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass(frozen=True)
class Manifests:
    """One overlay's rendered objects."""

    overlay: str
    docs: list[Doc]

    def of_kind(self, kind: str) -> list[Doc]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def find(self, kind: str, name: str) -> Doc | None:
        return next((d for d in self.of_kind(kind) if d["metadata"]["name"] == name), None)

    def get(self, kind: str, name: str) -> Doc:
        found = self.find(kind, name)
        assert found is not None, f"overlays/{self.overlay} renders no {kind} {name!r}"
        return found

    def workloads(self) -> list[Doc]:
        return [doc for doc in self.docs if doc["kind"] in WORKLOAD_KINDS]

    def component(self, component: str) -> Doc:
        """The workload whose pods are labelled ``app.kubernetes.io/component=<component>``."""
        matches = [w for w in self.workloads() if pod_labels(w).get(COMPONENT) == component]
        assert len(matches) == 1, f"overlays/{self.overlay}: {len(matches)} {component} workloads"
        return matches[0]

    def container(self, component: str, name: str | None = None) -> Doc:
        """A container of a component's pods (its only main container when unnamed)."""
        containers = pod_spec(self.component(component))["containers"]
        if name is None:
            assert len(containers) == 1, f"{component} has several containers"
            return containers[0]
        return next(c for c in containers if c["name"] == name)

    def env(self, container: Doc) -> dict[str, Any]:
        """A container's environment: literal values, ConfigMap entries, or the valueFrom."""
        values: dict[str, Any] = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref is not None:
                values.update(self.get("ConfigMap", ref["name"]).get("data", {}))
        for var in container.get("env", []):
            values[var["name"]] = var["value"] if "value" in var else var["valueFrom"]
        return values


COMPONENT = "app.kubernetes.io/component"


def pod_spec(workload: Doc) -> Doc:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Doc) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def all_containers(spec: Doc) -> Iterator[Doc]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def volume_of(spec: Doc, container: Doc, mount_path: str) -> tuple[Doc, Doc]:
    """The (volumeMount, volume) that a container mounts at ``mount_path``."""
    mount = next(m for m in container.get("volumeMounts", []) if m["mountPath"] == mount_path)
    volume = next(v for v in spec.get("volumes", []) if v["name"] == mount["name"])
    return mount, volume


def mount_of_claim(spec: Doc, container: Doc, claim: str) -> Doc | None:
    """The container's mount of the PersistentVolumeClaim ``claim``, if it has one."""
    names = {
        v["name"]
        for v in spec.get("volumes", [])
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    return next((m for m in container.get("volumeMounts", []) if m["name"] in names), None)


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) matches ``labels``."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True
