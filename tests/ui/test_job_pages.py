"""The jobs table and the job page, live while the fine-tune runs and once it has finished."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx

from tests.ui.browsing import (
    ADVANCED,
    MODEL,
    LiveRun,
    UiStack,
    chart_data,
    new_context,
    save_screenshot,
)

ROOT = Path(__file__).resolve().parents[2]
README_SCREENSHOT = ROOT / "docs/images/job-page.png"


def test_form_sends_the_config_it_shows(live_run: LiveRun):
    assert live_run.job["model_name"] == MODEL
    config = live_run.job["config"]
    sent = {
        "base_model": "small_cnn",
        "weights": "none",
        "image_size": 32,
        "epochs": 3,
        "batch_size": 8,
        "learning_rate": 0.01,
        "fine_tune_epochs": 6,
        "fine_tune_learning_rate": 0.003,
        "fine_tune_at": 0,
        **ADVANCED,
    }
    assert {key: config[key] for key in sent} == sent


def test_jobs_table_follows_the_job_live(live_run: LiveRun):
    statuses = live_run.row_statuses
    assert statuses[-1] == "succeeded", statuses
    # The row appeared before the job had finished and changed without a reload.
    assert "running" in statuses[:-1], statuses
    assert set(statuses) <= {"queued", "running", "succeeded"}, statuses


def test_cancel_button_cancels_a_queued_job(live_run: LiveRun):
    # Queued behind the running job, so the worker never started it.
    assert live_run.cancelled["status"] == "cancelled"
    assert live_run.cancelled["started_at"] is None


def test_job_page_shows_progress_and_curves_while_it_runs(live_run: LiveRun):
    values = live_run.progress_values
    assert any(0 < value < 100 for value in values), values
    assert values[-1] == 100
    # The bar never went backwards while the job ran.
    assert values == sorted(values), values
    # Every epoch reached the live page's chart, each once.
    history = live_run.job["history"]
    assert len(live_run.live_chart["labels"]) == len(history)


def test_finished_job_page_shows_curves_per_phase(page: Any, ui_stack: UiStack, live_run: LiveRun):
    page.goto(ui_stack.page_url(f"#/jobs/{live_run.job_id}"))
    page.get_by_test_id("confusion-matrix").wait_for()
    history = live_run.job["history"]
    config = live_run.job["config"]
    for testid, metric in (("loss-chart", "loss"), ("accuracy-chart", "accuracy")):
        chart = chart_data(page, testid)
        assert chart["phases"] == [row["phase"] for row in history]
        assert chart["phases"].count("head") == config["epochs"]
        assert chart["phases"].count("fine_tune") == config["fine_tune_epochs"]
        training = chart["datasets"][f"training {metric}"]
        validation = chart["datasets"][f"validation {metric}"]
        assert training == [row[metric] for row in history]
        assert validation == [row[f"val_{metric}"] for row in history]
    assert page.get_by_test_id("job-status").inner_text() == "succeeded"


def test_finished_job_page_shows_the_confusion_matrix(
    page: Any, ui_stack: UiStack, live_run: LiveRun
):
    page.goto(ui_stack.page_url(f"#/jobs/{live_run.job_id}"))
    table = page.get_by_test_id("confusion-matrix")
    table.wait_for()
    result = live_run.job["result"]
    classes, evaluation = result["classes"], result["evaluation"]
    assert table.get_by_test_id("cm-col").all_inner_texts() == classes
    assert table.get_by_test_id("cm-row").all_inner_texts() == classes
    counts = [
        int(c)
        for c in table.get_by_test_id("cm-cell").evaluate_all(
            "cells => cells.map(cell => cell.dataset.count)"
        )
    ]
    assert counts == [n for row in evaluation["confusion_matrix"] for n in row]
    assert sum(counts) == evaluation["count"]
    rows = page.get_by_test_id("per-class-row")
    assert rows.count() == len(classes)
    supports = rows.evaluate_all("rows => rows.map(r => Number(r.lastElementChild.textContent))")
    assert supports == [evaluation["per_class"][name]["support"] for name in classes]
    decision = page.get_by_test_id("promotion-decision").inner_text()
    assert decision == result["promotion"]["decision"]


def test_finished_job_page_shows_the_misclassified_images(
    page: Any, ui_stack: UiStack, live_run: LiveRun, http: httpx.Client, artifacts: Path
):
    result = live_run.job["result"]
    index = http.get(f"/models/{result['model']}/versions/{result['version']}/misclassified")
    assert index.status_code == 200, index.text
    items = index.json()["items"]
    matrix = result["evaluation"]["confusion_matrix"]
    mistakes = sum(n for i, row in enumerate(matrix) for j, n in enumerate(row) if i != j)
    assert index.json()["total_misclassified"] == mistakes
    assert (len(items) > 0) == (mistakes > 0)

    page.goto(ui_stack.page_url(f"#/jobs/{live_run.job_id}"))
    gallery = page.get_by_test_id("misclassified")
    gallery.wait_for()
    if not items:
        gallery.get_by_test_id("misclassified-empty").wait_for()
    images = gallery.get_by_test_id("misclassified-image")
    page.wait_for_function(
        "n => [...document.querySelectorAll('[data-testid=misclassified-image]')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length === n",
        arg=len(items),
    )
    assert images.count() == len(items)
    alts = images.evaluate_all("imgs => imgs.map(img => img.alt)")
    for item, alt in zip(items, alts, strict=True):
        assert item["true_label"] in alt and item["predicted_label"] in alt
    save_screenshot(page, artifacts, "job-page")
    page.evaluate("() => window.scrollTo(0, 0)")
    viewport_shot = save_screenshot(page, artifacts, "job-page-top", full_page=False)
    if os.environ.get("FTSERVE_UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(viewport_shot, README_SCREENSHOT)


def test_pages_fit_a_narrow_window(
    browser: Any, ui_stack: UiStack, live_run: LiveRun, artifacts: Path
):
    model = live_run.job["result"]["model"]
    pages = {
        "job-page": (f"#/jobs/{live_run.job_id}", "confusion-matrix"),
        "jobs-page": ("#/jobs", "job-row"),
        "model-page": (f"#/models/{model}", "versions-table"),
        "predict-page": (f"#/predict?model={model}", "predict-form"),
        "new-finetune-page": ("#/new", "backbone-info"),
    }
    context = new_context(browser, viewport={"width": 390, "height": 844})
    try:
        tab = context.new_page()
        for name, (route, ready) in pages.items():
            tab.goto(ui_stack.page_url(route))
            tab.get_by_test_id(ready).first.wait_for()
            # Wide tables scroll inside their own box; the page never scrolls sideways.
            overflow = tab.evaluate(
                "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, name
            save_screenshot(tab, artifacts, f"{name}-narrow")
    finally:
        context.close()
