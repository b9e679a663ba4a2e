"""The import rules of ``tests/support/import_rules.py`` hold for the whole source tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.import_rules import RULES, Rule, import_graph, violations

ROOT = Path(__file__).resolve().parents[1]


def test_the_source_tree_keeps_every_import_rule():
    assert violations(ROOT) == []


def test_every_rule_names_packages_that_exist():
    graph = import_graph(ROOT)
    for rule in RULES:
        assert any(m == rule.source or m.startswith(rule.source + ".") for m in graph), rule


def write(root: Path, module: str, source: str) -> None:
    path = root / Path(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(root).parents:
        if str(parent) != ".":
            (root / parent / "__init__.py").touch()
    path.write_text(source)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "exporter").mkdir()
    (tmp_path / "exporter" / "__init__.py").touch()
    write(tmp_path, "service.training.trainer", "import keras\n")
    write(tmp_path, "service.contract.names", "import re\n")
    return tmp_path


def test_a_direct_forbidden_import_is_reported(tree: Path):
    write(tree, "service.api.routes", "from service.training.trainer import train\n")
    found = violations(tree)
    assert any(
        line.startswith("service.api.routes -> service.training.trainer  (service.api ↛")
        for line in found
    ), found


def test_an_import_inside_a_function_counts(tree: Path):
    write(tree, "service.jobs.store", "def f():\n    import tensorflow as tf\n    return tf\n")
    found = violations(tree)
    assert any(line.startswith("service.jobs.store -> tensorflow") for line in found), found


def test_a_forbidden_module_reached_through_an_allowed_one_is_reported(tree: Path):
    write(tree, "service.contract.helpers", "from ..training import trainer\n")
    write(tree, "service.api.app", "from service.contract import helpers\n")
    found = violations(tree)
    chain = "service.api.app -> service.contract.helpers -> service.training.trainer"
    assert any(line.startswith(chain) for line in found), found


def test_a_clean_tree_has_no_violations(tree: Path):
    write(tree, "service.api.app", "from service.contract.names import re\nimport fastapi\n")
    rules = (Rule("service.api", ("service.training",), "test"),)
    assert violations(tree, rules) == []
