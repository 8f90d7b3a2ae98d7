"""The inner loops: one training step, one training epoch, one evaluation pass.

Small functions with explicit inputs; each returns plain numbers or a metric dict. Everything a
resumed run needs to continue exactly lives in :class:`TrainState` (and is checkpointed).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from resnetlab.engine import distributed
from resnetlab.engine.ema import update_ema
from resnetlab.engine.lookahead import Lookahead
from resnetlab.engine.optim import set_lr
from resnetlab.engine.precision import Precision
from resnetlab.engine.probes import ActivationProbe, grad_norms
from resnetlab.engine.schedule import TrainErrorWarmup


class NonFiniteStep(Exception):
    """A NaN/Inf loss or gradient at ``step`` (the engine turns it into a user-facing error)."""

    def __init__(self, step: int, what: str):
        self.step = step
        self.what = what
        super().__init__(f"non-finite {what} at step {step}")


@dataclass
class EpochStats:
    """Running sums of the current epoch (checkpointed, so a mid-epoch resume reports the same)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    skipped: int = 0

    def add(self, loss: float, correct: int, seen: int) -> None:
        self.loss_sum += loss * seen
        self.correct += correct
        self.seen += seen

    def metrics(self) -> dict:
        seen = max(self.seen, 1)
        return {"train_loss": self.loss_sum / seen, "train_acc": self.correct / seen}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepOptions:
    """Per-run settings of a training step."""

    grad_clip: float | None = None
    nonfinite: str = "error"  # error | skip
    # TrainHooks.on_loss(step, loss) -> loss, applied to each pass's loss before backward (tests inject NaNs)
    on_loss: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    probe_steps: frozenset[int] = frozenset()
    dist: distributed.DistInfo = field(default_factory=distributed.DistInfo)
    # Images per forward/backward pass; a larger batch is run as several passes whose gradients
    # add up before the one optimizer step. On a CPU, passes of ~250 32x32 images are faster:
    # fastnet94's forward+backward at 32 px ran 1.15-1.50x faster than in one pass of 1,000 under
    # glibc's default allocator (mostly the page faults on each pass's fresh large blocks) and
    # 1.04-1.07x with keep_host_memory (benchmarks/speed.md, 0 and 2a). BatchNorm then normalizes each pass by its own
    # statistics, and a class-weighted loss is each pass's weighted mean (close to, not exactly,
    # the batch's).
    micro_batch: int | None = None
    # The model is compiled with CUDA graphs (model.compile: reduce-overhead): each step tells
    # torch.compile a new iteration begins, so the previous step's graph outputs may be reused.
    cudagraphs: bool = False


@dataclass
class TrainState:
    model: nn.Module  # possibly DDP-wrapped / compiled
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    precision: Precision
    lr_fn: Callable[[int], float]  # pure: lr of a step
    warmup: TrainErrorWarmup
    ema: nn.Module | None = None
    lookahead: "Lookahead | None" = None
    step: int = 0  # optimizer steps done (global)
    epoch: int = 0
    step_in_epoch: int = 0  # batches of `epoch` already consumed
    stats: EpochStats = field(default_factory=EpochStats)
    skipped_total: int = 0

    def current_lr(self) -> float:
        return self.warmup.lr(self.lr_fn(self.step))


