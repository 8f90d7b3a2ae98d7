"""Small-data defaults (issue 23, item 3): adapted batch/lr/drop_last, the majority-class baseline, data info on mixed sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from helpers import tiny_splits
from resnetlab.cli import main
from resnetlab.config import build_config, config_text, load_recipe
from resnetlab.engine.small_data import adapted_batch, resolve_batching
from resnetlab.stats import baseline_verdict, majority_baseline, proportion_interval


# ---------------------------------------------------------------------- batch, lr, drop_last
@pytest.mark.parametrize("n, configured, expected", [
    (245, 128, 16),     # the ants/bees train split: 15 steps instead of 1
    (1000, 128, 32),    # 31 steps
    (3000, 128, 128),   # already >= 16 steps at the recipe's batch
    (45000, 128, 128),  # CIFAR: the recipe's batch, untouched
    (10, 128, 10),      # fewer images than the smallest batch: one batch of all of them
    (245, 8, 8),        # never above the configured batch
])
def test_adapted_batch_table(n, configured, expected):
    assert adapted_batch(n, configured) == expected


def test_defaults_adapt_batch_and_scale_lr_linearly():
    config = build_config(None, {})
    assert config.small_data == "batch+lr"
    decided = resolve_batching(config, 245)
    assert (config.batch_size, config.drop_last) == (16, True)  # 245 % 16 = 5 images dropped: 2%
    assert config.optim.lr == pytest.approx(0.1 * 16 / 128)
    assert decided.steps_per_epoch == 15 and not decided.warnings
    assert "batch 128 -> 16" in decided.message and "lr 0.1 -> 0.0125" in decided.message
    assert config.small_data == "applied"


def test_last_batch_kept_when_dropping_it_hides_much():
    config = build_config(None, {})
    decided = resolve_batching(config, 120)  # batch 16: 7 full batches and 8 images left over (6.7%)
    assert (config.batch_size, config.drop_last, decided.steps_per_epoch) == (16, False, 8)


def test_cifar_size_keeps_todays_behaviour():
    config = build_config("recipes/resnet20-he2016.yaml", {})
    before = (config.batch_size, config.optim.lr)
    decided = resolve_batching(config, 45000)
    assert (config.batch_size, config.optim.lr, config.drop_last) == (*before, True)
    assert decided.message is None and not decided.warnings


def test_user_values_are_honoured_with_warnings():
    config = build_config(None, {"batch_size": 128, "drop_last": True})
    assert config.small_data == "off"
    decided = resolve_batching(config, 245)
    assert (config.batch_size, config.optim.lr) == (128, 0.1)
    assert decided.steps_per_epoch == 1
    text = " ".join(decided.warnings)
    assert "only 1 step(s) per epoch" in text and "lower --batch-size (e.g. 16)" in text and "leaves out 117 of 245" in text


def test_user_lr_kept_while_batch_adapts():
    config = build_config(None, {"optim.lr": 0.05})
    assert config.small_data == "batch"
    resolve_batching(config, 245)
    assert (config.batch_size, config.optim.lr) == (16, 0.05)


def test_finetune_defaults_count_as_unset():
    from resnetlab.finetune import build_config as finetune_config

    assert finetune_config(None, {})[0].small_data == "batch+lr"
    assert finetune_config(None, {"batch_size": 32})[0].small_data == "off"
    assert finetune_config(None, {"optim.lr": 0.02})[0].small_data == "batch"
    # --lr-head/--lr-backbone are absolute: the adapted batch must not scale them through optim.lr.
    assert finetune_config(None, {"finetune.lr_head": 0.005})[0].small_data == "batch"
    assert finetune_config({"finetune": {"lr_backbone": 0.001}}, {})[0].small_data == "batch"


def test_resolved_config_is_not_adapted_again(tmp_path):
    """What config.yaml records (and --resume reads back) never adapts a second time."""
    config = build_config(None, {})
    resolve_batching(config, 245)
    path = tmp_path / "config.yaml"
    path.write_text(config_text(config))
    again = build_config(load_recipe(path))
    resolve_batching(again, 245)
    assert (again.batch_size, again.optim.lr, again.small_data) == (16, pytest.approx(0.0125), "applied")


@pytest.mark.slow
def test_train_records_resolved_values_and_baseline(tmp_path, capsys):
    """A real (tiny) run: config.yaml holds the adapted values, summary.json and the done line the baseline."""
    from resnetlab.engine import train

    splits = tiny_splits(n_train=120, n_val=40, classes=2, size=32)
    config = build_config(None, {"model.name": "cnn_baseline", "epochs": 1, "device": "cpu", "eval_report": False,
                                 "run_dir": str(tmp_path / "run")})
    result = train(config, splits=splits)
    recorded = load_recipe(tmp_path / "run" / "config.yaml")
    assert (recorded["batch_size"], recorded["drop_last"], recorded["small_data"]) == (16, False, "applied")
    assert recorded["optim"]["lr"] == pytest.approx(0.1 * 16 / 128)
    assert result.steps == 8  # 120 images in batches of 16, the last 8 kept
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["majority_baseline"]["test"] == {"class": "c0", "accuracy": 0.5, "n": 40}
    out = capsys.readouterr().out
    assert "small data: 120 training images, so batch 128 -> 16" in out
    assert summary["baseline_verdict"]["text"] in out.splitlines()[-1]


# ---------------------------------------------------------------------- the majority-class baseline
def test_majority_baseline_and_verdict_against_scipy():
    labels = np.array([0] * 46 + [1] * 54)
    baseline = majority_baseline(labels, ["ants", "bees"])
    assert baseline == {"class": "bees", "accuracy": 0.54, "n": 100}
    # Wilson interval against scipy's own implementation
    assert proportion_interval(0.6, 100) == pytest.approx(list(binomtest(60, 100).proportion_ci(method="wilson")), abs=1e-9)
    at_chance = baseline_verdict(0.5425, baseline)
    assert at_chance == {"better": False, "text": "no better than always predicting 'bees' (54.0%)"}
    assert baseline_verdict(0.60, baseline)["better"] is False  # 0.54 lies inside the interval of 60/100
    assert baseline_verdict(0.80, baseline)["better"] is True
    assert baseline_verdict(None, baseline) is None


def test_report_headline_shows_baseline():
    from resnetlab.evaluation.metrics import classification_metrics
    from resnetlab.evaluation.report import headline, render_markdown

    labels = torch.tensor([0] * 30 + [1] * 70)
    logits = torch.zeros(100, 2)
    logits[:, 1] = 1.0  # always "bees": exactly the baseline
    metrics = classification_metrics(logits, labels, ["ants", "bees"])
    assert metrics["majority_baseline"] == {"class": "bees", "accuracy": 0.7, "n": 100}
    assert "no better than always predicting &#x27;bees&#x27; (70.0%)" in headline(metrics)
    assert "no better than always predicting 'bees' (70.0%)" in render_markdown(metrics, [])
    logits[:30, 0] = 2.0  # now every image right
    assert "above the majority baseline 70.0%" in render_markdown(classification_metrics(logits, labels, ["ants", "bees"]), [])


# ---------------------------------------------------------------------- data info on mixed sizes
def test_data_info_reports_size_distribution(tmp_path, capsys):
    from PIL import Image

    sizes = {"train/ants/0.jpg": (60, 40), "train/ants/1.png": (200, 100), "train/bees/0.jpg": (90, 120),
             "train/bees/1.png": (300, 300), "val/ants/0.jpg": (64, 64), "val/bees/0.jpg": (128, 96)}
    rng = np.random.default_rng(0)
    for rel, (w, h) in sizes.items():
        (tmp_path / "d" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "d" / rel)
    assert main(["data", "info", str(tmp_path / "d"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "image sizes: 6 different among 6 images" in out
    info = json.loads((tmp_path / "out" / "info.json").read_text())["sizes"]
    widths = [w for w, _ in sizes.values()]
    heights = [h for _, h in sizes.values()]
    assert info["width"] == {"min": min(widths), "median": float(np.median(widths)), "max": max(widths)}
    assert info["height"] == {"min": min(heights), "median": float(np.median(heights)), "max": max(heights)}
    assert info["orientation"] == {"landscape": 3, "square": 2, "portrait": 1}
    shorter = sorted(min(s) for s in sizes.values())
    assert info["suggested_size"] == int(np.median(shorter)) // 8 * 8
    assert sum(info["shorter_side"].values()) == 6 and info["shorter_side"]["0-63"] == 1
    side = info["suggested_size"]
    assert json.loads((tmp_path / "out" / "info.json").read_text())["image_size"] == [side, side]
