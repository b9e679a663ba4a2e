"""The Dockerfiles: what they copy exists, versions agree with pyproject.toml, entrypoints run."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from service.cli import _parser
from tests.deploy.manifests import ROOT, Manifests, all_containers, pod_spec

DOCKER = ROOT / "deploy" / "docker"
IMAGES = {"api": "api", "worker": "worker"}  # image → the ftserve subcommand it runs
API_REQUIREMENTS = DOCKER / "api" / "requirements.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
DEPENDENCIES = {
    canonicalize_name(req.name): req for req in map(Requirement, PYPROJECT["dependencies"])
}
# What the API image must never contain.
TRAINING_ONLY = {"tensorflow", "keras", "tensorflow-serving-api", "onnx", "tf2onnx", "onnxruntime"}
# Imported by grpc/__init__.py only when they happen to be installed; the API needs none.
OPTIONAL_IMPORTS = {"grpcio-tools", "grpcio-health-checking", "grpcio-reflection"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (no heredocs)."""
    instructions, pending = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, value = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip()))
        pending = ""
    return instructions


def base_images(path: Path) -> list[str]:
    """The FROM images of a Dockerfile, global ARG defaults substituted, stage names skipped."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images = []
    for instruction in parse_dockerfile(path):
        if instruction.keyword == "ARG" and not images and "=" in instruction.value:
            name, _, default = instruction.value.partition("=")
            args[name] = default
        if instruction.keyword == "FROM":
            words = instruction.value.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], words[0])
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
            if image not in stages:
                images.append(image)
    return images


def copy_sources(path: Path) -> list[str]:
    """The build-context paths a Dockerfile's COPY/ADD instructions read."""
    sources = []
    for instruction in parse_dockerfile(path):
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(instruction.value)
        if any(w.startswith("--from=") for w in words):
            continue  # from another stage, not the context
        words = [w for w in words if not w.startswith("--")]
        if words[0].startswith("["):
            words = json.loads(instruction.value)
        sources += words[:-1]
    return sources


def entrypoint(path: Path) -> list[str]:
    command: list[str] = []
    for instruction in parse_dockerfile(path):
        if instruction.keyword in ("ENTRYPOINT", "CMD"):
            # The exec form only: a shell form would make sh, not ftserve, PID 1 (signals).
            command += json.loads(instruction.value)
    return command


def dockerfile(image: str) -> Path:
    return DOCKER / image / "Dockerfile"


