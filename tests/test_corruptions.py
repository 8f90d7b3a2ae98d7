"""CIFAR-10-C corruptions (evaluation/corruptions.py) and ``evaluate --corruptions`` (evaluation/robustness.py)."""

from __future__ import annotations

import colorsys
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_image_folder, tiny_splits
from PIL import Image
from scipy import ndimage

from resnetlab.cli import main
from resnetlab.errors import ConfigError
from resnetlab.evaluation.corruptions import CORRUPTIONS, PARAMS, SEVERITIES, corrupt, corrupt_batch, parse_types
from resnetlab.evaluation.robustness import error_summary, stratified_subset

# Corruptions whose mean absolute change from the clean image grows strictly with severity (on the
# pictures below and on CIFAR). Not the others, by their published parameters: frost and glass blur
# trade one effect for another across severities (less image + more frost; more blur smooths the
# shuffled pixels), elastic's severity 1 has the strongest affine jitter, and motion blur's and
# snow's random angles make neighbouring severities close.
MONOTONE = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "fog", "brightness",
            "contrast", "pixelate", "jpeg_compression")


def pictures(n: int = 6, size: int = 32) -> np.ndarray:
    """Natural-looking uint8 (n, size, size, 3) test images: smooth colour fields with edges and texture."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        field = ndimage.gaussian_filter(rng.normal(size=(size, size, 3)), sigma=(4, 4, 0))
        field = (field - field.min()) / (np.ptp(field) + 1e-9)
        image = 40 + 150 * field + rng.normal(0, 6, (size, size, 3))
        y, x = rng.integers(4, size - 12, 2)
        image[y: y + 8, x: x + 8] = rng.uniform(20, 230, 3)  # an object with sharp edges
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def images():
    return pictures()


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_severity_is_a_valid_deterministic_change(name, images):
    for severity in SEVERITIES:
        out = corrupt_batch(images, name, severity, indices=range(10, 16), seed=3)
        assert out.dtype == np.uint8 and out.shape == images.shape
        again = corrupt_batch(images, name, severity, indices=range(10, 16), seed=3)
        np.testing.assert_array_equal(out, again)
        changed = np.abs(out.astype(int) - images).mean(axis=(1, 2, 3))
        assert (changed > 0.2).all(), f"{name} severity {severity} leaves an image (almost) clean: {changed}"


def test_seed_and_image_index_choose_the_random_draw(images):
    a = corrupt(images[0], "gaussian_noise", 3, index=5, seed=0)
    assert not np.array_equal(a, corrupt(images[0], "gaussian_noise", 3, index=6, seed=0))
    assert not np.array_equal(a, corrupt(images[0], "gaussian_noise", 3, index=5, seed=1))
    np.testing.assert_array_equal(a, corrupt(images[0], "gaussian_noise", 3, index=5, seed=0))


@pytest.mark.parametrize("name", ["shot_noise", "glass_blur", "snow", "frost", "elastic_transform"])
def test_result_does_not_depend_on_the_batch(name, images):
    """Each image is seeded by its own index: shuffling or splitting the batch changes nothing."""
    indices = np.arange(100, 106)
    whole = corrupt_batch(images, name, 4, indices=indices)
    perm = np.array([3, 0, 5, 1, 4, 2])
    shuffled = corrupt_batch(images[perm], name, 4, indices=indices[perm])
    np.testing.assert_array_equal(shuffled, whole[perm])
    np.testing.assert_array_equal(corrupt_batch(images[4:], name, 4, indices=indices[4:]), whole[4:])


def _mean_change(images, name, severity):
    return np.abs(corrupt_batch(images, name, severity).astype(float) - images).mean()


@pytest.mark.parametrize("name", MONOTONE)
def test_change_grows_strictly_with_severity(name, images):
    changes = [_mean_change(images, name, s) for s in SEVERITIES]
    assert all(a < b for a, b in zip(changes, changes[1:])), f"{name}: {np.round(changes, 2)}"


@pytest.mark.parametrize("name", ["motion_blur", "snow", "frost", "glass_blur"])
def test_severity_five_changes_more_than_severity_one(name, images):
    assert _mean_change(images, name, 1) < _mean_change(images, name, 5)


def test_brightness_is_a_shift_of_the_hsv_value(images):
    """Against the standard library's colorsys, pixel by pixel: V + c clipped at 1, H and S kept."""
    for severity in (1, 5):
        c = PARAMS["brightness"][severity - 1]
        out = corrupt(images[0], "brightness", severity)
        expected = np.empty(images[0].shape)
        for i in range(images.shape[1]):
            for j in range(images.shape[2]):
                h, s, v = colorsys.rgb_to_hsv(*(images[0, i, j] / 255.0))
                expected[i, j] = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
        expected = (np.clip(expected, 0, 1) * 255).astype(np.uint8)
        diff = np.abs(out.astype(int) - expected)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # truncation may flip a value sitting on .000


