"""NaN/Inf handling (issue 8 item 3): stop with an error naming the step and the last good
checkpoint, or skip and count; never write a checkpoint with non-finite weights."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import debug_hooks, tiny_splits

from resnetlab.config import build_config
from resnetlab.engine import TrainingDiverged, train
from resnetlab.engine.checkpoint import CheckpointManager
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model


def config(tmp_path, **overrides):
    base = {
        "run_dir": str(tmp_path / "run"), "device": "cpu", "batch_size": 16, "max_steps": 12,
        "model.name": "cnn_baseline", "model.options": {"width": 4, "hidden": 8}, "checkpoint_every": 5,
        "optim.lr": 0.05,
    }
    base.update(overrides)
    return build_config(None, base)


def model():
    return create_model("cnn_baseline", num_classes=4, width=4, hidden=8)


def test_nan_loss_stops_with_step_and_last_good_checkpoint(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(TrainingDiverged) as info:
        train(cfg, model=model(), splits=tiny_splits(), hooks=debug_hooks(nan_at_step=7))
    message = str(info.value)
    assert isinstance(info.value, ResnetlabError)
    assert "non-finite loss at step 7" in message
    assert "last-00000005.pt" in message  # steps 0-4 done -> last good checkpoint at step 5
    assert not (tmp_path / "run" / "model.safetensors").exists()
    for path in CheckpointManager(tmp_path / "run" / "checkpoints").last_paths():
        weights = torch.load(path, weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.slow
def test_skip_mode_counts_skipped_steps_and_finishes(tmp_path):
    cfg = config(tmp_path, **{"nonfinite": "skip", "log_step_loss": True})
    result = train(cfg, model=model(), splits=tiny_splits(), hooks=debug_hooks(nan_at_step=7))
    assert result.completed and result.summary["skipped_steps"] == 1
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if s["skipped"]] == [7]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["skipped_steps"] for r in rows) == 1


def test_inf_gradient_is_caught(tmp_path):
    m = model()
    m.fc.weight.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(TrainingDiverged, match="non-finite gradient at step 0"):
        train(config(tmp_path), model=m, splits=tiny_splits())
