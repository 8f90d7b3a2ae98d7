"""What the training phases share: ``TrainContext`` (fixed by ``setup``) and ``RunState`` (changes).

``trainer.setup`` builds both, in an order written out there; ``trainer.run`` only reads the
context and updates the state. Nothing is added to either on the way, so a phase cannot depend on
another having run first without it showing in these two definitions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from resnetlab.config import TrainConfig
from resnetlab.engine import distributed
from resnetlab.engine.checkpoint import CheckpointManager
from resnetlab.engine.loop import StepOptions, TrainState
from resnetlab.engine.precision import Precision
from resnetlab.engine.signals import StopRequest
from resnetlab.runs import RunDir


@dataclass(frozen=True)
class TrainContext:
    config: TrainConfig  # resolved (channels_last, compile, keep_host_memory decided) and recorded as such
    info: distributed.DistInfo
    device: torch.device
    precision: Precision
    run_dir: RunDir
    checkpoints: CheckpointManager
    raw: nn.Module  # the unwrapped model (what checkpoints and the model file hold)
    splits: Any  # data.DataSplits
    image_size: tuple[int, int]  # (H, W) the model trains and evaluates at
    train_loader: Any  # data.DeviceLoader
    val_loader: Any | None  # None without a validation split
    steps_per_epoch: int
    total_steps: int
    options: StepOptions
    stop: StopRequest  # SIGTERM/SIGINT, installed while run() trains
    tensorboard: Any | None  # SummaryWriter on rank 0 when config.tensorboard
    final_report: Callable[..., dict] | None  # see trainer's module docstring
    state: "RunState"  # the one mutable part, created by setup
    resumed_rng: dict | None = None  # a resumed checkpoint's random generators, put back as run() starts


def new_early_stop() -> dict:
    """Early stopping's running record (checkpointed, so a resume counts on where it stopped)."""
    return {"best": None, "best_epoch": None, "evals_since": 0, "stopped": False, "epoch": None, "reason": None}


@dataclass
class RunState:
    loop: TrainState  # model, optimizer, step, epoch, ... (loop.py); checkpointed
    best: dict = field(default_factory=lambda: {"val_acc": None, "epoch": None, "step": None})
    early_stop: dict = field(default_factory=new_early_stop)
    elapsed_before: float = 0.0  # training time of the invocations before a resume
    start_time: float | None = None  # when this invocation's loop started; before that no time has run
    last_checkpoint: Path | None = None
    step_records: list[dict] = field(default_factory=list)  # steps.jsonl rows not yet written
    stop_at_epoch_end: bool = False  # a hook asked to stop on an epoch's last step
    progress: Any = None  # the current epoch's EpochProgress

    @property
    def step(self) -> int:
        return self.loop.step

    @property
    def epoch(self) -> int:
        return self.loop.epoch

    def elapsed(self) -> float:
        running = 0.0 if self.start_time is None else time.perf_counter() - self.start_time
        return self.elapsed_before + running
