"""The model-name rule: also what keeps a name from being a path trick."""

from __future__ import annotations

import re

from service.errors import InvalidModelNameError

# Anchored for JSON Schema and pydantic; code matches with fullmatch (see check_model_name).
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN.strip("^$"))


def is_model_name(name: object) -> bool:
    """Whether ``name`` is a valid model name."""
    # fullmatch: the pattern's "$" alone would accept a trailing newline.
    return isinstance(name, str) and _MODEL_NAME.fullmatch(name) is not None


def check_model_name(name: str) -> str:
    """``name`` if it is a valid model name, else ``InvalidModelNameError`` (400)."""
    if not is_model_name(name):
        raise InvalidModelNameError(
            f"Invalid model name {name!r}: use 1 to 63 characters from a-z, 0-9, '_' and '-',"
            " starting with a letter or digit"
        )
    return name