def train_step(state: TrainState, x: torch.Tensor, y: torch.Tensor, options: StepOptions) -> dict:
    """One optimizer step on batch ``(x, y)``: x (B, 3, H, W) normalized, y (B,).

    Returns ``{"step", "loss", "correct", "seen", "lr", "skipped", "probe"?}`` (global over processes).
    """
    model, optimizer, precision = state.model, state.optimizer, state.precision
    if options.cudagraphs:
        # CUDA-graph replays reuse their output memory; the mark says one training iteration ended
        # here, which torch.compile would otherwise have to infer from the backward pass (e.g. with
        # micro-batches, several forward/backward pairs make one step).
        torch.compiler.cudagraph_mark_step_begin()
    lr = state.current_lr()
    set_lr(optimizer, lr)
    model.train()
    probe = ActivationProbe(model) if state.step in options.probe_steps else None
    optimizer.zero_grad(set_to_none=True)
    micro = options.micro_batch if options.micro_batch and options.micro_batch < len(y) else len(y)
    chunks = list(zip(x.split(micro), y.split(micro)))
    losses, corrects = [], []
    for i, (xc, yc) in enumerate(chunks):
        last = i == len(chunks) - 1
        try:
            # DDP all-reduces the gradients once, after the last pass.
            with (contextlib.nullcontext() if last else _no_sync(model)), precision.autocast():
                logits = model(xc)  # (b, num_classes)
                # mean over the whole batch: each pass's mean loss weighted by its share of images
                loss = state.criterion(logits, yc) * (len(yc) / len(y))
        finally:
            if probe is not None and i == 0:
                probe.close()  # the first pass stands for the step
        if options.on_loss is not None:
            loss = options.on_loss(state.step, loss)
        with contextlib.nullcontext() if last else _no_sync(model):
            (precision.scaler.scale(loss) if precision.scaler is not None else loss).backward()
        losses.append(loss.detach().float())
        hard = yc if yc.ndim == 1 else yc.argmax(dim=1)  # MixUp/CutMix soft targets: their dominant class
        corrects.append((logits.detach().argmax(dim=1) == hard).sum())
    loss = torch.stack(losses).sum()
    if precision.scaler is not None:
        precision.scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    # Total gradient norm (clipping with max_norm=inf only measures it): one number that is NaN/Inf
    # exactly when some gradient is.
    max_norm = options.grad_clip if options.grad_clip else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros((), device=x.device)
    correct = torch.stack(corrects).sum()
    # One host sync per step for everything the host needs to know.
    loss_value, norm_value, correct_value = torch.stack([loss.detach().float(), grad_norm.float(), correct.float()]).tolist()
    loss_sum, correct_sum, seen_sum, bad = distributed.all_reduce_sum(
        [loss_value * len(y), correct_value, float(len(y)), float(not math.isfinite(loss_value))], options.dist, x.device
    )
    bad_loss = bad > 0
    # With fp16 the GradScaler expects occasional overflowing gradients and skips those steps itself.
    bad_grad = precision.scaler is None and not math.isfinite(norm_value)
    record = {"step": state.step, "loss": loss_sum / seen_sum, "correct": int(correct_sum), "seen": int(seen_sum), "lr": lr, "skipped": False}
    if probe is not None:
        record["probe"] = {"grad_norm": norm_value, "grad_norms": grad_norms(model), "activations": probe.stats}
    if bad_loss or bad_grad:
        if options.nonfinite != "skip":
            raise NonFiniteStep(state.step, "loss" if bad_loss else "gradient")
        optimizer.zero_grad(set_to_none=True)
        record["skipped"] = True
        state.stats.skipped += 1
        state.skipped_total += 1
    else:
        if precision.scaler is not None:
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            optimizer.step()
        if state.lookahead is not None:
            state.lookahead.after_step(model)
        update_ema(state.ema, model)
        state.stats.add(record["loss"], record["correct"], record["seen"])
        state.warmup.update(state.step, record["correct"], record["seen"])
    state.step += 1
    state.step_in_epoch += 1
    return record


def _no_sync(model: nn.Module):
    """DDP's ``no_sync()`` (gradients stay local for this pass); a no-op for a plain module."""
    inner = getattr(model, "_orig_mod", model)  # under torch.compile
    no_sync = getattr(inner, "no_sync", None)
    return no_sync() if callable(no_sync) else contextlib.nullcontext()


def train_one_epoch(state: TrainState, batches, total_steps: int, options: StepOptions, after_step: Callable[[dict], bool | None]) -> dict:
    """Run steps over ``batches`` (this epoch, from ``state.step_in_epoch``) until they end or ``total_steps``.

    ``after_step(record)`` runs at every step boundary (logging, checkpoints, stop requests); a true
    return ends the epoch there (a budget's deadline).
    Returns the epoch's train metrics plus ``images_per_sec`` and ``epoch_time_s`` of this process's part.
    """
    start = time.perf_counter()
    seen_before = state.stats.seen
    for x, y in batches:
        if state.step >= total_steps:
            break
        record = train_step(state, x, y, options)
        if after_step(record):
            break
    elapsed = time.perf_counter() - start
    metrics = state.stats.metrics()
    metrics["images_per_sec"] = (state.stats.seen - seen_before) / max(elapsed, 1e-9)
    metrics["epoch_time_s"] = elapsed
    metrics["skipped_steps"] = state.stats.skipped
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, batches, precision: Precision) -> dict:
    """Cross-entropy and accuracy of ``model`` over ``batches`` of (x, y): ``{"loss", "acc", "n"}``."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in batches:
        with precision.autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == y).sum().item())
        seen += len(y)
    if seen == 0:
        return {"loss": float("nan"), "acc": float("nan"), "n": 0}
    return {"loss": loss_sum / seen, "acc": correct / seen, "n": seen}
