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


def test_report_served_under_its_content_security_policy(report_path):
    """`resnetlab serve` sends the report with a CSP that forbids scripts; it must still render fully."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    from resnetlab.inference.predictor import Predictor
    from resnetlab.models import create_model
    from resnetlab.serve.app import create_app
    from helpers import running_server  # one way to start the app under uvicorn in tests

    model = create_model("cnn_baseline", num_classes=len(CLASSES))
    model.meta.classes = list(CLASSES)
    app = create_app(Predictor.from_model(model), report_dir=report_path.parent)
    problems: list[str] = []
    with running_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" and "404" not in msg.text else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            # The browser's own /favicon.ico probe is the one 404 allowed (the report has no icon).
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
            response = page.goto(f"{url}/report", wait_until="load")
            csp = response.headers.get("content-security-policy", "")
            images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            bar = page.eval_on_selector_all(".meter span", "els => Math.max(...els.map(e => e.getBoundingClientRect().width))")
            page.goto(url, wait_until="load")  # the prediction page under its own policy
            # A locator, not wait_for_function: Playwright evaluates that string with eval, which the policy forbids.
            page.locator("#model-info", has_text="cnn_baseline").wait_for(timeout=20_000)
        finally:
            browser.close()
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert problems == []  # a blocked inline style or image would be a console error
    assert len(images) == 7 and all(width > 300 for width in images)
    assert bar > 0  # inline style attributes (the bar widths) are applied