def test_brightness_of_black_is_grey():
    black = np.zeros((4, 4, 3), np.uint8)
    assert (corrupt(black, "brightness", 5) == int(0.3 * 255)).all()


def test_contrast_scales_the_spread_around_each_channel_mean(images):
    for severity in SEVERITIES:
        c = PARAMS["contrast"][severity - 1]
        out = corrupt(images[1], "contrast", severity).astype(float)
        x = images[1].astype(float)
        # Truncation to uint8 lowers values by < 1 (0.5 on average); nothing clips at these contrasts.
        np.testing.assert_allclose(out.mean(axis=(0, 1)), x.mean(axis=(0, 1)) - 0.5, atol=0.6)
        np.testing.assert_allclose(out.std(axis=(0, 1)), c * x.std(axis=(0, 1)), atol=0.6)


def test_pixelate_is_box_down_and_up(images):
    for severity in SEVERITIES:
        c = PARAMS["pixelate"][severity - 1]
        small = Image.fromarray(images[2]).resize((int(32 * c), int(32 * c)), Image.Resampling.BOX)
        expected = np.asarray(small.resize((32, 32), Image.Resampling.BOX))
        np.testing.assert_array_equal(corrupt(images[2], "pixelate", severity), expected)


def test_pixelate_with_a_whole_factor_is_block_means():
    """PIL's BOX filter, which pixelate relies on, is the mean over each block: checked independently
    at a whole factor (32 -> 16 px; the paper's factors give fractional blocks)."""
    image = pictures(1)[0]
    blocks = image.reshape(16, 2, 16, 2, 3).astype(float).mean(axis=(1, 3))
    small = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BOX)).astype(float)
    diff = np.abs(small - blocks)
    assert diff.max() <= 1 and diff.mean() < 0.5  # PIL's fixed-point arithmetic rounds the block means


def test_jpeg_is_a_pil_round_trip_at_the_papers_quality(images):
    for severity, quality in zip(SEVERITIES, (80, 65, 58, 50, 40)):
        buffer = io.BytesIO()
        Image.fromarray(images[3]).save(buffer, format="JPEG", quality=quality)
        expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        np.testing.assert_array_equal(corrupt(images[3], "jpeg_compression", severity), expected)


def test_noise_statistics_match_their_definitions():
    grey = np.full((64, 64, 3), 128, np.uint8)
    for severity in (1, 5):
        sigma = PARAMS["gaussian_noise"][severity - 1]
        residual = (corrupt(grey, "gaussian_noise", severity).astype(float) - 128) / 255
        assert abs(residual.std() - sigma) < 0.05 * sigma
        rate = PARAMS["shot_noise"][severity - 1]  # Poisson: variance of x = (128/255) / rate
        shot = corrupt(grey, "shot_noise", severity).astype(float) / 255
        assert abs(shot.var() - (128 / 255) / rate) < 0.1 * (128 / 255) / rate
        amount = PARAMS["impulse_noise"][severity - 1]
        impulse = corrupt(grey, "impulse_noise", severity)
        assert abs(np.isin(impulse, (0, 255)).mean() - amount) < 0.25 * amount


def test_other_image_sizes_work():
    big = pictures(1, size=64)[0]
    for name in CORRUPTIONS:
        out = corrupt(big, name, 3)
        assert out.shape == big.shape and out.dtype == np.uint8 and not np.array_equal(out, big)


def test_unknown_names_are_refused_with_the_valid_list():
    with pytest.raises(ConfigError, match="valid names: gaussian_noise, shot_noise"):
        parse_types("fog,fogg")
    assert parse_types(None) == list(CORRUPTIONS) and parse_types("fog, snow") == ["fog", "snow"]


