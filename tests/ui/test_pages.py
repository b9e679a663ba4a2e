"""The predict, model and new-fine-tune pages, and how the page asks for the API token."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ui.browsing import (
    MODEL,
    TOKEN,
    TOKEN_KEY,
    LiveRun,
    UiStack,
    new_context,
    save_screenshot,
)


def test_predict_page_ranks_an_uploaded_image(
    page: Any,
    ui_stack: UiStack,
    live_run: LiveRun,
    http: httpx.Client,
    tmp_path: Path,
    artifacts: Path,
):
    image = tmp_path / "seven.png"
    image.write_bytes(_digit_png(live_run.archive, "digit_7"))
    expected = _predict(http, image, top_k=3)["predictions"][0]

    page.goto(ui_stack.page_url(f"#/predict?model={MODEL}"))
    form = page.get_by_test_id("predict-form")
    form.get_by_label("Top k").fill("3")
    form.get_by_label("Images").set_input_files(image)
    form.get_by_role("button", name="Classify").click()
    result = page.get_by_test_id("predict-result")
    result.get_by_test_id("predict-row").first.wait_for()

    shown = result.get_by_test_id("predict-row").evaluate_all(
        "rows => rows.map(row => [row.dataset.label, Number(row.dataset.score)])"
    )
    assert [label for label, _ in shown] == [entry["label"] for entry in expected["top_k"]]
    for (_, score), entry in zip(shown, expected["top_k"], strict=True):
        assert score == pytest.approx(entry["score"], abs=1e-6)
    assert result.get_by_test_id("predict-label").inner_text() == expected["label"]
    bars = page.evaluate(
        "() => Chart.getChart(document.querySelector('[data-testid=predict-chart]')).data"
    )
    assert bars["labels"] == [entry["label"] for entry in expected["top_k"]]
    save_screenshot(page, artifacts, "predict-page")


def test_model_page_lists_versions_and_shows_refusals(
    page: Any,
    ui_stack: UiStack,
    live_run: LiveRun,
    http: httpx.Client,
    tmp_path: Path,
    artifacts: Path,
):
    detail = http.get(f"/models/{MODEL}").json()
    page.goto(ui_stack.page_url(f"#/models/{MODEL}"))
    table = page.get_by_test_id("versions-table")
    table.wait_for()
    rows = table.get_by_test_id("version-row")
    shown = rows.evaluate_all("rows => rows.map(row => Number(row.dataset.version))")
    assert sorted(shown) == [v["version"] for v in detail["versions"]]
    newest = table.locator(f"[data-version='{live_run.job['result']['version']}']")
    assert newest.get_by_test_id("version-label").all_inner_texts() == ["stable"]
    assert newest.get_by_test_id("version-state").inner_text() == "AVAILABLE"
    decision = live_run.job["result"]["promotion"]["decision"]
    assert decision in newest.get_by_test_id("version-promotion").inner_text()

    # The ONNX link downloads through fetch, with the token.
    with page.expect_download() as download:
        newest.get_by_test_id("onnx-link").click()
    saved = tmp_path / "model.onnx"
    download.value.save_as(saved)
    onnx = http.get(f"/models/{MODEL}/versions/1/onnx")
    assert saved.read_bytes() == onnx.content

    # One version: nothing to roll back to, and the page says so in the API's words.
    page.get_by_test_id("rollback").click()
    shown_error = page.get_by_test_id("model-error")
    shown_error.wait_for()
    refusal = http.post(f"/models/{MODEL}/rollback")
    assert refusal.status_code == 409
    assert shown_error.inner_text() == refusal.json()["error"]["message"]
    save_screenshot(page, artifacts, "model-page")


def test_new_finetune_form_lists_backbones_and_shows_api_errors(
    page: Any, ui_stack: UiStack, http: httpx.Client, digits_archive: Path, artifacts: Path
):
    backbones = http.get("/backbones").json()
    jobs_before = http.get("/finetune").json()["total"]
    page.goto(ui_stack.page_url("#/new"))
    form = page.get_by_test_id("finetune-form")
    select = form.get_by_label("Backbone")
    select.locator("option").first.wait_for(state="attached")
    names = select.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert names == [item["name"] for item in backbones["items"]]
    assert select.input_value() == backbones["default"]

    by_name = {item["name"]: item for item in backbones["items"]}
    for name in (backbones["default"], "small_cnn"):
        select.select_option(name)
        size = by_name[name]["default_image_size"]
        assert f"Default image size {size} px" in form.get_by_test_id("backbone-info").inner_text()
        assert form.get_by_label("Image size (pixels)").get_attribute("placeholder") == str(size)
        weights = form.get_by_label("Weights").locator("option")
        values = weights.evaluate_all("options => options.map(o => o.value)")
        assert values == (["imagenet", "none"] if by_name[name]["imagenet_weights"] else ["none"])

    form.get_by_label("Dataset archive").set_input_files(digits_archive)
    form.get_by_label("Model name").fill("never-trained")
    page.get_by_text("Advanced settings (JSON)").click()
    advanced = form.get_by_label("Extra config fields", exact=False)
    advanced.fill('{"epochs": ')
    form.get_by_test_id("finetune-submit").click()
    assert "not valid JSON" in form.get_by_test_id("finetune-error").inner_text()

    advanced.fill('{"not_a_field": 1}')
    form.get_by_test_id("finetune-submit").click()
    # The API's own 422 message, naming the field it refused.
    page.wait_for_function(
        "() => document.querySelector('[data-testid=finetune-error]')"
        "?.textContent.includes('not_a_field')"
    )
    assert page.url.endswith("#/new")
    assert http.get("/finetune").json()["total"] == jobs_before
    save_screenshot(page, artifacts, "new-finetune-page")


def test_unknown_job_shows_the_api_error(page: Any, ui_stack: UiStack, http: httpx.Client):
    page.goto(ui_stack.page_url("#/jobs/no-such-job"))
    shown = page.get_by_test_id("page-error")
    shown.wait_for()
    refusal = http.get("/finetune/no-such-job")
    assert refusal.status_code == 404
    assert shown.inner_text() == refusal.json()["error"]["message"]


def test_token_is_asked_for_with_a_form_and_kept_per_tab(browser: Any, ui_stack: UiStack):
    context = new_context(browser, token=None)
    try:
        tab = context.new_page()
        tab.goto(ui_stack.page_url("#/models"))
        panel = tab.get_by_test_id("token-panel")
        panel.wait_for()
        missing = httpx.get(f"{ui_stack.url}/models").json()["error"]["message"]
        assert tab.get_by_test_id("token-reason").inner_text() == missing

        panel.get_by_label("Token").fill("not-the-token")
        panel.get_by_role("button", name="Use token").click()
        _wait_for_text(tab, "token-reason", "The API token is not valid")
        panel.get_by_label("Token").fill(TOKEN)
        panel.get_by_role("button", name="Use token").click()
        tab.get_by_role("heading", name="Models").wait_for()
        assert panel.is_hidden()
        assert tab.evaluate(f"() => sessionStorage.getItem({TOKEN_KEY!r})") == TOKEN

        other = context.new_page()  # another tab starts without it
        other.goto(ui_stack.page_url("#/models"))
        other.get_by_test_id("token-panel").wait_for()

        tab.get_by_test_id("forget-token").click()
        assert tab.evaluate(f"() => sessionStorage.getItem({TOKEN_KEY!r})") is None
        assert tab.get_by_test_id("forget-token").is_hidden()
    finally:
        context.close()


def _wait_for_text(tab: Any, testid: str, text: str) -> None:
    tab.wait_for_function(
        "([id, text]) => document.querySelector(`[data-testid=${id}]`)?.textContent === text",
        arg=[testid, text],
    )


def _predict(http: httpx.Client, image: Path, top_k: int) -> dict[str, Any]:
    """The API's answer for ``image``, once the model server has the version loaded."""
    deadline = time.monotonic() + 60
    while True:
        answer = http.post(
            "/predict",
            files={"files": (image.name, image.read_bytes(), "image/png")},
            data={"model": MODEL, "top_k": str(top_k)},
        )
        if answer.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _digit_png(archive: Path, folder: str) -> bytes:
    with zipfile.ZipFile(archive) as z:
        name = next(n for n in z.namelist() if n.startswith(f"{folder}/") and n.endswith(".png"))
        return z.read(name)
