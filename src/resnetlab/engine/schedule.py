"""Learning-rate schedules as pure functions of the optimizer step.

``lr_at(step, ...)`` is the learning rate used for the update of step ``step`` (0-based). Being
a pure function of the step is what makes resume exact: there is no scheduler object whose
hidden state could be lost. The one exception, He et al.'s measured warm-up for ResNet-110, is
handled by :class:`TrainErrorWarmup`, whose small state is saved in every checkpoint.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from resnetlab.config import ScheduleConfig
from resnetlab.errors import ConfigError


@dataclass(frozen=True)
class StepPlan:
    """How the schedule's units map to optimizer steps for one run."""

    total_steps: int
    steps_per_epoch: int

    def to_steps(self, value: float, unit: str) -> float:
        return value * self.steps_per_epoch if unit == "epochs" else value


def lr_at(step: int, base_lr: float, cfg: ScheduleConfig, plan: StepPlan) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if cfg.name == "onecycle":  # one-cycle has its own warm-up phase (Smith & Topin 2018)
        return _onecycle(step, base_lr, cfg, plan)
    warmup = plan.to_steps(cfg.warmup, cfg.unit)
    if warmup > 0 and step < warmup:
        # Linear warm-up (Goyal et al. 2017): start_factor * lr -> lr over `warmup` steps.
        frac = step / warmup
        return base_lr * (cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * frac)
    return _main(step, base_lr, cfg, plan, warmup)


def _main(step: int, base_lr: float, cfg: ScheduleConfig, plan: StepPlan, warmup: float) -> float:
    if cfg.name == "constant":
        return base_lr
    if cfg.name == "multistep":
        passed = sum(1 for m in cfg.milestones if step >= plan.to_steps(m, cfg.unit))
        return base_lr * cfg.gamma**passed
    if cfg.name == "step":
        size = plan.to_steps(cfg.step_size, cfg.unit)
        if size <= 0:
            raise ConfigError(f"config schedule.step_size={cfg.step_size}: must be > 0")
        return base_lr * cfg.gamma ** math.floor(step / size)
    if cfg.name == "cosine":
        # Cosine annealing without restarts (Loshchilov & Hutter 2017), after the warm-up.
        span = max(plan.total_steps - warmup, 1)
        progress = min(max((step - warmup) / span, 0.0), 1.0)
        return cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"config schedule.name={cfg.name!r}: unknown schedule")


def _onecycle(step: int, base_lr: float, cfg: ScheduleConfig, plan: StepPlan) -> float:
    start = base_lr / cfg.div_factor
    final = start / cfg.final_div_factor
    up = max(cfg.pct_start * plan.total_steps, 1.0)
    if step < up:
        return start + (base_lr - start) * step / up
    span = max(plan.total_steps - up, 1.0)
    progress = min((step - up) / span, 1.0)
    if cfg.anneal == "linear":  # linear to the end, as airbench and budgeted-training studies do (Li et al. 2020)
        return base_lr + (final - base_lr) * progress
    return final + (base_lr - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


class TrainErrorWarmup:
    """He et al. 2016 (Sec. 4.2, ResNet-110): lr 0.01 until the training error is below 80%.

    The running training error over the last ``window`` steps is measured; once it falls below
    ``threshold`` the warm-up ends for good and the regular schedule (which counts steps from 0,
    as in the paper: "go back to 0.1 and continue training") takes over.
    """

    def __init__(self, threshold: float | None, warmup_lr: float, window: int):
        self.threshold = threshold
        self.warmup_lr = warmup_lr
        self.window: deque[tuple[int, int]] = deque(maxlen=max(window, 1))
        self.done = threshold is None
        self.ended_at_step: int | None = None

    def lr(self, scheduled_lr: float) -> float:
        return scheduled_lr if self.done else self.warmup_lr

    def update(self, step: int, correct: int, seen: int) -> None:
        """Record one step's training accuracy; end the warm-up when the error is low enough."""
        if self.done:
            return
        self.window.append((int(correct), int(seen)))
        if len(self.window) < self.window.maxlen:
            return
        total = sum(s for _, s in self.window)
        error = 1.0 - sum(c for c, _ in self.window) / max(total, 1)
        if error < self.threshold:
            self.done = True
            self.ended_at_step = step

    def state_dict(self) -> dict:
        return {"done": self.done, "ended_at_step": self.ended_at_step, "window": [list(p) for p in self.window]}

    def load_state_dict(self, state: dict) -> None:
        self.done = bool(state["done"])
        self.ended_at_step = state.get("ended_at_step")
        self.window.clear()
        self.window.extend((int(c), int(s)) for c, s in state["window"])
