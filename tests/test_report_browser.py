"""The HTML report opened in a real headless Chromium: images render, tables fill, no console errors."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn as nn

from resnetlab.data.imageset import ImageSet
from resnetlab.evaluation import evaluate_model
from resnetlab.models.registry import ModelMeta

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CLASSES = ["airplane", "bird", "cat", "dog", "ship"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (CI installs the Debian package in .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, len(CLASSES)))
    model.meta = ModelMeta(name="tiny", num_classes=len(CLASSES), classes=list(CLASSES))
    images = torch.randint(0, 256, (120, 16, 16, 3), dtype=torch.uint8)
    labels = torch.arange(120) % len(CLASSES)
    out = tmp_path_factory.mktemp("browser")
    evaluate_model(model, ImageSet(images, labels, list(CLASSES), source="random"), out, tta=True, context={"split": "test"})
    return out / "report.html"


def test_report_renders_in_chromium(report_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("request", lambda req: problems.append(f"network request {req.url}") if not req.url.startswith(("file:", "data:")) else None)
            page.goto(report_path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight, e.getBoundingClientRect().width])")
            rows = page.eval_on_selector_all("#per-class tbody tr", "els => els.map(e => e.cells[0].textContent)")
            headline = page.text_content(".headline .value")
            confusions = page.eval_on_selector_all("#confusions tbody tr", "els => els.length")
            tta_rows = page.eval_on_selector_all("#tta tbody tr", "els => els.length")
        finally:
            browser.close()
    assert problems == []
    assert len(images) == 7
    for complete, width, height, shown in images:
        assert complete and width > 300 and height > 100 and shown > 200
    assert rows == CLASSES
    assert headline.strip().endswith("%")
    assert confusions > 0 and tta_rows == 2
