"""`resnetlab export`: ONNX parity for every registered model, metadata, TorchScript round trip."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import resnetlab
from resnetlab.cli import main
from resnetlab.inference import export as export_module
from resnetlab.inference.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    TORCHSCRIPT_META_FILE,
    ExportParityError,
    export_onnx,
)
from resnetlab.models import create_model, list_models
from resnetlab.errors import CheckpointError
from resnetlab.inference.predictor import Predictor
from resnetlab.models.files import load_model_file, save_model_file

CLASSES = ["alpha", "beta", "gamma", "delta"]


def calibrate_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm the statistics of one random batch, as training would.

    With freshly initialized running stats (mean 0, var 1) every BN is the identity in eval mode and
    activations of deep ResNets grow with depth (1e9 logits for resnet110, inf for resnet1202), which
    says nothing about the export; calibrated models behave like trained ones.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the stats exactly
    model.train()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model(torch.randn((8, *model.meta.input_size), generator=generator))
    return model.eval()


def _small_model(name: str, num_classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes)
    if model.meta.input_size[1] > 64:
        model.meta.input_size = (3, 64, 64)  # ImageNet-shaped nets: "at small size", same graph
    model.meta.classes = [f"class_{i}" for i in range(num_classes)]
    return calibrate_batchnorm(model)


# A torch.export ONNX export costs 2-5 s for a small net on 2 CPU cores and up to a minute for the
# deep ones (measured on a busy box: preact_resnet164 58 s, resnet50 28 s, resnet18 20 s). So every
# run exports a plain CNN and a residual net, three more distinct small architectures run under the
# slow marker, and the heavy architectures and the deeper siblings that repeat the same blocks run
# only with RESNETLAB_EXPORT_ALL=1 (all of them passed with it when the exporter moved to torch.export).
# Any model registered later and not listed here runs under the slow marker.
FAST = {"cnn_baseline", "resnet20"}
HEAVY = {"preact_resnet164", "preact_resnet18", "resnet18", "resnet18_cifar", "resnet50", "wrn16_8"}
SAME_BLOCKS = {
    **{f"plain{d}": "plain20" for d in (32, 44, 56, 110)},
    **{f"resnet{d}": "resnet20" for d in (32, 44, 56, 110, 1202)},
    "resnet34": "resnet18", "resnet34_cifar": "resnet18_cifar",
    "resnet50_cifar": "resnet50 (bottlenecks) and resnet18_cifar (stem)",
    "resnet101": "resnet50", "resnet152": "resnet50", "wrn28_10": "wrn16_8",
}
EXPORT_ALL = os.environ.get("RESNETLAB_EXPORT_ALL") == "1"


def _params():
    for name in list_models():
        if name in FAST:
            yield pytest.param(name, id=name)
        elif name in SAME_BLOCKS and not EXPORT_ALL:
            reason = f"same blocks as {SAME_BLOCKS[name]}, only deeper/wider (set RESNETLAB_EXPORT_ALL=1 to export it)"
            yield pytest.param(name, id=name, marks=pytest.mark.skip(reason=reason))
        elif name in HEAVY and not EXPORT_ALL:
            reason = "its torch.export took 14-58 s on a busy 2-core box (set RESNETLAB_EXPORT_ALL=1 to export it)"
            yield pytest.param(name, id=name, marks=pytest.mark.skip(reason=reason))
        else:
            yield pytest.param(name, id=name, marks=pytest.mark.slow)


@pytest.mark.parametrize("name", list(_params()))
def test_onnx_parity_for_every_registered_model(name, tmp_path, caplog):
    model = _small_model(name)
    caplog.set_level(logging.INFO)  # what the CLI logs at
    result = export_onnx(model, tmp_path / f"{name}.onnx")
    # The exporter's graph passes log "Removed N unused nodes" and the like at INFO; users see none of it.
    assert not [r.name for r in caplog.records if r.name.startswith(("onnxscript", "onnx_ir")) and r.levelno < logging.WARNING]
    assert result.path.is_file() and result.sidecar.is_file()
    assert result.max_abs_diff <= result.tolerance
    # Independent check through the ONNX Predictor at a batch size never traced (5).
    onnx_predictor = resnetlab.load(result.path)
    torch_predictor = Predictor.from_model(model)
    images = torch.randint(0, 256, (5, *onnx_predictor.image_size, 3), dtype=torch.uint8)
    expected = torch_predictor.logits(images)
    got = onnx_predictor.logits(images)
    assert got.shape == (5, 4)
    assert torch.allclose(got, expected, atol=1e-4 * max(1.0, float(expected.abs().max())), rtol=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    model = _small_model("resnet20")
    model.meta.classes = list(CLASSES)
    path = tmp_path_factory.mktemp("run")
    save_model_file(model, path, extra={"test_acc": 0.5})
    return path


@pytest.fixture(scope="module")
def onnx_export(run_dir) -> tuple[Path, str]:
    """The CLI export of ``run_dir`` (done once) and what it printed."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    return run_dir / "model.onnx", stdout.getvalue()


