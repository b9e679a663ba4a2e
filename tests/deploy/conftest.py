"""Fixtures for the deploy/ checks: each overlay rendered once per session."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import OVERLAYS, Manifests, render


@pytest.fixture(params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> Manifests:
    """One overlay's rendered objects (every test using this runs once per overlay)."""
    return Manifests(request.param, render(request.param))


@pytest.fixture
def gpu() -> Manifests:
    return Manifests("gpu", render("gpu"))


@pytest.fixture
def dev() -> Manifests:
    return Manifests("dev", render("dev"))
