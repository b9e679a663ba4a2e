"""The project's import rules, and a checker that walks every import in the source tree.

Every ``import`` counts, including those inside functions and under ``TYPE_CHECKING``: a
lazy import is still a dependency, it only fails later. A rule holds for a module and for
everything it reaches through the project's own modules, so ``api -> jobs -> training``
breaks ``api`` ↛ ``training`` as surely as a direct import would.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

TF = ("tensorflow", "keras", "tensorflow_serving", "tf2onnx", "onnxruntime")


@dataclass(frozen=True)
class Rule:
    """Modules under ``source`` must not reach any module under ``forbidden``."""

    source: str
    forbidden: tuple[str, ...]
    why: str


RULES = (
    Rule(
        "service.api",
        ("service.training", "service.finetune", "exporter", "service.model_server", *TF),
        "the API image has no TensorFlow and starts in about a second",
    ),
    *(
        Rule(f"service.{name}", TF, "imported by the API tier, which has no TensorFlow")
        for name in ("jobs", "contract", "ingest", "model_client", "api_client")
    ),
    *(
        Rule(
            f"service.{name}",
            (
                "service.api",
                "service.jobs",
                "service.training",
                "service.finetune",
                "exporter",
                *TF,
            ),
            "the CLI's client speaks to the API over HTTP and to the model server over gRPC,"
            " not through their code, and runs without TensorFlow",
        )
        for name in ("api_client", "client")
    ),
    Rule(
        "service.contract",
        (
            "service.api",
            "service.jobs",
            "service.ingest",
            "service.model_client",
            "service.model_server",
            "service.training",
            "service.finetune",
            "exporter",
        ),
        "every tier imports the contracts; they import no tier",
    ),
    Rule(
        "service.model_server",
        ("service.training", "service.jobs", "service.api", "service.finetune", "exporter"),
        "the model server reads any TF Serving base path, not our training",
    ),
    Rule(
        "exporter",
        ("service.api", "service.jobs", "service.finetune"),
        "the exporter turns a training result into files; jobs and HTTP are above it",
    ),
    Rule(
        "service.training",
        ("exporter", "service.api", "service.jobs", "service.finetune"),
        "training is the core: it knows nothing about exporting, jobs or HTTP",
    ),
    Rule(
        "service.jobs",
        ("service.api", "service.finetune", "service.training", "exporter"),
        "the job store holds rows; the worker (finetune) drives it, not the other way",
    ),
    *(
        Rule(
            f"service.{name}",
            ("service.api",),
            "nothing but the CLI imports the API",
        )
        for name in ("jobs", "finetune", "training", "model_client", "ingest", "model_server")
    ),
)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, packages: tuple[str, ...] = ("service", "exporter")) -> dict:
    """``{module name: source path}`` for every .py file under ``packages`` (not *_pb2)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if not path.name.endswith("_pb2.py"):
                found[module_name(root, path)] = path
    return found


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports, anywhere in the file, resolved to full names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, is_package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _targets(name: str, modules: dict) -> list[str]:
    """The project modules that importing ``name`` runs: it and its parent packages."""
    parts = name.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in modules]


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: names it imports}``, project modules resolved, others kept as written."""
    modules = project_modules(root)
    graph = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for name in imported_names(path, module):
            targets = _targets(name, modules)
            edges.update(targets if targets else [name])
        graph[module] = edges - {module}
    return graph


def violations(root: Path, rules: tuple[Rule, ...] = RULES) -> list[str]:
    """One line per module that reaches a forbidden module, with the chain that gets there."""
    graph = import_graph(root)
    found = []
    for rule in rules:
        for module in sorted(m for m in graph if _within(m, rule.source)):
            chain = _first_path(graph, module, rule.forbidden)
            if chain is not None:
                found.append(f"{' -> '.join(chain)}  ({rule.source} ↛ {chain[-1]}: {rule.why})")
    return found


def _first_path(graph: dict[str, set[str]], start: str, forbidden: tuple[str, ...]):
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        # Deepest names first, so a chain ends at the module, not at its package.
        for name in sorted(graph.get(current, ()), key=lambda n: (-n.count("."), n)):
            if name in parent:
                continue
            parent[name] = current
            if any(_within(name, f) for f in forbidden):
                chain = [name]
                while parent[chain[-1]] is not None:
                    chain.append(parent[chain[-1]])  # type: ignore[arg-type]
                return chain[::-1]
            if name in graph:
                queue.append(name)
    return None
