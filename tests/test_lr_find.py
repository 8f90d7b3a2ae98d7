"""``resnetlab lr-find``: the learning-rate range test (issue 23, item 4)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import make_image_folder, tiny_splits
from resnetlab.cli import main
from resnetlab.config import build_config
from resnetlab.engine.lr_range import RangeTestOptions, range_test, suggest, sweep_lr
from resnetlab.errors import ConfigError
from resnetlab.models import create_model


def _model(splits):
    model = create_model("cnn_baseline", num_classes=splits.train.num_classes)
    model.meta.mean, model.meta.std = tuple(splits.train.mean), tuple(splits.train.std)
    return model


def test_sweep_is_exponential_from_start_to_end():
    options = RangeTestOptions(start_lr=1e-5, end_lr=1.0, steps=11)
    lrs = [sweep_lr(step, options) for step in range(11)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([10 ** 0.5] * 10)


def test_range_test_records_curve_and_suggests_inside_the_sweep():
    splits = tiny_splits(n_train=64, n_val=16, classes=4, size=32)
    model = _model(splits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = build_config(None, {"model.name": "cnn_baseline", "device": "cpu"})
    options = RangeTestOptions(start_lr=1e-4, end_lr=1.0, steps=16)
    result = range_test(config, model, splits, options)
    points = result["points"]
    assert 3 <= len(points) <= 16 and result["steps_run"] == len(points)
    assert [p["lr"] for p in points] == pytest.approx([sweep_lr(i, options) for i in range(len(points))])
    assert all(math.isfinite(p["loss"]) and math.isfinite(p["smoothed"]) for p in points)
    s = result["suggestion"]
    assert options.start_lr <= s["lr"] <= options.end_lr
    lowest = min(points, key=lambda p: p["smoothed"])
    assert s["lr"] == pytest.approx(max(lowest["lr"] / 10, options.start_lr)) and s["method"] == "min/10"
    assert s["head_lr"] == s["backbone_lr"] == s["lr"]  # from scratch: one lr
    # the weights the sweep trained are thrown away
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_divergence_stops_the_sweep_early():
    splits = tiny_splits(n_train=128, n_val=16, classes=4, size=32)
    config = build_config(None, {"model.name": "cnn_baseline", "device": "cpu"})
    options = RangeTestOptions(start_lr=1e-3, end_lr=1e6, steps=60)
    result = range_test(config, _model(splits), splits, options)
    assert result["stopped"].startswith("diverged at lr") and result["steps_run"] < 60


def test_suggestion_rules_for_finetuning():
    # A made-up curve with its lowest smoothed loss at lr 0.1
    points = [{"step": i, "lr": 10 ** (-4 + i / 4), "loss": 0.0, "smoothed": 2.0 - 0.1 * i if i <= 12 else 2.0}
              for i in range(20)]
    full = suggest(points, "full")
    assert full["lr_min_loss"] == pytest.approx(10 ** -1)
    assert full["head_lr"] == pytest.approx(10 ** -2) and full["backbone_lr"] == pytest.approx(10 ** -3)
    assert suggest(points, "linear-probe")["backbone_lr"] is None
    with pytest.raises(ConfigError, match="too few to suggest"):
        suggest(points[:2])


def test_cli_writes_json_and_plot(tmp_path, capsys):
    data = make_image_folder(tmp_path / "images", classes=2, per_class=40, size=32)
    out = tmp_path / "lr"
    code = main(["lr-find", "--model", "cnn_baseline", "--data", str(data), "--steps", "12", "--start-lr", "1e-4",
                 "--end-lr", "1", "--device", "cpu", "--out", str(out)])
    assert code == 0
    record = json.loads((out / "lr_find.json").read_text())
    assert record["steps_run"] == len(record["points"]) > 0 and record["batch_size"] == 16  # small-data batch
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"suggested lr {record['suggestion']['lr']:.3g} (min/10" in printed
    assert not list(out.glob("*.pt")) and not list(out.glob("*.safetensors"))  # no weights saved


@pytest.mark.parametrize("argv, message", [
    (["--start-lr", "1", "--end-lr", "0.1"], "--start-lr 1 and --end-lr 0.1: need 0 < start < end"),
    (["--steps", "2"], "--steps 2: the sweep needs at least 5 steps"),
    (["--strategy", "full"], "--strategy chooses what a pretrained model trains: give --from too"),
    (["--model", "no_such_net"], "no_such_net"),
])
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, argv, message):
    code = main(["lr-find", "--data", str(tmp_path / "missing"), *argv])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_finetune_sweep_suggests_head_and_backbone(tmp_path, capsys):
    """--from a ResNet-18 state dict: the pretrained backbone is swept, the backbone gets head/10."""
    import torchvision

    torch.manual_seed(0)
    source = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), source)
    data = make_image_folder(tmp_path / "images", classes=2, per_class=24, size=32)
    out = tmp_path / "lr"
    code = main(["lr-find", "--from", str(source), "--model", "resnet18", "--data", str(data), "--steps", "8",
                 "--start-lr", "1e-4", "--end-lr", "1", "--device", "cpu", "--out", str(out)])
    assert code == 0
    s = json.loads((out / "lr_find.json").read_text())["suggestion"]
    assert s["backbone_lr"] == pytest.approx(s["head_lr"] / 10) and s["backbone_rule"] == "head x 0.1"
