"""`resnetlab evaluate` on model files, checkpoints and run directories over a real image folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import make_image_folder

from resnetlab.cli import main
from resnetlab.data import load_splits
from resnetlab.models import create_model
from resnetlab.models.files import CHECKPOINT_KIND, save_model_file

CLASSES = ["cat", "dog", "frog"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """root/{train,test}/<class>/*.png, 32x32: 8 train and 4 test images per class."""
    return make_image_folder(tmp_path_factory.mktemp("folder"), per_class=8, test_per_class=4, names=CLASSES)


def make_model(classes=CLASSES):
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=len(classes))
    model.meta.classes = list(classes)
    return model


def test_evaluate_model_file(image_folder, tmp_path, capsys):
    path = save_model_file(make_model(), tmp_path / "net.safetensors")
    out = tmp_path / "report"
    code = main(["evaluate", str(path), "--data", str(image_folder), "--out", str(out), "--device", "cpu", "--batch-size", "5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "report.html" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 12 and metrics["context"]["data"]["split"] == "test"
    assert metrics["context"]["model"]["path"] == str(path)
    assert metrics["context"]["data"]["classes"] == CLASSES
    for name in ("report.html", "report.md", "roc.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 0


def test_class_mismatch_fails_with_one_line(image_folder, tmp_path, capsys):
    path = save_model_file(make_model(["cat", "dog", "horse"]), tmp_path / "net.safetensors")
    code = main(["evaluate", str(path), "--data", str(image_folder), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert "class names" in err and "horse" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_run_dir_val_split_uses_the_runs_split_settings(image_folder, tmp_path, capsys):
    """--split val on a run directory evaluates exactly the run's own held-out images."""
    run = tmp_path / "run"
    run.mkdir()
    save_model_file(make_model(), run / "model.safetensors")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"spec": str(image_folder), "val_size": 6, "split_seed": 7}}))
    assert main(["evaluate", str(run), "--split", "val", "--device", "cpu"]) == 0  # --data comes from the run
    out = run / "eval-val"
    metrics = json.loads((out / "metrics.json").read_text())
    expected = load_splits(str(image_folder), val_size=6, seed=7).val
    assert metrics["num_samples"] == 6
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["true"] for r in rows] == [CLASSES[i] for i in expected.labels.tolist()]
    if expected.paths:
        assert [r["path"] for r in rows] == list(expected.paths)
    assert metrics["context"]["data"]["spec"] == str(image_folder)


def test_evaluate_training_checkpoint(image_folder, tmp_path):
    model = make_model()
    checkpoint = {"kind": CHECKPOINT_KIND, "format_version": 1, "model": model.state_dict(), "meta": model.meta.to_dict()}
    torch.save(checkpoint, tmp_path / "best.pt")
    out = tmp_path / "ck"
    assert main(["evaluate", str(tmp_path / "best.pt"), "--data", str(image_folder), "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "metrics.json").read_text())["context"]["model"]["name"] == "cnn_baseline"


def test_missing_data_and_bad_split(tmp_path, capsys):
    path = save_model_file(make_model(), tmp_path / "net.safetensors")
    assert main(["evaluate", str(path), "--device", "cpu"]) == 1
    assert "--data" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope.safetensors"), "--data", "x", "--device", "cpu"]) == 1
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_onnx_export(image_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    export = pytest.importorskip("resnetlab.inference.export")
    path = save_model_file(make_model(), tmp_path / "net.safetensors")
    onnx_path = tmp_path / "net.onnx"
    export.export_model(path, "onnx", onnx_path)
    out_onnx, out_torch = tmp_path / "onnx", tmp_path / "torch"
    assert main(["evaluate", str(onnx_path), "--data", str(image_folder), "--out", str(out_onnx), "--device", "cpu"]) == 0
    assert main(["evaluate", str(path), "--data", str(image_folder), "--out", str(out_torch), "--device", "cpu"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (out_onnx, out_torch))
    assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"], abs=1e-4)