# .dockerignore ---------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: * and ? within one path element, ** across elements."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/"))
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def excluded_from_context(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (the last match wins;
    a pattern that matches a folder covers everything in it)."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    elements = path.split("/")
    prefixes = ["/".join(elements[:i]) for i in range(1, len(elements) + 1)]
    excluded = False
    for pattern in patterns:
        regex = _ignore_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not pattern.startswith("!")
    return excluded


@pytest.mark.parametrize("image", IMAGES)
def test_every_copy_source_exists_and_is_in_the_build_context(image: str):
    sources = copy_sources(dockerfile(image))
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        files = [f for f in files if "__pycache__" not in f.parts]
        assert files, source
        left_out = [f for f in files if excluded_from_context(f.relative_to(ROOT).as_posix())]
        assert left_out == [], f"{source}: .dockerignore leaves these out"


@pytest.mark.parametrize(
    "path", [".venv/bin/python", ".git/HEAD", "tests/conftest.py", "var/data/x", "deploy/k8s"]
)
def test_build_context_leaves_out_what_no_image_needs(path: str):
    assert excluded_from_context(path)


def test_build_context_leaves_out_bytecode():
    assert excluded_from_context("service/__pycache__/cli.cpython-311.pyc")
    assert not excluded_from_context("service/cli.py")


# Entrypoints -------------------------------------------------------------------------------


@pytest.mark.parametrize(("image", "command"), IMAGES.items())
def test_entrypoint_is_an_ftserve_subcommand(image: str, command: str):
    argv = entrypoint(dockerfile(image))
    assert argv[0] == "ftserve"  # the console script pyproject.toml installs
    assert "ftserve" in PYPROJECT["scripts"]
    args = _parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown command or flag
    assert args.command == command


def test_api_image_listens_where_the_manifests_expect(manifests: Manifests):
    args = _parser().parse_args(entrypoint(dockerfile("api"))[1:])
    assert args.host == "0.0.0.0"
    container = manifests.container("api")
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": args.port}


def test_images_run_as_the_uid_the_manifests_use(manifests: Manifests):
    for image in IMAGES:
        users = [i.value for i in parse_dockerfile(dockerfile(image)) if i.keyword == "USER"]
        uid, _, gid = users[-1].partition(":")
        context = pod_spec(manifests.component(image))["securityContext"]
        assert (int(uid), int(gid)) == (context["runAsUser"], context["runAsGroup"]), image


# Versions ----------------------------------------------------------------------------------


def _tag_version(image: str) -> Version:
    tag = image.rsplit(":", 1)[1]
    return Version(tag.split("-")[0])


def test_worker_base_is_the_pinned_tensorflow_gpu_image():
    (image,) = base_images(dockerfile("worker"))
    assert image.startswith("tensorflow/tensorflow:") and image.endswith("-gpu")
    assert _tag_version(image) in DEPENDENCIES["tensorflow"].specifier


def test_api_base_is_a_python_the_project_supports():
    images = set(base_images(dockerfile("api")))
    (image,) = images  # the wheel stage and the runtime use the same base
    assert image.startswith("python:") and "slim" in image
    assert SpecifierSet(PYPROJECT["requires-python"]).contains(_tag_version(image))


def test_tf_serving_image_matches_the_serving_api(manifests: Manifests):
    images = {
        c["image"]
        for w in manifests.workloads()
        for c in all_containers(pod_spec(w))
        if c["image"].startswith("tensorflow/serving:")
    }
    assert images
    (worker,) = base_images(dockerfile("worker"))
    for image in images:
        assert _tag_version(image) in DEPENDENCIES["tensorflow-serving-api"].specifier
        # Models trained with TensorFlow 2.X are served by TensorFlow Serving 2.X.
        assert _tag_version(image).release[:2] == _tag_version(worker).release[:2]


def _api_requirements() -> list[Requirement]:
    lines = API_REQUIREMENTS.read_text(encoding="utf-8").splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_api_requirements_are_pinned_inside_pyproject_ranges():
    for requirement in _api_requirements():
        name = canonicalize_name(requirement.name)
        assert name in DEPENDENCIES, f"{name} is not a dependency in pyproject.toml"
        assert name not in TRAINING_ONLY
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{requirement}: pin one version"
        assert DEPENDENCIES[name].specifier.contains(spec.version), requirement
        assert requirement.extras <= DEPENDENCIES[name].extras, requirement


def _closure(requirements: list[Requirement]) -> set[str]:
    """The installed distributions that ``requirements`` pull in, transitively."""
    found: set[str] = set()
    todo = [(canonicalize_name(r.name), r.extras) for r in requirements]
    while todo:
        name, extras = todo.pop()
        if name in found:
            continue
        found.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((canonicalize_name(requirement.name), requirement.extras))
    return found


PROBE = """
import json, sys
before = set(sys.modules)
import service.api.server
from service.api.app import create_app
from service.config import Settings
create_app(Settings())
print(json.dumps(sorted({m.__file__ for n, m in list(sys.modules.items())
                         if n not in before and getattr(m, "__file__", None)})))
"""


def test_api_requirements_cover_everything_the_api_imports():
    """Every module ``ftserve api`` loads comes from the standard library, the project, or a
    distribution the API image installs (requirements.txt and what it pulls in)."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "FTSERVE_DATA_ROOT": "/nonexistent"},
    )
    closure = _closure(_api_requirements())
    assert closure & TRAINING_ONLY == set()
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    provided = {
        str(dist.locate_file(file))
        for name in closure | OPTIONAL_IMPORTS
        if (dist := installed.get(name)) is not None
        for file in dist.files or []
    }
    homes = [sysconfig.get_paths()["stdlib"], ROOT / "service"]
    unprovided = [
        path
        for path in json.loads(probe.stdout)
        if path not in provided and not any(Path(path).is_relative_to(h) for h in homes)
    ]
    assert unprovided == []


def test_worker_image_fetches_every_documented_imagenet_file(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, str(DOCKER / "worker" / "fetch_weights.py"), "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "KERAS_HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    paths = [Path(path) for _, _, path in rows]
    assert paths and all(path.parent == tmp_path / "models" for path in paths)
    assert len(set(paths)) == len(paths)
    listed = {(backbone, path.name) for (backbone, _, _), path in zip(rows, paths, strict=True)}
    # The README's backbone table names each backbone's file in $KERAS_HOME/models/.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(\w+)`.*\| `([\w.-]+\.h5)` \|$", readme, re.MULTILINE))
    assert documented <= listed