def test_onnx_file_layout_and_metadata(run_dir, onnx_export):
    path, out = onnx_export
    assert "max abs diff" in out and str(path) in out
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic batch dimension
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 32, 32]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == CLASSES
    assert props["architecture"] == "resnet20"
    assert json.loads(props["input_size"]) == [3, 32, 32]
    assert json.loads(props["mean"]) == pytest.approx(list(resnetlab.create_model("resnet20").meta.mean))
    sidecar = json.loads((run_dir / "model.onnx.json").read_text())
    assert sidecar["meta"]["classes"] == CLASSES and sidecar["input"] == INPUT_NAME
    assert sidecar["max_abs_diff"] <= sidecar["tolerance"]


def test_predict_runs_the_onnx_file(run_dir, onnx_export, tmp_path):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(image)
    onnx_json, torch_json = tmp_path / "onnx.json", tmp_path / "torch.json"
    assert main(["predict", str(run_dir / "model.onnx"), str(image), "--output", str(onnx_json), "-q"]) == 0
    assert main(["predict", str(run_dir), str(image), "--output", str(torch_json), "-q"]) == 0
    a = json.loads(onnx_json.read_text())
    b = json.loads(torch_json.read_text())
    assert a["backend"] == "onnxruntime" and b["backend"] == "torch"
    top_a, top_b = a["predictions"][0]["top_k"], b["predictions"][0]["top_k"]
    assert [t["class"] for t in top_a] == [t["class"] for t in top_b]
    assert [t["probability"] for t in top_a] == pytest.approx([t["probability"] for t in top_b], abs=1e-5)


def test_onnx_without_metadata_props_falls_back_to_sidecar(onnx_export, tmp_path):
    path = tmp_path / "bare.onnx"
    shutil.copy(onnx_export[0].with_name("model.onnx.json"), tmp_path / "bare.onnx.json")
    proto = onnx.load(str(onnx_export[0]))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))
    assert resnetlab.load(path).classes == CLASSES
    (tmp_path / "bare.onnx.json").unlink()
    with pytest.raises(CheckpointError, match="no resnetlab metadata"):
        resnetlab.load(path)


def test_parity_failure_is_loud_and_writes_nothing(onnx_export, run_dir, tmp_path, monkeypatch):
    # The exporter hands back the ONNX graph of the unchanged weights (reused: each export costs
    # seconds) while the model being exported has had one layer changed, so the outputs differ.
    other_bytes = onnx_export[0].read_bytes()
    monkeypatch.setattr(export_module, "_onnx_bytes", lambda *args, **kwargs: other_bytes)
    model = load_model_file(run_dir)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    target = tmp_path / "wrong.onnx"
    with pytest.raises(ExportParityError, match="max abs"):
        export_onnx(model, target)
    assert not target.exists() and not (tmp_path / "wrong.onnx.json").exists()


def test_torchscript_round_trip(run_dir, capsys):
    assert main(["export", str(run_dir), "--format", "torchscript"]) == 0
    path = run_dir / "model.torchscript.pt"
    files = {TORCHSCRIPT_META_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), _extra_files=files)
    meta = json.loads(files[TORCHSCRIPT_META_FILE])
    assert meta["classes"] == CLASSES and meta["name"] == "resnet20"
    model = load_model_file(run_dir).eval()
    x = torch.randn(3, 3, 32, 32)  # batch size not used when tracing
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_unknown_format_and_missing_model_are_user_errors(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", str(run_dir), "--format", "tflite"])
    assert main(["export", str(tmp_path / "missing"), "--format", "onnx"]) == 1
    assert "not found" in capsys.readouterr().err


def test_onnx_comes_from_torch_export(onnx_export):
    # The deprecated TorchScript-based exporter stamps "pytorch" as producer and opset 17; the maintained
    # one (torch.export + onnxscript) writes opset 18+ and records itself in the sidecar.
    path, printed = onnx_export
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    sidecar = json.loads(path.with_name("model.onnx.json").read_text())
    assert sidecar["exporter"] == "torch.export" and "exporter torch.export" in printed


def test_opset_below_the_exporters_minimum_is_a_user_error(run_dir, tmp_path, capsys):
    target = tmp_path / "old.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--opset", "17", "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert "--opset 17" in err and len(err.strip().splitlines()) == 1
    assert not target.exists()
