"""Real data: a briefly trained model evaluated on a held-out part of ../shared/data (skipped when absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnetlab.cli import main
from resnetlab.data import DeviceLoader, load_splits
from resnetlab.models import create_model
from resnetlab.models.files import save_model_file

pytestmark = pytest.mark.slow


def test_real_cifar_subset_report(cifar_jpeg_archive, tmp_path):
    splits = load_splits(str(cifar_jpeg_archive), val_size=1000, limit_train=3000, seed=0)
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=10, width=16)  # narrow: trains in seconds on a CPU
    model.meta.classes = list(splits.classes)
    model.meta.mean, model.meta.std = splits.train.mean, splits.train.std
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = DeviceLoader(splits.train, 100, train=True, mean=model.meta.mean, std=model.meta.std)
    for epoch in range(2):
        for x, y in loader.epoch(epoch):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    path = save_model_file(model.eval(), tmp_path / "cnn.safetensors")

    # The CLI re-creates the same held-out split from the same settings (a model file has no run config).
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"data:\n  spec: {cifar_jpeg_archive}\n  val_size: 1000\n  limit_train: 3000\n  split_seed: 0\n")
    path.rename(run / "model.safetensors")
    path.with_suffix(".json").rename(run / "model.json")
    assert main(["evaluate", str(run), "--split", "val", "--device", "cpu"]) == 0
    metrics = json.loads((run / "eval-val" / "metrics.json").read_text())
    assert metrics["num_samples"] == 1000
    assert metrics["per_class"][0]["class"] == "airplane" and sum(r["support"] for r in metrics["per_class"]) == 1000
    # Well above chance (10%) for a model that saw 3000 images twice; a broken pipeline sits at ~10%.
    assert metrics["accuracy"] > 0.2
    assert metrics["macro"]["auc"] > 0.7
    assert metrics["top5_accuracy"] > metrics["accuracy"]
    cm = np.array(metrics["confusion_matrix"])
    assert np.trace(cm) == round(metrics["accuracy"] * 1000)
