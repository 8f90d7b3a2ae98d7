"""Engine pieces: precision decided once, EMA, the measured ResNet-110 warm-up inside a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from resnetlab.engine.ema import create_ema, update_ema
from resnetlab.engine import precision as precision_module
from resnetlab.engine.precision import resolve_precision
from resnetlab.errors import ConfigError
from resnetlab.utils.device import resolve_device


def test_cpu_precision_auto_is_plain_fp32():
    device = resolve_device("cpu")
    for name in ("auto", "fp32", "fp16"):
        precision = resolve_precision(name, device)
        assert precision.dtype is None and precision.scaler is None and precision.name == "fp32"
        with precision.autocast():
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_cpu_bf16_is_autocast_and_fastest_follows_the_hardware(monkeypatch):
    device = resolve_device("cpu")
    bf16 = resolve_precision("bf16", device)
    assert bf16.dtype is torch.bfloat16 and bf16.scaler is None and bf16.name == "bf16"
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_precision("fastest", device).name == expected
    monkeypatch.undo()
    # The probe agrees with the CPU flags Linux reports (AMX tiles or AVX512-BF16).
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = set(cpuinfo.read_text().split())
        assert precision_module.cpu_has_native_bf16() == bool({"amx_tile", "avx512_bf16"} & flags)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_request_without_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_one_resolve_device_for_train_evaluate_and_predict():
    # The same function serves the engine, evaluate and Predictor: same answers, same one-line errors.
    from resnetlab.evaluation import runner
    from resnetlab.inference import predictor

    assert runner.resolve_device is predictor.resolve_device is resolve_device
    assert resolve_device(None) == resolve_device("") == resolve_device("auto")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device 'gpu0': not a device"):
        resolve_device("gpu0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_precision_scaler_only_for_fp16():
    device = resolve_device("cuda")
    assert resolve_precision("fp16", device).scaler is not None
    assert resolve_precision("bf16", device).scaler is None
    assert resolve_precision("fp32", device).dtype is None


def test_ema_tracks_parameters_and_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.meta = "meta"
    ema = create_ema(model, decay=0.5)
    assert create_ema(model, None) is None
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(2.0)
    model.train()(torch.randn(4, 2))  # updates BN running stats
    update_ema(ema, model)
    # The first update copies (n_averaged == 0); the second averages with decay 0.5.
    assert torch.equal(ema.module[0].weight, model[0].weight)
    with torch.no_grad():
        model[0].weight.copy_(start)
    update_ema(ema, model)
    assert torch.allclose(ema.module[0].weight, start + 1.0)
    assert ema.module.meta == "meta"


@pytest.mark.slow
def test_train_error_warmup_switch_follows_measured_accuracy(tmp_path):
    from resnetlab.config import build_config
    from resnetlab.engine import train
    from resnetlab.models import create_model
    from helpers import tiny_splits

    cfg = build_config(None, {
        "run_dir": str(tmp_path / "run"), "device": "cpu", "batch_size": 16, "epochs": 6, "log_step_loss": True,
        "optim.lr": 0.1, "schedule.name": "constant", "schedule.warmup_until_train_error": 0.7,
        "schedule.warmup_lr": 0.05, "schedule.warmup_window": 2,
    })
    splits = tiny_splits()
    splits.test = None
    train(cfg, model=create_model("cnn_baseline", num_classes=4, width=4, hidden=8), splits=splits)
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    # Recompute the switch from the logged training accuracies: the first step whose 2-step window error < 70%.
    switch = next(i for i in range(1, len(steps)) if 1 - (steps[i]["acc"] + steps[i - 1]["acc"]) / 2 < 0.7)
    assert all(s["lr"] == 0.05 for s in steps[: switch + 1])
    assert all(s["lr"] == 0.1 for s in steps[switch + 1 :])
    assert 0 < switch < len(steps) - 1
