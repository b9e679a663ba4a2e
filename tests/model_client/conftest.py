"""The model-server tests' exported model, re-exposed for the client tests."""

from __future__ import annotations

# The exported model `template` comes from tests/conftest.py (one per test session).
