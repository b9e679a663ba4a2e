"""What the browser tests share: the stack and run records, and ways to drive the page."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 900}
TOKEN = "ui-test-token"
TOKEN_KEY = "ftserve.token"  # where the page keeps the token (sessionStorage)
MODEL = "digits"
DIGITS = (0, 1, 2, 3, 7)
# Enough steps for the curves to move, few enough that some validation digits may still go
# wrong (the tests check the gallery either way).
FORM_FIELDS = {
    "Image size (pixels)": "32",
    "Epochs (phase 1: head)": "3",
    "Batch size": "8",
    "Learning rate": "0.01",
    "Fine-tune epochs (phase 2)": "6",
    "Fine-tune learning rate": "0.003",
    "Fine-tune from layer": "0",
}
# Through the advanced box: every epoch runs, so the curves have a known number of points.
ADVANCED = {"early_stopping_patience": 100}
TERMINAL = {"succeeded", "failed", "cancelled"}
JOB_TIMEOUT_SECONDS = 300


@dataclass
class UiStack:
    """A running ``ftserve serve`` and an authorised HTTP client for it."""

    url: str
    http: httpx.Client

    def page_url(self, route: str = "") -> str:
        return f"{self.url}/ui/{route}"


@dataclass
class LiveRun:
    """The session's fine-tune and what the page showed while it ran."""

    job_id: str
    archive: Path
    job: dict[str, Any] = field(default_factory=dict)
    # A second job, queued behind the first and cancelled from the jobs table.
    cancelled: dict[str, Any] = field(default_factory=dict)
    row_statuses: list[str] = field(default_factory=list)
    progress_values: list[int] = field(default_factory=list)
    live_chart: dict[str, Any] = field(default_factory=dict)


def new_context(browser: Any, token: str | None = TOKEN, **options: Any) -> Any:
    """A fresh browser context (its own sessionStorage), holding the token when given."""
    context = browser.new_context(viewport=options.pop("viewport", VIEWPORT), **options)
    if token is not None:
        context.add_init_script(f"sessionStorage.setItem({TOKEN_KEY!r}, {json.dumps(token)})")
    return context


def block_the_internet(tab: Any) -> list[str]:
    """Abort every request of ``tab`` that is not to 127.0.0.1; the list collects their URLs."""
    outside: list[str] = []

    def only_loopback(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    tab.route("**/*", only_loopback)
    return outside


def submit_form(tab: Any, stack: UiStack, archive: Path) -> str:
    """Fill the new-fine-tune form, send it, and return the id of the job page it opens."""
    tab.goto(stack.page_url("#/new"))
    form = tab.get_by_test_id("finetune-form")
    form.get_by_label("Dataset archive").set_input_files(archive)
    form.get_by_label("Model name").fill(MODEL)
    form.get_by_label("Backbone").select_option("small_cnn")
    form.get_by_label("Weights").select_option("none")
    for label, value in FORM_FIELDS.items():
        form.get_by_label(label, exact=True).fill(value)
    form.get_by_text("Advanced settings (JSON)").click()
    form.get_by_label("Extra config fields", exact=False).fill(json.dumps(ADVANCED))
    form.get_by_test_id("finetune-submit").click()
    tab.wait_for_url("**/ui/#/jobs/*")
    return str(tab.url.rsplit("/", 1)[1])


def cancel_from_table(jobs_tab: Any, stack: UiStack, archive: Path) -> str:
    """Queue a job behind the running one, cancel it with its row's button; its id."""
    with open(archive, "rb") as data:
        accepted = stack.http.post(
            "/finetune",
            files={"dataset": (archive.name, data, "application/zip")},
            data={"config": json.dumps({"model_name": f"{MODEL}-spare", "weights": "none"})},
        )
    assert accepted.status_code == 202, accepted.text
    job_id = str(accepted.json()["job_id"])
    row = jobs_tab.locator(f"[data-testid=job-row][data-job-id='{job_id}']")
    row.get_by_test_id("cancel-job").click()
    jobs_tab.wait_for_function(
        "s => document.querySelector(s)?.dataset.status === 'cancelled'",
        arg=f"[data-testid=job-row][data-job-id='{job_id}']",
    )
    return job_id


def watch(run: LiveRun, jobs_tab: Any, job_tab: Any, artifacts: Path) -> None:
    """Record the job's row status and the job page's progress bar until both show the end."""
    row = f"[data-testid=job-row][data-job-id='{run.job_id}']"
    shot_taken = False
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        status = jobs_tab.evaluate("s => document.querySelector(s)?.dataset.status ?? null", row)
        if status and (not run.row_statuses or run.row_statuses[-1] != status):
            run.row_statuses.append(status)
        value = job_tab.evaluate(
            "() => document.querySelector('[data-testid=job-progress]')?.value ?? null"
        )
        if value is not None and (not run.progress_values or run.progress_values[-1] != value):
            run.progress_values.append(value)
        if not shot_taken and value is not None and 30 <= value <= 80:
            job_tab.screenshot(path=artifacts / "job-running.png")
            shot_taken = True
        finished_page = job_tab.get_by_test_id("job-outcome").locator("section").count()
        if status in TERMINAL and finished_page:
            return
        time.sleep(0.2)
    pytest.fail(f"the job did not finish in the page; its row showed {run.row_statuses}")


def chart_data(tab: Any, testid: str) -> dict[str, Any]:
    """What the Chart.js chart on the canvas ``testid`` holds: labels, datasets, phases."""
    data: dict[str, Any] = tab.evaluate(
        """id => {
            const chart = Chart.getChart(document.querySelector(`[data-testid="${id}"]`));
            return {
                labels: chart.data.labels,
                datasets: Object.fromEntries(chart.data.datasets.map(d => [d.label, d.data])),
                phases: chart.options.plugins.phaseBands?.phases ?? null,
            };
        }""",
        testid,
    )
    return data


def save_screenshot(tab: Any, artifacts: Path, name: str, full_page: bool = True) -> Path:
    """Write ``<artifacts>/<name>.png`` and return its path."""
    path = artifacts / f"{name}.png"
    tab.screenshot(path=path, full_page=full_page)
    return path
