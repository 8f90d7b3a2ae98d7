"""The prediction page in a real headless Chromium (Debian's `chromium`, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from resnetlab.models import create_model
from resnetlab.models.files import save_model_file
from resnetlab.serve.app import create_app

from helpers import running_server

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("RESNETLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
CLASSES = ["cat", "dog", "horse", "ship"]


def _chromium_or_skip() -> str:
    if Path(CHROMIUM).exists() or shutil.which(CHROMIUM):
        return CHROMIUM
    message = f"browser test: {CHROMIUM} is not installed (apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)  # CI installs chromium: a missing browser there is a broken setup
    pytest.skip(message)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=len(CLASSES))
    model.meta.classes = list(CLASSES)
    run_dir = tmp_path_factory.mktemp("run")
    save_model_file(model, run_dir)
    app = create_app(resnetlab.load(run_dir), top_k=3)
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 900, "height": 760})
    page = context.new_page()
    yield page
    context.close()


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    # RESNETLAB_SCREENSHOTS=DIR keeps the pictures for a person to look at.
    folder = Path(os.environ.get("RESNETLAB_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_upload_an_image_and_see_the_bars(page, page_url, tmp_path):
    picture = tmp_path / "tabby.png"
    pixels = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(picture)

    page.goto(page_url)
    # A selector, not wait_for_function: its polling evaluates a string, which the page's CSP forbids.
    page.wait_for_selector("#model-info:has-text('cnn_baseline')", timeout=20_000)
    assert "4 classes" in page.text_content("#model-info")

    page.set_input_files("#file-input", str(picture))
    page.wait_for_selector(".result.done .bar-row", timeout=20_000)
    rows = page.locator(".result.done .bar-row")
    assert rows.count() == 3  # the app was built with top_k=3
    labels = [rows.nth(i).locator(".label").text_content() for i in range(3)]
    values = [float(rows.nth(i).locator(".value").text_content().rstrip("%")) for i in range(3)]
    assert set(labels) <= set(CLASSES) and len(set(labels)) == 3
    assert values == sorted(values, reverse=True) and 0 < sum(values) <= 100.05
    assert page.text_content(".result.done .filename") == "tabby.png"
    # The bars are drawn to scale: the best one is the widest.
    page.wait_for_timeout(600)  # let the width transition finish
    widths = [rows.nth(i).locator(".fill").bounding_box()["width"] for i in range(3)]
    assert widths[0] >= widths[1] >= widths[2] and widths[0] > 0
    assert _screenshot(page, tmp_path, "predict-page.png").stat().st_size > 0


def test_a_non_image_shows_the_servers_message(page, page_url, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("this is text")
    page.goto(page_url)
    page.set_input_files("#file-input", str(bogus))
    page.wait_for_selector(".result.failed", timeout=20_000)
    status = page.text_content(".result.failed .status")
    assert "notes.png" in status and "not an image" in status
    assert page.locator(".result.failed .bar-row").count() == 0
    _screenshot(page, tmp_path, "predict-page-error.png")


def test_the_heatmap_of_an_upload_appears(page, page_url, tmp_path):
    picture = tmp_path / "boat.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(picture)
    page.goto(page_url)
    page.set_input_files("#file-input", str(picture))
    # cnn_baseline has no CAM split: the page shows its Grad-CAM overlay, decoded by the browser.
    # (Selectors, not wait_for_function: its polling evaluates a string, which the page's CSP forbids.)
    page.wait_for_selector(".result.done .heatmap-thumb img[src^='data:image/png']", state="visible", timeout=20_000)
    heatmap = page.locator(".result.done .heatmap-thumb img")
    deadline = time.monotonic() + 10
    while heatmap.evaluate("img => img.complete ? img.naturalWidth : 0") == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert heatmap.evaluate("img => img.naturalWidth") == 224  # a decoded picture, not a broken-image icon
    best = page.locator(".result.done .bar-row.best .label").text_content()
    assert best in heatmap.get_attribute("alt")  # the heatmap is of the predicted class
    box, thumb = heatmap.bounding_box(), page.locator(".result.done .thumb img").first.bounding_box()
    assert box["width"] > 50 and box["x"] > thumb["x"]  # beside the picture, not collapsed
    _screenshot(page, tmp_path, "predict-page-heatmap.png")
