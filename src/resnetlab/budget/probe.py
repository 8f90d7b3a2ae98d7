"""Measure, on this machine, what one plan's run costs: seconds per training step at each image size,
per evaluated image, per checkpoint, and the fixed set-up and report costs.

The probe drives the engine's own step (``engine.loop.train_step``) on real batches of the run's
data, with the run's model, optimizer, precision, memory format and micro-batching, so the figures
include everything a step of the real run does. A few steps per size are timed after one warm-up
step (the first allocates memory and picks kernels); the median is used.
"""

from __future__ import annotations

import copy
import io
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from resnetlab.config import TrainConfig
from resnetlab.data import DeviceLoader
from resnetlab.engine.loop import StepOptions, TrainState, evaluate, train_step
from resnetlab.engine.optim import build_optimizer, param_groups
from resnetlab.engine.precision import Precision, resolve_channels_last
from resnetlab.engine.schedule import TrainErrorWarmup
from resnetlab.models.registry import create_model

TIMED_STEPS = 2
SLOW_STEP_S = 2.0


@dataclass
class Costs:
    """Seconds measured for one model variant (model, options, batch, precision)."""

    setup_s: float  # model build, data-dependent init, loaders
    step_s: dict[int, float] = field(default_factory=dict)  # training step at image side -> seconds
    eval_image_s: float = 0.0  # one image of a forward-only pass
    checkpoint_s: float = 0.0  # one checkpoint written
    report_s: float = 0.0  # the final report's fixed part (plots, files)
    probe_s: float = 0.0  # what measuring all this took

    def to_dict(self) -> dict:
        return {"setup_s": round(self.setup_s, 3), "step_s": {str(k): round(v, 4) for k, v in self.step_s.items()},
                "eval_image_s": round(self.eval_image_s, 7), "checkpoint_s": round(self.checkpoint_s, 4),
                "report_s": round(self.report_s, 3), "probe_s": round(self.probe_s, 2)}


def variant_key(config: TrainConfig) -> str:
    """What decides a step's cost; plans sharing it share one probe."""
    return repr((config.model.name, sorted(config.model.options.items()), config.batch_size, config.micro_batch,
                 config.precision, config.model.channels_last, config.eval_batch_size))


def measure(config: TrainConfig, splits, sides: list[int], device: torch.device, precision: Precision,
            final_report=None, model: nn.Module | None = None) -> Costs:
    """Time one model variant on ``device``: a training step at each side in ``sides``, evaluation, checkpoints.

    ``model``: the run's own model (fine-tuning), timed on a copy with every parameter trainable, the
    most expensive state a gradual unfreezing reaches; default: ``config.model`` built fresh.
    """
    started = time.perf_counter()
    train_set = splits.train
    channels_last = resolve_channels_last(config.model.channels_last, device)
    if model is not None:
        model = copy.deepcopy(model).requires_grad_(True)
    else:
        model = create_model(config.model.name, num_classes=train_set.num_classes, **config.model.options)
        model.meta.mean = tuple(float(v) for v in train_set.mean)
        model.meta.std = tuple(float(v) for v in train_set.std)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "init_from_data") and len(train_set):
        first = DeviceLoader(train_set.subset(torch.arange(min(len(train_set), 5000))), min(len(train_set), 5000), train=False,
                             device=device, channels_last=channels_last)
        model.init_from_data(next(iter(first.epoch(0)))[0])
    full_loader = DeviceLoader(train_set, config.batch_size, train=True, augment=config.augment, device=device,
                               seed=config.seed, channels_last=channels_last)
    del full_loader  # built only to time it: the real run builds the same one
    setup_s = time.perf_counter() - started

    batch = train_set.subset(torch.arange(min(len(train_set), config.batch_size)))
    optimizer = build_optimizer(param_groups(model, config.optim.weight_decay, config.optim.no_decay_bn_bias,
                                             config.optim.bias_lr_scale), config.optim)
    state = TrainState(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), precision=precision,
                       lr_fn=lambda step: config.optim.lr * 1e-3,  # the weights are thrown away; keep them finite
                       warmup=TrainErrorWarmup(None, 0.0, 1))
    options = StepOptions(micro_batch=config.micro_batch, nonfinite="skip")
    step_s = {}
    for side in sorted(set(sides)):
        augment = copy.deepcopy(config.augment)
        augment.epoch_sizes = [side]
        loader = DeviceLoader(batch, len(batch), train=True, augment=augment, device=device, seed=config.seed,
                              channels_last=channels_last, resize_to=(side, side))
        x, y = next(iter(loader.epoch(0)))
        tick = time.perf_counter()
        train_step(state, x, y, options)  # the first step allocates memory and selects kernels: not timed
        # Slow steps (a wide net on an fp32 CPU) are timed once: their noise is small next to their length,
        # and the probe's own time counts against the budget.
        timed = 1 if time.perf_counter() - tick > SLOW_STEP_S else TIMED_STEPS
        times = []
        for _ in range(timed):
            tick = time.perf_counter()
            train_step(state, x, y, options)
            times.append(time.perf_counter() - tick)
        # A step of the real run is a full batch; a probe batch is smaller only on tiny data.
        step_s[side] = statistics.median(times) * config.batch_size / len(batch)

    eval_image_s = 0.0
    val = splits.val if splits.val is not None and len(splits.val) else splits.train
    sample = val.subset(torch.arange(min(len(val), 2 * config.eval_batch_size)))
    loader = DeviceLoader(sample, config.eval_batch_size, train=False, device=device, channels_last=channels_last)
    evaluate(model, loader.epoch(0), precision)  # warm-up
    tick = time.perf_counter()
    evaluate(model, loader.epoch(0), precision)
    eval_image_s = (time.perf_counter() - tick) / len(sample)

    tick = time.perf_counter()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, io.BytesIO())
    checkpoint_s = time.perf_counter() - tick

    report_s = 0.0
    if final_report is not None and config.eval_report:
        small = val.subset(torch.arange(min(len(val), 64)))
        with tempfile.TemporaryDirectory() as out:
            tick = time.perf_counter()
            final_report(model, small, out, device=str(device), batch_size=config.eval_batch_size, tta=False,
                         context={"run": "budget-probe", "split": "val"})
            report_s = time.perf_counter() - tick
    return Costs(setup_s=setup_s, step_s=step_s, eval_image_s=eval_image_s, checkpoint_s=checkpoint_s, report_s=report_s,
                 probe_s=time.perf_counter() - started)
