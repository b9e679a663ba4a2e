"""The web page in a real browser: ``ftserve serve``, one real fine-tune, Debian's Chromium.

The stack runs with an API token, so every page goes through the token handling. The one
fine-tune of the session is started from the page's own form (real PNG digits, small_cnn,
32 px) while a second tab watches the jobs table; ``live_run`` records what both tabs showed
as the job ran, and the tests check those records and the finished pages.

Screenshots go to ``$FTSERVE_TEST_ARTIFACTS`` (default ``var/test-artifacts/ui/``);
with ``FTSERVE_UPDATE_SCREENSHOTS=1`` the job page's also becomes ``docs/images/job-page.png``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.training.sample_data import make_digits_dataset
from tests.support.stack import serving_stack
from tests.ui.browsing import (
    CHROMIUM,
    DIGITS,
    LAUNCH_ARGS,
    TOKEN,
    LiveRun,
    UiStack,
    block_the_internet,
    cancel_from_table,
    chart_data,
    new_context,
    submit_form,
    watch,
)

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("FTSERVE_TEST_ARTIFACTS") or ROOT / "var/test-artifacts/ui")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def browser(chromium: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def ui_stack(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    root = tmp_path_factory.mktemp("ui-stack")
    env = {
        "FTSERVE_API_TOKEN": TOKEN,
        "KERAS_HOME": str(root / "keras"),  # weights "none": nothing to look up
    }
    with serving_stack(root, env) as (running, _):
        url = str(running.http.base_url).rstrip("/")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            yield UiStack(url, http)


@pytest.fixture(scope="session")
def digits_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ui-digits")
    folder, _ = make_digits_dataset(root / "digits", digits=DIGITS, per_class=24, seed=3)
    return Path(shutil.make_archive(str(root / "digits"), "zip", folder))


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A tab that already holds the token, cut off from everything but loopback.

    An uncaught script error, or a request that tried to leave the machine, fails the test.
    """
    context = new_context(browser)
    tab = context.new_page()
    errors: list[str] = []
    outside = block_the_internet(tab)
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert errors == [], f"script errors on the page: {errors}"
    assert outside == [], f"the page asked for files from elsewhere: {outside}"


@pytest.fixture(scope="session")
def live_run(browser: Any, ui_stack: UiStack, digits_archive: Path, artifacts: Path) -> LiveRun:
    """Start the fine-tune from the form and watch it in two tabs until it finishes."""
    context = new_context(browser)
    try:
        jobs_tab = context.new_page()
        jobs_tab.goto(ui_stack.page_url("#/jobs"))
        jobs_tab.get_by_test_id("jobs-table").wait_for()
        job_tab = context.new_page()
        run = LiveRun(job_id=submit_form(job_tab, ui_stack, digits_archive), archive=digits_archive)
        spare = cancel_from_table(jobs_tab, ui_stack, digits_archive)
        watch(run, jobs_tab, job_tab, artifacts)
        run.live_chart = chart_data(job_tab, "loss-chart")
    finally:
        context.close()
    run.job = ui_stack.http.get(f"/finetune/{run.job_id}").json()
    run.cancelled = ui_stack.http.get(f"/finetune/{spare}").json()
    assert run.job["status"] == "succeeded", run.job
    return run


@pytest.fixture(scope="session")
def http(ui_stack: UiStack) -> httpx.Client:
    return ui_stack.http
