"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", sec. 3.3).

Train from the starting weights for up to ``steps`` steps while the learning rate grows
exponentially from ``start_lr`` to ``end_lr``; record each step's loss and its exponentially
smoothed, bias-corrected value (as in Adam's moment estimates); stop once the smoothed loss exceeds
``diverge`` times its minimum, or a loss/gradient is non-finite. The model, optimizer and data
pipeline are the training engine's own (``engine/optim.py``, ``engine/loop.py``, ``DeviceLoader``,
small-data batching), so the rate found is for the batch and augmentation training will use. Nothing
is saved but the curve: the weights are thrown away.

Suggestion (``method``): ``min/10``, a tenth of the lr at the smoothed loss's minimum after the
sweep's first tenth (never below the sweep's start). ``lr_steepest`` is also reported: where the smoothed loss falls fastest against
log(lr), measured over a tenth of the sweep before the minimum; it is not the suggestion because the
exponential average lags (on the tiny runs tried it pointed at the noisy start or at the minimum).
Head and backbone: from scratch both are the suggestion. Fine-tuning sweeps the whole pretrained
network at one lr; the head gets the suggestion and the backbone a tenth of it (discriminative
fine-tuning, Howard & Ruder 2018, ULMFiT: lower layers want smaller steps), or nothing with the
linear-probe strategy whose backbone is frozen.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from resnetlab.config import TrainConfig
from resnetlab.engine.loop import NonFiniteStep, StepOptions, TrainState, train_step
from resnetlab.engine.optim import build_optimizer, param_groups as default_param_groups
from resnetlab.engine.precision import resolve_precision
from resnetlab.engine.schedule import TrainErrorWarmup
from resnetlab.engine.small_data import announce, resolve_batching
from resnetlab.errors import ConfigError

BACKBONE_FACTOR = 0.1  # fine-tuning: backbone lr = head lr x this


@dataclass
class RangeTestOptions:
    start_lr: float = 1e-6
    end_lr: float = 10.0
    steps: int = 200  # steps of the sweep when it does not diverge first
    smoothing: float = 0.98  # weight of the past in the smoothed loss (0: none)
    diverge: float = 4.0  # stop when the smoothed loss exceeds this times its minimum

    def validate(self) -> None:
        if not 0 < self.start_lr < self.end_lr:
            raise ConfigError(f"--start-lr {self.start_lr:g} and --end-lr {self.end_lr:g}: need 0 < start < end")
        if self.steps < 5:
            raise ConfigError(f"--steps {self.steps}: the sweep needs at least 5 steps")
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"--smoothing {self.smoothing:g}: must be in [0, 1)")
        if not self.diverge > 1:
            raise ConfigError(f"--diverge {self.diverge:g}: must be > 1 (a multiple of the lowest smoothed loss)")


def sweep_lr(step: int, options: RangeTestOptions) -> float:
    """The exponential sweep: start_lr at step 0, end_lr at step ``steps - 1``."""
    return options.start_lr * (options.end_lr / options.start_lr) ** (step / (options.steps - 1))


def range_test(config: TrainConfig, model: nn.Module, splits, options: RangeTestOptions, *, param_groups=None,
               device: torch.device | str = "cpu", finetuning: str | None = None) -> dict:
    """Run the sweep on ``model`` (a copy is trained; ``model`` is left as it was) and return the record.

    ``finetuning``: the fine-tuning strategy when ``model`` is pretrained (``linear-probe``, ``full``,
    ``gradual``), None from scratch. ``param_groups`` as in ``engine.train``. Returns a dict with
    ``points`` ([{step, lr, loss, smoothed}]), ``stopped`` (why), ``suggestion`` and the settings.
    """
    from resnetlab.data import DeviceLoader

    options.validate()
    config = copy.deepcopy(config)
    device = torch.device(device)
    if config.small_data == "batch+lr":
        config.small_data = "batch"  # the batch as training would adapt it; the lr is what the sweep varies
    announce(resolve_batching(config, len(splits.train), say_lr=False))
    model = model.to(device)
    state_before = copy.deepcopy(model.state_dict())
    size = config.data.image_size
    loader = DeviceLoader(splits.train, config.batch_size, train=True, augment=config.augment, device=device, seed=config.seed,
                          mean=model.meta.mean, std=model.meta.std, drop_last=config.drop_last,
                          resize_to=(size, size) if size else None)
    groups = param_groups if param_groups is not None else default_param_groups(
        model, config.optim.weight_decay, config.optim.no_decay_bn_bias, config.optim.bias_lr_scale)
    precision = resolve_precision(config.precision, device)
    state = TrainState(
        model=model, optimizer=build_optimizer(groups, config.optim), criterion=nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing),
        precision=precision, lr_fn=lambda step: sweep_lr(step, options), warmup=TrainErrorWarmup(None, 0.0, 1),
    )
    points: list[dict] = []
    average, best, stopped = 0.0, math.inf, "end of sweep"
    try:
        epoch = 0
        while state.step < options.steps and stopped == "end of sweep":
            for x, y in loader.epoch(epoch):
                record = train_step(state, x, y, StepOptions(grad_clip=config.optim.grad_clip))
                average = options.smoothing * average + (1 - options.smoothing) * record["loss"]
                smoothed = average / (1 - options.smoothing ** (record["step"] + 1))  # bias-corrected
                points.append({"step": record["step"], "lr": record["lr"], "loss": record["loss"], "smoothed": smoothed})
                if record["step"] >= _settling(options.steps):  # the first steps' average rests on a few batches
                    best = min(best, smoothed)
                if not math.isfinite(smoothed) or smoothed > options.diverge * best:
                    stopped = f"diverged at lr {record['lr']:.3g} (smoothed loss {smoothed:.3g} > {options.diverge:g} x minimum {best:.3g})"
                    break
                if state.step >= options.steps:
                    break
            epoch += 1
    except NonFiniteStep as exc:
        stopped = f"diverged at lr {sweep_lr(exc.step, options):.3g} (non-finite {exc.what})"
    finally:
        model.load_state_dict(state_before)  # the sweep's weights are never kept
    suggestion = suggest(points, finetuning)
    return {
        "model": model.meta.name,
        "data": config.data.spec,
        "batch_size": config.batch_size,
        "train_images": len(splits.train),
        "optimizer": config.optim.name,
        "finetuning": finetuning,
        "sweep": {"start_lr": options.start_lr, "end_lr": options.end_lr, "steps": options.steps,
                  "smoothing": options.smoothing, "diverge": options.diverge},
        "steps_run": len(points),
        "stopped": stopped,
        "suggestion": suggestion,
        "points": points,
    }


