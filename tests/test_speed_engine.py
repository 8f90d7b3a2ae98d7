"""Engine switches of the speed issue: Muon, Lookahead, eval_every, threads, channels_last/compile auto."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from resnetlab.config import OptimConfig, build_config
from resnetlab.engine.lookahead import Lookahead
from resnetlab.engine.muon import Muon, orthogonalize
from resnetlab.engine.optim import build_optimizer, param_groups
from resnetlab.engine.precision import resolve_channels_last, resolve_compile
from resnetlab.errors import ConfigError
from resnetlab.models.files import load_checkpoint_dict

RUNNER = Path(__file__).with_name("train_with_hooks.py")


def small_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


# ----------------------------------------------------------------------------- Muon


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
def test_orthogonalize_pushes_singular_values_towards_one(shape):
    torch.manual_seed(0)
    # A badly conditioned matrix: singular values spread over two orders of magnitude.
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    k = min(shape)
    s = torch.logspace(0, -2, k)
    matrix = u[:, :k] @ torch.diag(s) @ v[:, :k].T
    before = torch.linalg.svdvals(matrix)
    after = torch.linalg.svdvals(orthogonalize(matrix))
    assert before.max() / before.min() > 50
    # the quintic iteration lands every singular value in a band around 1 (not exactly 1, by design)
    assert after.min() > 0.5 and after.max() < 1.3, after


def test_muon_groups_split_filters_from_the_rest():
    model = small_convnet()
    cfg = OptimConfig(name="muon", lr=0.1, momentum=0.85, nesterov=True, muon_lr=0.02, muon_momentum=0.6, weight_decay=0.0)
    optimizer = build_optimizer(param_groups(model, 0.0, True), cfg)
    assert isinstance(optimizer, Muon)
    muon_groups = [g for g in optimizer.param_groups if g["muon"]]
    sgd_groups = [g for g in optimizer.param_groups if not g["muon"]]
    assert [p.ndim for g in muon_groups for p in g["params"]] == [4]
    assert sorted(p.ndim for g in sgd_groups for p in g["params"]) == [1, 1, 1, 2]  # BN w/b, head bias, head weight
    assert muon_groups[0]["lr"] == pytest.approx(0.02) and muon_groups[0]["momentum"] == 0.6
    assert all(g["lr"] == pytest.approx(0.1) and g["momentum"] == 0.85 for g in sgd_groups)


def test_muon_step_is_orthogonal_for_filters_and_sgd_for_the_rest():
    model = small_convnet()
    cfg = OptimConfig(name="muon", lr=0.1, momentum=0.0, nesterov=False, muon_lr=0.01, muon_momentum=0.0, weight_decay=0.0)
    optimizer = build_optimizer(param_groups(model, 0.0, False), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    conv = dict(model.named_parameters())["0.weight"]
    delta = (before["0.weight"] - conv.detach()).reshape(8, 27) / 0.01
    singular = torch.linalg.svdvals(delta)
    assert singular.min() > 0.5 and singular.max() < 1.3  # an orthogonalized step of size ~lr
    head = dict(model.named_parameters())["5.weight"]
    assert torch.allclose(before["5.weight"] - head.detach(), 0.1 * grads["5.weight"], atol=1e-7)  # plain SGD


def test_muon_rejects_flat_parameters_in_a_muon_group():
    with pytest.raises(ValueError, match=">= 2 dimensions"):
        Muon([{"params": [nn.Parameter(torch.zeros(3))], "muon": True}], lr=0.1)


def test_muon_trains_a_small_net():
    model = small_convnet()
    cfg = OptimConfig(name="muon", lr=0.05, momentum=0.9, nesterov=True, muon_lr=0.05, muon_momentum=0.9, weight_decay=0.0)
    optimizer = build_optimizer(param_groups(model, 0.0, True), cfg)
    torch.manual_seed(1)
    x = torch.randn(64, 3, 8, 8)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + 2 * (x[:, 1].mean(dim=(1, 2)) > 0).long()
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


# ----------------------------------------------------------------------------- Lookahead


def test_lookahead_syncs_every_k_steps():
    model = nn.Linear(3, 2)
    start = model.weight.detach().clone()
    lookahead = Lookahead(model, steps=2, alpha=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead.after_step(model)  # step 1 of 2: nothing happens
    assert torch.equal(model.weight, start + 1.0)
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead.after_step(model)  # step 2: slow = start + 0.5 * 2, fast reset to slow
    assert torch.allclose(model.weight, start + 1.0)
    state = lookahead.state_dict()
    other = Lookahead(nn.Linear(3, 2), steps=2, alpha=0.5)
    other.load_state_dict(state)
    assert other.count == 2 and torch.equal(other.slow["weight"], lookahead.slow["weight"])


def test_lookahead_rejects_bad_settings():
    with pytest.raises(ValueError, match="alpha"):
        Lookahead(nn.Linear(2, 2), steps=0, alpha=0.5)
    with pytest.raises(ConfigError, match="lookahead_alpha"):
        build_config(None, {"optim.lookahead_alpha": 1.5})


# ----------------------------------------------------------------------------- config switches


def test_auto_switches_resolve_per_device():
    assert resolve_channels_last("auto", torch.device("cpu")) is True
    assert resolve_channels_last(False, torch.device("cpu")) is False
    assert resolve_compile("auto", torch.device("cpu")) is False
    assert resolve_compile("auto", torch.device("cuda")) is True
    assert resolve_compile(True, torch.device("cpu")) is True
    with pytest.raises(ConfigError, match="model.compile"):
        build_config(None, {"model.compile": "sometimes"})
    for key, value in (("eval_every", 0), ("threads", 0)):
        with pytest.raises(ConfigError, match=key):
            build_config(None, {key: value})


def run_cli(*args: str, hooks: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``resnetlab train ARGS`` in a fresh process, with the runner's ``hooks`` options (e.g. --stop-after-steps 4)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, str(RUNNER), *hooks, "--", "train", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from helpers import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("data") / "images", classes=4, per_class=24)


def common(folder: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--model", "tiny_test_net", "--data", str(folder), "--device", "cpu", "--seed", "3",
            "--batch-size", "16", "--val-size", "16", "--run-dir", str(run_dir),
            "--set", "model.options={bn: true}", "--set", "eval_report=false", *extra]


@pytest.mark.slow
def test_eval_every_threads_and_resolved_switches_in_a_run(folder, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(*common(folder, run_dir, "--epochs", "3", "--eval-every", "2", "--threads", "1"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["val_acc"] is None  # skipped
    assert rows[1]["val_acc"] is not None and rows[2]["val_acc"] is not None  # due, and the last epoch
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["eval_every"] == 2 and saved["threads"] == 1
    assert saved["model"]["channels_last"] is True and saved["model"]["compile"] is False  # auto, resolved on CPU


@pytest.mark.slow
def test_muon_and_lookahead_resume_bit_identical(folder, tmp_path):
    extra = ("--max-steps", "8", "--set", "optim.name=muon", "--set", "optim.lookahead_steps=3",
             "--set", "optim.muon_lr=0.02")
    straight = tmp_path / "straight"
    run_cli(*common(folder, straight, *extra))
    stopped = tmp_path / "stopped"
    run_cli(*common(folder, stopped, *extra), hooks=("--stop-after-steps", "4"))
    at_stop = load_checkpoint_dict(stopped / "checkpoints" / "last-00000004.pt")
    run_cli("--resume", str(stopped))
    a = load_checkpoint_dict(straight / "checkpoints" / "last-00000008.pt")
    b = load_checkpoint_dict(stopped / "checkpoints" / "last-00000008.pt")
    assert a["lookahead"]["count"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["lookahead"]["slow"]:
        assert torch.equal(a["lookahead"]["slow"][key], b["lookahead"]["slow"][key]), key
    # the weights moved after the resume: the test is not comparing two copies of the stopped state
    assert any(not torch.equal(at_stop["model"][k], b["model"][k]) for k in b["model"] if b["model"][k].is_floating_point())


def test_onecycle_linear_anneal_is_a_straight_line_to_the_end():
    from resnetlab.config import ScheduleConfig
    from resnetlab.engine.schedule import StepPlan, lr_at

    cfg = ScheduleConfig(name="onecycle", pct_start=0.2, div_factor=5.0, final_div_factor=1e9, anneal="linear")
    plan = StepPlan(total_steps=100, steps_per_epoch=10)
    lrs = [lr_at(step, 1.0, cfg, plan) for step in range(101)]
    assert lrs[0] == pytest.approx(0.2) and lrs[20] == pytest.approx(1.0) and lrs[100] == pytest.approx(0.0, abs=1e-8)
    assert lrs[60] == pytest.approx(0.5) and lrs[40] == pytest.approx(0.75)  # linear, not cosine (cos would give 0.5 / 0.85)
    cosine = ScheduleConfig(name="onecycle", pct_start=0.2, div_factor=5.0, final_div_factor=1e9)
    assert lr_at(40, 1.0, cosine, plan) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_bias_lr_scale_multiplies_the_no_decay_group():
    model = small_convnet()
    cfg = OptimConfig(name="sgd", lr=0.1, weight_decay=5e-4, no_decay_bn_bias=True)
    optimizer = build_optimizer(param_groups(model, 5e-4, True, bias_lr_scale=64.0), cfg)
    decay, no_decay = optimizer.param_groups
    assert decay["lr"] == pytest.approx(0.1) and decay["weight_decay"] == 5e-4
    assert no_decay["lr"] == pytest.approx(6.4) and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in no_decay["params"])


# ----------------------------------------------------------------------------- Muon options


def test_muon_normalize_pins_each_filter_tensor_to_norm_sqrt_rows():
    model = small_convnet()
    conv = model[0].weight
    with torch.no_grad():
        conv.mul_(7.0)  # far from the pinned norm
    cfg = OptimConfig(name="muon", lr=0.1, momentum=0.0, nesterov=False, muon_lr=0.0, muon_momentum=0.0,
                      weight_decay=0.5, muon_normalize=True, muon_ns_steps=3)
    optimizer = build_optimizer(param_groups(model, 0.5, True), cfg)
    assert all(g["ns_steps"] == 3 and g["normalize"] for g in optimizer.param_groups if g["muon"])
    direction = conv.detach() / conv.detach().norm()
    F.cross_entropy(model(torch.randn(8, 3, 6, 6)), torch.randint(0, 4, (8,))).backward()
    optimizer.step()  # muon_lr 0: only the rescaling acts, and the weight decay is skipped
    assert conv.norm().item() == pytest.approx(8**0.5, rel=1e-5)
    assert torch.allclose(conv.detach() / conv.detach().norm(), direction, atol=1e-6)


def test_muon_without_normalize_applies_decoupled_decay():
    model = small_convnet()
    conv = model[0].weight
    before = conv.detach().clone()
    cfg = OptimConfig(name="muon", lr=0.1, momentum=0.0, nesterov=False, muon_lr=0.0, muon_momentum=0.0, weight_decay=0.5)
    optimizer = build_optimizer(param_groups(model, 0.5, True), cfg)
    for g in optimizer.param_groups:  # the rate is 0 for the filters: give the decay a rate to act with
        if g["muon"]:
            g["lr"] = 0.2
    F.cross_entropy(model(torch.randn(8, 3, 6, 6)), torch.randint(0, 4, (8,))).backward()
    for g in optimizer.param_groups:
        if g["muon"]:
            for p in g["params"]:
                p.grad = torch.zeros_like(p)  # a zero gradient: the update is only the decay
    optimizer.step()
    assert torch.allclose(conv.detach(), before * (1 - 0.2 * 0.5), atol=1e-6)


def test_muon_ns_steps_is_validated():
    with pytest.raises(ConfigError, match="muon_ns_steps"):
        build_config({"model": {"name": "tiny_test_net"}, "optim": {"name": "muon", "muon_ns_steps": 0}})


# ----------------------------------------------------------------------------- progressive resizing


@pytest.mark.slow
def test_progressive_epoch_sizes_train_small_then_full(folder, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(*common(folder, run_dir, "--epochs", "3", "--set", "augment.epoch_sizes=[8, 12]"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["augment"]["epoch_sizes"] == [8, 12]


# ----------------------------------------------------------------------------- micro-batches


def _one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batch: int | None, probe: bool = False):
    from resnetlab.engine.loop import StepOptions, TrainState, train_step
    from resnetlab.engine.precision import resolve_precision
    from resnetlab.engine.schedule import TrainErrorWarmup

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    state = TrainState(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(label_smoothing=0.1),
                       precision=resolve_precision("fp32", torch.device("cpu")), lr_fn=lambda step: 0.5,
                       warmup=TrainErrorWarmup(None, 0.01, 50))
    return train_step(state, x, y, StepOptions(micro_batch=micro_batch, probe_steps=frozenset({0}) if probe else frozenset()))


def test_micro_batches_give_the_full_batch_step_without_batchnorm():
    torch.manual_seed(0)
    x, y = torch.randn(10, 3, 8, 8), torch.randint(0, 4, (10,))
    make = lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    torch.manual_seed(1)
    whole = make()
    torch.manual_seed(1)
    passes = make()
    a = _one_step(whole, x, y, None)
    b = _one_step(passes, x, y, 3)  # passes of 3, 3, 3 and 1 image: the loss is weighted by each pass's share
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["correct"] == a["correct"] and b["seen"] == 10
    for (name, p), q in zip(whole.named_parameters(), passes.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert not torch.equal(whole[0].weight, make()[0].weight)  # the step did move the weights


def test_micro_batches_normalize_each_pass_by_its_own_statistics():
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))
    whole, passes = small_convnet(), small_convnet()
    _one_step(whole, x, y, None)
    record = _one_step(passes, x, y, 4, probe=True)
    assert int(whole[1].num_batches_tracked) == 1 and int(passes[1].num_batches_tracked) == 2
    # the activation probe watches the first pass only and is detached before the second
    assert set(record["probe"]["activations"]) == {"0", "1", "5"}
    assert not passes[0]._forward_hooks
    # ghost batch norm: two half-batch normalizations are another function than one of the whole batch
    assert not torch.allclose(whole[0].weight, passes[0].weight, atol=1e-6)
    # a micro-batch as large as the batch is the plain step, bit for bit
    same = small_convnet()
    _one_step(same, x, y, 8)
    assert all(torch.equal(p, q) for p, q in zip(whole.parameters(), same.parameters()))


def test_micro_batch_is_validated():
    with pytest.raises(ConfigError, match="micro_batch"):
        build_config(None, {"micro_batch": 0})
    assert build_config(None, {"micro_batch": 250}).micro_batch == 250


@pytest.mark.slow
def test_micro_batch_flag_reaches_the_run(folder, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(*common(folder, run_dir, "--max-steps", "2", "--micro-batch", "6"))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["micro_batch"] == 6
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2
