"""Exact resume (issue 4 item 7): N steps straight == N/2, stop, new process, --resume, N/2.

Every run is a fresh ``resnetlab train`` process on CPU. Weights and every step's loss must be
bit-identical, stopping at an epoch boundary and mid-epoch. The negative control resumes without
restoring the torch RNG while dropout is on and must differ, proving the comparison can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnetlab.models.files import load_checkpoint_dict

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("train_with_hooks.py")
TOTAL = 10  # steps; 80 train images / batch 16 = 5 steps per epoch


def run_cli(*args: str, hooks: tuple[str, ...] = (), expect: int = 0) -> subprocess.CompletedProcess:
    """``resnetlab train ARGS`` in a fresh process, with the runner's ``hooks`` options (e.g. --stop-after-steps 5)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, str(RUNNER), *hooks, "--", "train", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from helpers import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("data") / "images", classes=4, per_class=24)


def common(folder: Path, run_dir: Path) -> list[str]:
    return [
        "--model", "tiny_test_net", "--data", str(folder), "--device", "cpu", "--seed", "3",
        "--batch-size", "16", "--val-size", "16", "--max-steps", str(TOTAL), "--run-dir", str(run_dir),
        "--set", "model.options={dropout: 0.5, bn: true}", "--set", "log_step_loss=true", "--set", "eval_report=false",
        "--set", "optim.lr=0.05", "--set", "ema_decay=0.9",
    ]


def final_state(run_dir: Path) -> dict:
    checkpoint = load_checkpoint_dict(run_dir / "checkpoints" / f"last-{TOTAL:08d}.pt")
    return {"model": checkpoint["model"], "ema": checkpoint["ema"], "optimizer": checkpoint["optimizer"]["state"]}


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "steps.jsonl").read_text().splitlines())]


def same_tensors(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if torch.is_tensor(a):
        return torch.equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def straight(folder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    run_cli(*common(folder, run_dir))
    return run_dir


@pytest.fixture(scope="module")
def stopped_at_boundary(folder, tmp_path_factory):
    """A run stopped after step 5 (the end of epoch 1), copied before any test resumes it."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    run_cli(*common(folder, run_dir), hooks=("--stop-after-steps", "5"))
    return run_dir


@pytest.fixture(scope="module")
def stopped_mid_epoch(folder, tmp_path_factory):
    """A run stopped after step 7 (mid epoch 2): it holds last-00000005.pt and last-00000007.pt."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    run_cli(*common(folder, run_dir), hooks=("--stop-after-steps", "7"))
    return run_dir


def stopped_copy(stopped: Path, tmp_path: Path) -> Path:
    shutil.copytree(stopped, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("stop", [5, 7], ids=["epoch-boundary", "mid-epoch"])
def test_resume_is_bit_identical(straight, stopped_at_boundary, stopped_mid_epoch, tmp_path, stop):
    run_dir = stopped_copy(stopped_at_boundary if stop == 5 else stopped_mid_epoch, tmp_path)
    assert not (run_dir / "model.safetensors").exists()  # a stopped run does not claim to be finished
    assert len(step_losses(run_dir)) == stop
    run_cli("--resume", str(run_dir))
    assert step_losses(run_dir) == step_losses(straight)
    assert len(step_losses(run_dir)) == TOTAL
    assert same_tensors(final_state(run_dir), final_state(straight))
    metrics = lambda d: [{k: r[k] for k in ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc")}
                         for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
    assert metrics(run_dir) == metrics(straight)


def test_negative_control_missing_rng_state_is_caught(straight, stopped_at_boundary, tmp_path):
    run_dir = stopped_copy(stopped_at_boundary, tmp_path)
    run_cli("--resume", str(run_dir), hooks=("--skip-rng-restore", "torch"))
    assert step_losses(run_dir)[:5] == step_losses(straight)[:5]
    assert step_losses(run_dir)[5:] != step_losses(straight)[5:]  # dropout masks differ after the resume
    assert not same_tensors(final_state(run_dir)["model"], final_state(straight)["model"])


def test_truncated_newest_checkpoint_falls_back_and_still_matches(straight, stopped_mid_epoch, tmp_path):
    run_dir = stopped_copy(stopped_mid_epoch, tmp_path)
    newest = run_dir / "checkpoints" / "last-00000007.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # e.g. a disk that filled up outside our atomic write
    proc = run_cli("--resume", str(run_dir))
    assert "last-00000007.pt" in proc.stderr and "newest intact" in proc.stderr and "last-00000005.pt" in proc.stderr
    assert step_losses(run_dir) == step_losses(straight)  # steps 5-6 are redone from the step-5 checkpoint
    assert same_tensors(final_state(run_dir), final_state(straight))
