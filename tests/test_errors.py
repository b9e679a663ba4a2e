from __future__ import annotations

import inspect
import re

import pytest

from service import errors
from service.errors import FtserveError

ERROR_CLASSES = sorted(
    (c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, FtserveError)),
    key=lambda c: c.__name__,
)

# "    │   ├── InvalidArchiveError (400 invalid_archive)": the prefix gives the depth.
TREE_LINE = re.compile(r"^(?P<prefix>[ │├└─]*)(?P<name>\w+) \((?P<status>\d{3}) (?P<code>\w+)\)$")


def drawn_tree() -> dict[str, tuple[str | None, int, str]]:
    """``{class name: (parent name, status, code)}`` as the module docstring draws them."""
    lines = [m for m in map(TREE_LINE.match, (errors.__doc__ or "").splitlines()) if m]
    root_indent = len(lines[0]["prefix"])
    parents: list[str] = []
    tree = {}
    for line in lines:
        depth = (len(line["prefix"]) - root_indent) // 4
        del parents[depth:]
        tree[line["name"]] = (parents[-1] if parents else None, int(line["status"]), line["code"])
        parents.append(line["name"])
    return tree


def test_docstring_draws_every_error_class_and_nothing_else():
    assert sorted(drawn_tree()) == [c.__name__ for c in ERROR_CLASSES]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_class_status_code_and_parent_match_the_docstring(cls):
    parent, status, code = drawn_tree()[cls.__name__]

    assert (cls.status.value, cls.code) == (status, code)
    expected_bases = (getattr(errors, parent),) if parent else (Exception,)
    assert cls.__bases__ == expected_bases


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_to_dict_renders_code_and_message(cls):
    error = cls("something went wrong")

    assert error.to_dict() == {"error": {"code": cls.code, "message": "something went wrong"}}
    assert str(error) == error.message == "something went wrong"


def test_codes_are_unique():
    codes = [c.code for c in ERROR_CLASSES]

    assert len(set(codes)) == len(codes)