def suggest(points: list[dict], finetuning: str | None = None) -> dict:
    """The suggested rates from a sweep's points (see the module docstring for the rules)."""
    if len(points) < 3:
        raise ConfigError(f"lr-find: the sweep stopped after {len(points)} step(s), too few to suggest a rate; "
                          "lower --start-lr or raise --diverge")
    lrs = np.array([p["lr"] for p in points])
    smoothed = np.array([p["smoothed"] for p in points])
    # The first tenth of the sweep is left out: there the bias-corrected average rests on a few
    # batches, and one lucky batch at an lr too small to change anything would pass for the minimum.
    skip = min(_settling(len(points)), len(points) - 1)
    lowest = skip + int(np.nanargmin(smoothed[skip:]))
    # min/10 is the rule used: the exponential average lags the raw loss, so the slope of the smoothed
    # curve point by point is noisy early (a few steps carry the bias-corrected average) and late
    # (the lag); the lr a tenth below the lowest loss is safely on the descending side.
    lr, method = max(float(lrs[lowest] / 10), float(lrs[0])), "min/10"
    steepest = None
    span = max(2, len(points) // 10)  # slope over a tenth of the sweep, after its first tenth
    if lowest - span >= skip + 1:
        starts = np.arange(skip, lowest - span + 1)
        slopes = (smoothed[starts + span] - smoothed[starts]) / np.log10(lrs[starts + span] / lrs[starts])
        steepest = float(lrs[starts[int(np.argmin(slopes))] + span // 2])
    backbone = None if finetuning == "linear-probe" else (lr * BACKBONE_FACTOR if finetuning else lr)
    return {"lr": lr, "method": method, "lr_min_loss": float(lrs[lowest]), "lr_steepest": steepest,
            "head_lr": lr, "backbone_lr": backbone,
            "backbone_rule": ("frozen (linear probe)" if finetuning == "linear-probe"
                              else f"head x {BACKBONE_FACTOR:g}" if finetuning else "same as the head (from scratch)")}


def _settling(steps: int) -> int:
    """Steps at the start of a sweep whose smoothed loss is not trusted as a minimum: a tenth, at least 2."""
    return max(2, steps // 10)


def plot(result: dict) -> bytes:
    """PNG of loss and smoothed loss against lr (log axis), the suggestion marked."""
    from resnetlab.utils.figures import STYLE, plt, png_bytes

    lrs = [p["lr"] for p in result["points"]]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.plot(lrs, [p["loss"] for p in result["points"]], color="#cbd5e1", lw=1, label="loss per step")
        ax.plot(lrs, [p["smoothed"] for p in result["points"]], color="#2563eb", lw=2, label="smoothed loss")
        s = result["suggestion"]
        ax.axvline(s["lr"], color="#dc2626", ls="--", label=f"suggested lr {s['lr']:.2g} ({s['method']})")
        if s["backbone_lr"] is not None and s["backbone_lr"] != s["lr"]:
            ax.axvline(s["backbone_lr"], color="#f59e0b", ls=":", label=f"backbone lr {s['backbone_lr']:.2g}")
        ax.set_xscale("log")
        finite = [p["smoothed"] for p in result["points"] if math.isfinite(p["smoothed"])]
        if finite:
            ax.set_ylim(min(finite) * 0.9, min(max(finite), 4 * min(finite)) * 1.1)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(f"LR range test: {result['model']}, batch {result['batch_size']}")
        ax.legend(loc="upper left")
        return png_bytes(fig)
