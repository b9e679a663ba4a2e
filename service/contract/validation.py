"""Pydantic's validation errors as one line a user can act on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def describe_errors(
    errors: Iterable[Mapping[str, Any]], what: str, whole: str | None = None
) -> str:
    """``invalid <what>: field.path: message; ...`` for pydantic's ``errors()`` list.

    An error about the whole object (no field) is placed at ``whole``, default ``what``.
    """
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ())) or whole or what
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return f"invalid {what}: " + "; ".join(parts)
