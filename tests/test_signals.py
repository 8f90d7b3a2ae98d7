"""SIGTERM/SIGINT (issue 8 item 2): a real `python -m resnetlab train` saves at the next step and exits 143/130.

Resuming the interrupted run ends bit-identical to an uninterrupted one; a second signal while
the checkpoint is being written does not corrupt it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnetlab.engine.checkpoint import CheckpointManager
from resnetlab.models.files import load_checkpoint_dict

pytestmark = pytest.mark.slow

TOTAL = 60


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from helpers import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("data") / "images", classes=4, per_class=24)


RUNNER = Path(__file__).with_name("train_with_hooks.py")


def args(folder: Path, run_dir: Path, *extra: str, hooks: tuple[str, ...] = ()) -> list[str]:
    """A real ``resnetlab train`` process; ``hooks``: the runner's options (e.g. --sleep-per-step 0.05)."""
    return [
        sys.executable, str(RUNNER), *hooks, "--", "train", "--model", "cnn_baseline", "--data", str(folder),
        "--device", "cpu", "--seed", "1", "--batch-size", "16", "--val-size", "16", "--max-steps", str(TOTAL),
        "--run-dir", str(run_dir), "--set", "model.options={width: 4, hidden: 8}", "--set", "log_step_loss=true", "--set", "eval_report=false", *extra,
    ]


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def start_and_signal(cmd: list[str], signals: list[int], gap: float = 0.0, delay: float = 0.0) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        line = proc.stdout.readline()  # the first epoch line: training is under way
        assert line.startswith("epoch"), line + proc.stderr.read()
        time.sleep(delay)
        for i, sig in enumerate(signals):
            if i:
                time.sleep(gap)
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(folder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(args(folder, run_dir), check=True, capture_output=True, env=env(), timeout=300)
    return run_dir


def test_sigterm_saves_exits_143_and_resume_is_bit_identical(folder, straight, tmp_path):
    run_dir = tmp_path / "run"
    rc, err = start_and_signal(args(folder, run_dir, hooks=("--sleep-per-step", "0.05")), [signal.SIGTERM])
    assert rc == 143, err
    assert "--resume" in err
    checkpoint, path = CheckpointManager(run_dir / "checkpoints").load_newest_intact()
    assert 5 <= checkpoint["step"] < TOTAL  # saved at a step boundary, before the end
    assert len(losses(run_dir)) == checkpoint["step"]
    assert not (run_dir / "model.safetensors").exists()
    done = subprocess.run([*args(folder, run_dir)[:4], "--resume", str(run_dir)],
                          capture_output=True, text=True, env=env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert losses(run_dir) == losses(straight)
    a = load_checkpoint_dict(run_dir / "checkpoints" / f"last-{TOTAL:08d}.pt")["model"]
    b = load_checkpoint_dict(straight / "checkpoints" / f"last-{TOTAL:08d}.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_sigint_exits_130_and_a_second_signal_during_the_save_does_not_corrupt_it(folder, tmp_path):
    run_dir = tmp_path / "run"
    # Each save takes >= 1 s, so the second signal (0.3 s after the first) lands inside a save.
    cmd = args(folder, run_dir, hooks=("--sleep-per-step", "0.05", "--save-delay", "1.0"))
    # The first signal is sent a few steps into epoch 2, so it is honoured by a mid-epoch save.
    rc, err = start_and_signal(cmd, [signal.SIGINT, signal.SIGTERM], gap=0.3, delay=0.3)
    assert rc == 130, err
    assert "again" in err and "Traceback" not in err
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert all(not name.startswith(".") for name in files), files  # no temporary files left
    checkpoint, path = CheckpointManager(run_dir / "checkpoints").load_newest_intact()
    assert path == CheckpointManager(run_dir / "checkpoints").newest()  # the newest one is intact
    assert 5 < checkpoint["step"] < TOTAL
