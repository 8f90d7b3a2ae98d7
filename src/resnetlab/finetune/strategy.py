"""Which parameters train, at what learning rate, and when: the fine-tuning strategies.

A model is split into *stages* from the input up: ``stem`` (conv1, bn1), the residual stages
(``layer1``...), and ``head`` (the classifier). A strategy says how many stages, counted from the
head down, train in each epoch:

- ``linear-probe``: the head only, for the whole run (the backbone is a fixed feature extractor:
  its weights and BatchNorm statistics stay bit-identical);
- ``full``: everything from the first epoch;
- ``gradual``: the head first, then one more stage every ``unfreeze_every`` epochs, from the top
  down (gradual unfreezing, Howard & Ruder 2018, ULMFiT Sec. 3.2): the new head is fitted before
  its random gradients reach the pretrained features.

Learning rates are discriminative (ULMFiT Sec. 3.2; layer-wise decay as in BEiT, Bao et al. 2021):
the head trains at ``lr_head``, the top backbone stage at ``lr_backbone`` and each stage below it at
``layer_decay`` times the stage above. A frozen stage has its BatchNorm in eval mode (statistics
fixed); ``freeze_bn`` fixes the statistics of every stage (small batches or tiny data sets, where
batch statistics are noisy; the pretrained ones are better).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from resnetlab.errors import ConfigError

STRATEGIES = ("linear-probe", "full", "gradual")


@dataclass
class Stage:
    name: str
    modules: list[nn.Module]

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]

    def batchnorms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for module in self.modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def model_stages(model: nn.Module) -> list[Stage]:
    """The model's stages from input to output; the last is ``head`` (``meta.classifier``).

    Top-level children in order: each container module is a stage (a Sequential of Sequentials,
    like the pre-activation nets' ``layers``, is split into them); single layers before the first
    stage form ``stem``; single layers between the last stage and the head (a final BN) join the
    last stage.
    """
    head_name = model.meta.classifier.split(".")[0]
    stages: list[Stage] = []
    loose: list[tuple[str, nn.Module]] = []
    head: Stage | None = None
    for name, child in model.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if name == head_name:
            head = Stage("head", [child])
        elif any(True for _ in child.children()):  # a container (stage); leaves are conv/bn/linear
            if loose:
                stages.append(Stage("stem" if not stages else "+".join(n for n, _ in loose), [m for _, m in loose]))
                loose = []
            inner = list(child.named_children())
            if inner and all(isinstance(m, nn.Sequential) for _, m in inner):
                stages.extend(Stage(f"{name}.{n}", [m]) for n, m in inner)
            else:
                stages.append(Stage(name, [child]))
        else:
            loose.append((name, child))
    if loose:
        if stages:
            stages[-1].modules.extend(m for _, m in loose)
        else:
            stages.append(Stage("stem", [m for _, m in loose]))
    if head is None:
        raise ConfigError(f"model {model.meta.name}: classifier {model.meta.classifier!r} is not a top-level module")
    return stages + [head]


@dataclass
class StrategyConfig:
    """How to fine-tune; the learning rates are absolute (``None``: the optimizer's base lr)."""

    strategy: str = "full"  # linear-probe | full | gradual
    lr_head: float | None = None
    lr_backbone: float | None = None
    layer_decay: float | None = None  # e.g. 0.7: each stage below the top trains at 0.7x the one above
    unfreeze_every: int = 1  # gradual: epochs between unfreezing one more stage
    freeze_bn: bool = False  # keep every BatchNorm's running statistics fixed

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}")
        for key in ("lr_head", "lr_backbone"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"--{key.replace('_', '-')} {value}: must be > 0")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"--layer-decay {self.layer_decay}: must be in (0, 1]")
        if self.unfreeze_every < 1:
            raise ConfigError(f"--unfreeze-every {self.unfreeze_every}: must be >= 1")


