"""DDP (issue 4 item 8): `torchrun --nproc_per_node=2 -m resnetlab train` with gloo on CPU.

The 2-process run must match a 1-process run of the same global batch (16 = 2 x 8). The model is
cnn_baseline, which has no BatchNorm: with BN each process would normalize with its own half-batch
statistics (SyncBatchNorm needs a GPU), which changes the function being optimized, not just the
rounding. Without BN, DDP's gradient (the mean of the two half-batch mean gradients) equals the
full-batch mean gradient exactly in real arithmetic; only the summation order differs, so weights
agree to float32 rounding amplified over a few steps: we allow 1e-5 absolute (weights are ~1e-1).
The loader hands rank r the r-th half of each global batch with the same augmentation, so both
runs see the same images.
"""

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
STEPS = 8
TOLERANCE = 1e-5


def torchrun() -> str:
    exe = Path(sys.executable).with_name("torchrun")
    return str(exe) if exe.exists() else shutil.which("torchrun")


def train_args(folder: Path, run_dir: Path, micro_batch: int | None = None) -> list[str]:
    micro = ["--micro-batch", str(micro_batch)] if micro_batch else []
    return [
        "-m", "resnetlab", "train", "--model", "cnn_baseline", "--data", str(folder), "--device", "cpu", "--seed", "5",
        "--batch-size", "16", "--val-size", "16", "--max-steps", str(STEPS), "--run-dir", str(run_dir),
        "--set", "model.options={width: 8, hidden: 16}", "--set", "log_step_loss=true", "--set", "eval_report=false", "--set", "optim.lr=0.05",
        "--set", "augment.flip=true", "--set", "augment.crop_padding=2", *micro,
    ]


# micro_batch 4: each rank runs its 8 images as 2 passes (gradients kept local until the last, with
# DDP's no_sync), the single process its 16 as 4 passes; without BN the step is the same. This checks
# that accumulation under no_sync gives the right step, not that it saves the extra all-reduces.
@pytest.mark.parametrize("micro_batch", [None, 4])
def test_two_process_ddp_matches_single_process(tmp_path, small_image_folder, micro_batch):
    if torchrun() is None:
        pytest.skip("torchrun not installed")
    folder = small_image_folder  # 4 classes x 24 train images, made once per session
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run([torchrun(), "--standalone", "--nproc_per_node=2", *train_args(folder, tmp_path / "ddp", micro_batch)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, *train_args(folder, tmp_path / "single", micro_batch)], capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    assert ddp.stdout.count("done:") == 1  # rank 0 alone reports and writes
    a = load_checkpoint_dict(tmp_path / "ddp" / "checkpoints" / f"last-{STEPS:08d}.pt")["model"]
    b = load_checkpoint_dict(tmp_path / "single" / "checkpoints" / f"last-{STEPS:08d}.pt")["model"]
    diff = max((a[k] - b[k]).abs().max().item() for k in b)
    assert diff < TOLERANCE, diff
    losses = lambda d: [json.loads(line)["loss"] for line in (d / "steps.jsonl").read_text().splitlines()]
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), rel=1e-5)


def test_torchrun_with_one_process_still_runs_ddp(tmp_path, small_image_folder):
    """World size 1 under torchrun is DDP (the only NCCL check a one-GPU machine allows), not a plain run."""
    if torchrun() is None:
        pytest.skip("torchrun not installed")
    run = subprocess.run([torchrun(), "--standalone", "--nproc_per_node=1", *train_args(small_image_folder, tmp_path / "ddp1")],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "DDP: rank 0 of 1 (gloo)" in run.stderr
    assert json.loads((tmp_path / "ddp1" / "summary.json").read_text())["world_size"] == 1
