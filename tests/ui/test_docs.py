"""Swagger UI and ReDoc render from the vendored files, with the internet out of reach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.ui.browsing import UiStack, save_screenshot

OPERATION = "Queue a fine-tuning job"  # the summary of POST /finetune


def test_swagger_ui_renders_offline(page: Any, ui_stack: UiStack, artifacts: Path):
    page.goto(f"{ui_stack.url}/docs")
    page.locator(".opblock").first.wait_for()
    summaries = page.locator(".opblock-summary-description").all_inner_texts()
    assert OPERATION in summaries
    operations = ui_stack.http.get("/openapi.json").json()["paths"]
    assert len(summaries) == sum(len(methods) for methods in operations.values())
    save_screenshot(page, artifacts, "swagger-ui", full_page=False)


def test_redoc_renders_offline(page: Any, ui_stack: UiStack, artifacts: Path):
    page.goto(f"{ui_stack.url}/redoc")
    page.get_by_role("heading", name=OPERATION).wait_for()
    save_screenshot(page, artifacts, "redoc", full_page=False)