def test_mce_against_a_hand_computation():
    ours = {"a": {1: 0.2, 2: 0.4}, "b": {1: 0.1, 2: 0.1}}
    base = {"a": {1: 0.4, 2: 0.6}, "b": {1: 0.2, 2: 0.3}}
    s = error_summary(ours, 0.05, base, 0.10)
    # CE_a = (0.2 + 0.4) / (0.4 + 0.6) = 0.6; CE_b = 0.2 / 0.5 = 0.4; mCE = 0.5
    assert s["ce"] == pytest.approx({"a": 0.6, "b": 0.4}) and s["mce"] == pytest.approx(0.5)
    # rCE_a = (0.15 + 0.35) / (0.3 + 0.5) = 0.625; rCE_b = (0.05 + 0.05) / (0.1 + 0.2) = 1/3
    assert s["relative_ce"] == pytest.approx({"a": 0.625, "b": 1 / 3})
    assert s["relative_mce"] == pytest.approx((0.625 + 1 / 3) / 2)
    assert s["ce_unnormalised"] == pytest.approx({"a": 0.3, "b": 0.1}) and s["mean_ce_unnormalised"] == pytest.approx(0.2)
    alone = error_summary(ours, 0.05)
    assert alone["mce"] is None and alone["ce"] is None and alone["mean_ce_unnormalised"] == pytest.approx(0.2)
    # a baseline that did not degrade on b: its relative CE is undefined and left out of the mean
    flat = error_summary(ours, 0.05, {"a": base["a"], "b": {1: 0.1, 2: 0.1}}, 0.10)
    assert flat["relative_ce"]["b"] is None and flat["relative_mce"] == pytest.approx(0.625)


def test_stratified_subset_keeps_class_shares():
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    chosen = stratified_subset(labels, 100, seed=0)
    counts = np.bincount(labels[chosen].numpy(), minlength=3)
    assert len(chosen) == 100 and len(set(chosen.tolist())) == 100 and counts.tolist() == [60, 30, 10]
    np.testing.assert_array_equal(chosen, stratified_subset(labels, 100, seed=0))
    assert not np.array_equal(chosen, stratified_subset(labels, 100, seed=1))
    assert len(stratified_subset(labels, None)) == 1000