class FineTuneSchedule:
    """Param groups per stage plus the per-epoch freezing, for ``engine.train``.

    Freezing sets a stage's ``lr_scale`` to 0 and, unless ``keep_grads``, ``requires_grad`` to
    False (no backward through frozen stages). Under DDP a stage that unfreezes later must keep
    ``requires_grad`` (DDP registers its gradient hooks once, at wrapping time), so ``keep_grads``
    freezes by learning rate alone.
    """

    def __init__(self, model: nn.Module, config: StrategyConfig, base_lr: float, weight_decay: float,
                 no_decay_bn_bias: bool = False, keep_grads: bool = False):
        config.validate()
        self.config = config
        self.stages = model_stages(model)
        self.keep_grads = keep_grads and config.strategy == "gradual"
        self.scales = self._lr_scales(base_lr)
        self.groups = self._param_groups(weight_decay, no_decay_bn_bias)
        _install_bn_freeze_hook(model)

    # -- learning rates
    def _lr_scales(self, base_lr: float) -> dict[str, float]:
        cfg = self.config
        scales = {"head": (cfg.lr_head or base_lr) / base_lr}
        backbone = (cfg.lr_backbone or base_lr) / base_lr
        decay = cfg.layer_decay or 1.0
        for depth, stage in enumerate(reversed(self.stages[:-1])):  # depth 0: the stage under the head
            scales[stage.name] = backbone * decay**depth
        return scales

    def _param_groups(self, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
        groups = []
        # Head first: the engine logs param_groups[0]'s lr, and the head is never frozen.
        for stage in reversed(self.stages):
            params = stage.parameters()
            split = [(params, weight_decay)]
            if no_decay_bn_bias:  # 1-D tensors are BN scales/shifts and biases (see engine.optim)
                split = [([p for p in params if p.ndim > 1], weight_decay), ([p for p in params if p.ndim <= 1], 0.0)]
            for chunk, decay in split:
                if chunk:
                    scale = self.scales[stage.name]
                    groups.append({"params": chunk, "weight_decay": decay, "lr_scale": scale, "stage": stage.name, "stage_lr_scale": scale})
        return groups

    # -- freezing
    def trainable_stages(self, epoch: int) -> int:
        """How many stages, counted from the head, train in ``epoch`` (0-based)."""
        n = len(self.stages)
        if self.config.strategy == "full":
            return n
        if self.config.strategy == "linear-probe":
            return 1
        return min(n, 1 + epoch // self.config.unfreeze_every)

    def apply(self, epoch: int, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Freeze/unfreeze for ``epoch``; the ``on_epoch_start`` hook of ``engine.train``."""
        k = self.trainable_stages(epoch)
        for index, stage in enumerate(reversed(self.stages)):
            trainable = index < k
            if not self.keep_grads:
                for p in stage.parameters():
                    p.requires_grad_(trainable)
            for bn in stage.batchnorms():  # (re)hooked here: SyncBatchNorm conversion makes new modules
                _install_bn_freeze_hook(bn)
                bn.finetune_frozen_stats = self.config.freeze_bn or not trainable
            if optimizer is not None:
                for group in optimizer.param_groups:
                    if group.get("stage") == stage.name:
                        group["lr_scale"] = group["stage_lr_scale"] if trainable else 0.0

    def unfreeze_epochs(self, epochs: int) -> list[tuple[int, list[str]]]:
        """``[(epoch, [stages unfrozen then])]`` for the plan printed at the start."""
        plan, previous = [], 0
        for epoch in range(max(epochs, 1)):
            k = self.trainable_stages(epoch)
            if k != previous:
                plan.append((epoch, [s.name for s in reversed(self.stages)][previous:k]))
                previous = k
        return plan

    def describe(self) -> dict:
        return {
            **{k: v for k, v in vars(self.config).items()},
            "stages": [s.name for s in self.stages],
            "lr_scale": {k: _round(v) for k, v in self.scales.items()},
        }


def _install_bn_freeze_hook(model: nn.Module) -> None:
    """BatchNorms flagged ``finetune_frozen_stats`` run in eval mode even inside ``model.train()``.

    The engine calls ``model.train()`` every step, so the flag is enforced at each forward by a
    pre-hook rather than by calling ``.eval()`` once. Hooks are not part of the state dict: saved
    models are plain.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not getattr(module, "_finetune_hooked", False):
            module.register_forward_pre_hook(_bn_pre_hook)
            module._finetune_hooked = True


def _bn_pre_hook(module: nn.Module, inputs):
    if getattr(module, "finetune_frozen_stats", False):
        module.training = False


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value
