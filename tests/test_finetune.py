"""Fine-tuning, part 2: the strategies through ``engine.train`` on tiny synthetic data, resume, and the CLI.

Each run is a few optimizer steps of a torchvision ResNet on 16x16 images; what is checked is which
tensors moved (bit-exact comparisons against the source file), not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import debug_hooks, make_image_folder, tiny_splits

from resnetlab.data import DataSplits
from resnetlab.engine.checkpoint import CheckpointManager
from resnetlab.finetune import build_config, finetune, load_source, resume
from resnetlab.models.files import load_trained_model
from resnetlab.models.registry import IMAGENET_MEAN

pytestmark = pytest.mark.slow  # real (tiny) training runs with run directories and reports

CLASSES = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="module")
def splits() -> DataSplits:
    return tiny_splits(16, 8, size=16, names=CLASSES, mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2))


def _weights(arch: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    for module in model.modules():  # non-default statistics: "unchanged" must mean "kept", not "reset"
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> tuple[Path, dict]:
    state = _weights("resnet18")
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def _run(run_dir: Path, splits, source: Path, hooks=None, **overrides):
    settings = {
        "finetune.source": str(source), "epochs": 1, "batch_size": 8, "eval_batch_size": 8, "device": "cpu",
        "run_dir": str(run_dir), "keep_last": 1, "optim.lr": 0.05, "schedule.warmup": 0,
        "eval_report": False,  # test accuracy only; the report is checked once below and in the CLI test
    }
    settings.update(overrides)
    config, options = build_config(None, settings)
    return finetune(config, options, splits=splits, hooks=hooks)


def _last_state(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint, _ = CheckpointManager(run_dir / "checkpoints").load_newest_intact()
    return checkpoint["model"]


def _changed(state: dict, source: dict, prefix: str) -> list[bool]:
    return [not torch.equal(state[k], source[k]) for k in source if k.startswith(prefix) and not k.endswith("num_batches_tracked")]


def test_full_from_timm_with_freeze_bn_moves_every_weight_but_no_statistic(tmp_path, splits):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False)
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 1.5)
    source = {k: v.clone().contiguous() for k, v in reference.state_dict().items()}
    save_file(source, str(tmp_path / "model.safetensors"))  # the file layout of timm's hub weights
    result = _run(tmp_path / "full", splits, tmp_path / "model.safetensors", **{"finetune.strategy": "full", "finetune.freeze_bn": True})
    state = _last_state(result.run_dir)
    params = {k for k, _ in reference.named_parameters()} - {"fc.weight", "fc.bias"}
    assert all(not torch.equal(state[k], source[k]) for k in params)  # full: everything trains
    stats = [k for k in source if k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(state[k], source[k]) for k in stats)  # --freeze-bn


def test_gradual_unfreezes_on_schedule_and_resumes_exactly(tmp_path, splits, r18):
    path, source = r18
    settings = {"finetune.strategy": "gradual", "finetune.layer_decay": 0.5, "epochs": 3}
    straight = _run(tmp_path / "straight", splits, path, **settings)
    state = _last_state(straight.run_dir)
    # 2 steps per epoch: epoch 1 trains the head, epoch 2 adds layer4, epoch 3 adds layer3.
    assert all(_changed(state, source, "layer4.")) and all(_changed(state, source, "layer3."))
    for frozen in ("layer2.", "layer1.", "conv1.", "bn1."):
        assert not any(_changed(state, source, frozen)), frozen
    plan = json.loads((straight.run_dir / "finetune.json").read_text())["unfreeze_plan"]
    assert [p["stages"] for p in plan[:3]] == [["head"], ["layer4"], ["layer3"]]

    # Stop mid-epoch 2 (step 3), resume in a fresh call: bit-identical to the uninterrupted run.
    stopped = _run(tmp_path / "resumed", splits, path, hooks=debug_hooks(stop_after_steps=3), **settings)
    assert not stopped.completed
    from resnetlab.config import read_config

    config = read_config(stopped.run_dir / "config.yaml")
    resumed = resume(stopped.run_dir, config, splits=splits)
    assert resumed.completed
    final = _last_state(resumed.run_dir)
    assert all(torch.equal(final[k], state[k]) for k in state), "resume diverged"


def test_linear_probe_resnet50_safetensors_keeps_backbone_bit_identical(tmp_path, splits):
    from safetensors.torch import save_file

    source = _weights("resnet50")
    save_file(source, str(tmp_path / "resnet50.safetensors"))
    result = _run(tmp_path / "lp", splits, tmp_path / "resnet50.safetensors",
                  **{"finetune.strategy": "linear-probe", "data.image_size": 32, "eval_report": True})
    state = _last_state(result.run_dir)
    for key in source:
        if not key.startswith("fc."):
            assert torch.equal(state[key], source[key]), key  # weights and BN statistics
    assert not torch.equal(state["fc.weight"], result.model.fc.weight.new_zeros(4, 2048)) and state["fc.weight"].shape == (4, 2048)

    keys = json.loads((result.run_dir / "finetune_keys.json").read_text())
    assert sorted(keys["new"]) == ["fc.bias", "fc.weight"] and sorted(keys["dropped"]) == ["fc.bias", "fc.weight"]
    assert len(keys["loaded"]) == len(source) - 2
    info = json.loads((result.run_dir / "model.json").read_text())
    assert info["meta"]["classes"] == CLASSES and info["meta"]["mean"] == list(IMAGENET_MEAN)  # the weights' normalization
    assert info["meta"]["input_size"] == [3, 32, 32]  # --resize 32: 16x16 images upsized on the device
    assert (result.run_dir / "eval" / "metrics.json").exists()  # the same final report as train
    seen = []
    result.model.conv1.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    # Evaluation resizes to the model's input size itself (no hook is patched into the model).
    from resnetlab.evaluation.predictions import collect_outputs

    collect_outputs(result.model, torch.zeros(1, 16, 16, 3, dtype=torch.uint8))
    assert seen == [(32, 32)]

    # The run directory is itself a source: new classes get a new head, every other tensor is loaded.
    from resnetlab.finetune import build_model

    trained = load_trained_model(result.run_dir).state_dict()
    model, report = build_model(load_source(result.run_dir), 4, classes=["w", "x", "y", "z"])
    assert sorted(report.new) == ["fc.bias", "fc.weight"] and sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in report.loaded)


def test_cli_finetune_end_to_end_on_an_image_folder(tmp_path, r18, capsys):
    from resnetlab.cli import main

    data = make_image_folder(tmp_path / "images", per_class=6, test_per_class=2, size=16, names=CLASSES[:3])
    run_dir = tmp_path / "run"
    code = main([
        "finetune", "--from", str(r18[0]), "--data", str(data), "--strategy", "gradual", "--adapt-stem",
        "--lr-head", "0.05", "--layer-decay", "0.7", "--warmup", "0.5", "--epochs", "2", "--batch-size", "6",
        "--val-size", "3", "--device", "cpu", "--run-dir", str(run_dir),
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "keys: loaded 119 tensors; adapted 1 [conv1.weight]" in out and "unfreezing: epoch 1: +head; epoch 2: +layer4" in out
    for name in ("model.safetensors", "model.json", "config.yaml", "metrics.jsonl", "finetune.json", "finetune_keys.json", "eval/report.html"):
        assert (run_dir / name).exists(), name
    model = load_trained_model(run_dir)
    assert model.conv1.weight.shape == (64, 3, 3, 3) and model.meta.classes == CLASSES[:3]
    record = json.loads((run_dir / "finetune.json").read_text())
    assert record["options"]["adapt_stem"] and record["strategy"]["lr_scale"]["head"] == pytest.approx(5.0)

    # A second run into the same directory is refused; a missing source fails before any output.
    assert main(["finetune", "--from", str(r18[0]), "--data", str(data), "--run-dir", str(run_dir)]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["finetune", "--from", str(tmp_path / "missing.pth"), "--data", str(data), "--run-dir", str(tmp_path / "x")]) == 1
    assert "missing.pth: no such file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