# ---- the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """A cnn_baseline trained for a few steps on a learnable 4-class folder (accuracy well above
    chance), and the same architecture untrained (a baseline that errs everywhere)."""
    from resnetlab.data import load_splits
    from resnetlab.imaging import normalize
    from resnetlab.models import create_model
    from resnetlab.models.files import save_model_file

    root = make_image_folder(tmp_path_factory.mktemp("corrupt") / "data", classes=4, per_class=8, test_per_class=4)
    splits = load_splits(str(root), val_size=0)
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=4)
    model.meta.classes = list(splits.train.classes)
    folder = tmp_path_factory.mktemp("model")
    untrained = save_model_file(model, folder / "untrained.safetensors")
    x, y = normalize(splits.train.images, model.meta.mean, model.meta.std), splits.train.labels
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(10):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    return root, save_model_file(model, folder / "net.safetensors"), untrained


@pytest.fixture(scope="module")
def corruption_report(trained_model, tmp_path_factory) -> Path:
    """``resnetlab evaluate --corruptions`` of the trained model, with the untrained one as baseline."""
    root, path, untrained = trained_model
    out = tmp_path_factory.mktemp("corruption-report")
    code = main(["evaluate", str(path), "--data", str(root), "--out", str(out), "--device", "cpu", "--corruptions",
                 "--corruption-limit", "8", "--baseline", str(untrained)])
    assert code == 0
    return out


@pytest.mark.slow
def test_cli_corruptions_end_to_end(corruption_report):
    out = corruption_report
    result = json.loads((out / "corruptions.json").read_text())
    assert result["types"] == list(CORRUPTIONS) and result["num_images"] == 8
    assert sum(len(result["accuracy"][t]) for t in CORRUPTIONS) == 75
    assert all(0 <= a <= 1 for t in CORRUPTIONS for a in result["accuracy"][t].values())
    assert result["clean"]["accuracy"] > 0.5  # trained: corruption losses are measured from a real model
    # CE recomputed from the two accuracy tables in the file: sum of errors over sum of baseline errors
    base = result["baseline"]
    expected = {t: sum(1 - a for a in result["accuracy"][t].values()) / sum(1 - a for a in base["accuracy"][t].values())
                for t in CORRUPTIONS}
    assert result["ce"] == pytest.approx(expected) and result["mce"] == pytest.approx(np.mean(list(expected.values())))
    page = (out / "report.html").read_text()
    assert 'id="corruptions"' in page and page.count("<td class=l>") >= 16 and "mCE" in page
    assert "## Robustness to corruptions" in (out / "report.md").read_text()
    assert (out / "corruptions.png").read_bytes()[:4] == b"\x89PNG"
    assert "corruptions.json" in json.loads((out / "metrics.json").read_text())["files"]


def test_without_baseline_only_the_unnormalised_ce():
    """The options as the CLI parses them, then the sweep and its report section, without a baseline."""
    from resnetlab.cli import build_parser
    from resnetlab.commands.evaluate import corruption_options
    from resnetlab.evaluation.robustness import evaluate_corruptions, section_html, section_markdown
    from resnetlab.models import create_model

    args = build_parser().parse_args(["evaluate", "net.safetensors", "--corruptions", "--corruption-types", "contrast,fog",
                                      "--severities", "5,1", "--corruption-limit", "8"])
    options = corruption_options(args)
    assert options == {"types": ["contrast", "fog"], "severities": [1, 5], "limit": 8, "baseline": None}
    options.pop("baseline")
    torch.manual_seed(0)
    result = evaluate_corruptions(create_model("cnn_baseline", num_classes=4), tiny_splits().test, **options)
    assert result["types"] == ["contrast", "fog"] and result["severities"] == [1, 5] and result["num_images"] == 8
    assert result["mce"] is None and result["ce"] is None and result["baseline"] is None
    mean_error = {t: np.mean([1 - a for a in result["accuracy"][t].values()]) for t in ("contrast", "fog")}
    assert result["ce_unnormalised"] == pytest.approx(mean_error)
    assert any("mCE needs a baseline" in n for n in result["notes"])
    assert "mCE needs a baseline" in section_html(result, None)
    assert "mCE needs `--baseline MODEL`" in "\n".join(section_markdown(result))


@pytest.mark.parametrize("options, message", [
    (["--corruptions", "--corruption-types", "fog,haze"], "unknown corruption 'haze'; valid names: gaussian_noise"),
    (["--corruptions", "--severities", "0,6"], "--severities '0,6': give comma-separated integers from 1 to 5"),
    (["--corruption-types", "fog"], "--corruption-types needs --corruptions"),
    (["--corruption-limit", "5"], "--corruption-limit needs --corruptions"),
    (["--corruptions", "--corruption-limit", "-1"], "--corruption-limit -1: must be >= 0"),
])
def test_cli_bad_corruption_options_fail_in_one_line(tmp_path, capsys, options, message):
    path = tmp_path / "net.safetensors"  # never opened: the options are refused first
    code = main(["evaluate", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu", *options])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.slow
@pytest.mark.browser
def test_report_section_renders_in_chromium(corruption_report):
    """The section in a real headless Chromium: the table has a row per type, the plot is drawn."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("chromium is not installed")
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.goto((corruption_report / "report.html").as_uri(), wait_until="load")
            rows = page.eval_on_selector_all("#corruption-table tbody tr", "els => els.map(e => e.cells[0].textContent)")
            cells = page.eval_on_selector_all("#corruption-table tbody tr", "els => els.map(e => e.cells.length)")
            plot = page.eval_on_selector("#corruptions img", "e => [e.complete, e.naturalWidth, e.getBoundingClientRect().width]")
            heading = page.text_content("#corruptions h2")
        finally:
            browser.close()
    assert problems == []
    assert heading == "Robustness to corruptions" and rows == list(CORRUPTIONS)
    assert set(cells) == {1 + 5 + 2 + 2}  # name, 5 severities, mean accuracy, CE unnormalised, CE, relative CE
    complete, natural_width, shown_width = plot
    assert complete and natural_width > 600 and shown_width > 300
