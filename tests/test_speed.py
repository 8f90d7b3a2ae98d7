"""The fast recipes load, use only real config switches, and train through `resnetlab train`."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import yaml

from resnetlab.cli import main
from resnetlab.config import build_config, load_recipe
from resnetlab.engine.precision import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["fast", "fast96"])
def test_fast_recipes_resolve(name):
    cfg = build_config(REPO / "recipes" / f"{name}.yaml")
    assert cfg.model.name == "fastnet94" and cfg.model.options["identity_init"] is True
    assert cfg.augment.alternate_flip and cfg.optim.nesterov and cfg.optim.label_smoothing == 0.2
    assert cfg.data.val_size == 5000 and cfg.tta is True
    assert cfg.model.compile in ("auto", False)  # never forced on: the CPU gains nothing from it (speed.md)
    # the recipe's keys are the resolved config's values, nothing silently dropped
    raw = load_recipe(REPO / "recipes" / f"{name}.yaml")
    assert cfg.to_dict()["model"]["options"] == raw["model"]["options"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fast", "fast96"])
def test_fast_recipe_trains_two_steps_through_cli(tmp_path, name):
    from helpers import make_image_folder

    folder = make_image_folder(tmp_path / "images", classes=3, per_class=12, test_per_class=4)
    run = tmp_path / "run"
    code = main(["train", "--recipe", str(REPO / "recipes" / f"{name}.yaml"), "--data", str(folder), "--device", "cpu",
                 "--max-steps", "2", "--batch-size", "8", "--val-size", "6", "--run-dir", str(run),
                 "--micro-batch", "4", "--set", "eval_batch_size=16"])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "fastnet94" and summary["steps"] == 2
    assert summary["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")  # precision: fastest
    assert summary["peak_rss_mb"] > 50  # the process's own peak, recorded for the memory benchmark
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["augment"]["alternate_flip"] is True and saved["tta"] is True
    assert saved["micro_batch"] == 4  # each batch of 8 ran as two passes of 4
    assert saved["keep_host_memory"] is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    if name == "fast":  # the flip + translate TTA ran in the final evaluation
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert "tta" in json.dumps(metrics)
