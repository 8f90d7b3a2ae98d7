"""Optimizers and parameter groups.

Weight decay on BatchNorm scales and biases only shrinks them without regularizing the function
(the network is invariant to the BN scale; Goyal et al. 2017 and the timm/torchvision reference
scripts exclude them), so ``no_decay_bn_bias`` puts every 1-D parameter in a no-decay group.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from resnetlab.config import OptimConfig
from resnetlab.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """Trainable parameters split into decay / no-decay groups (1-D tensors: BN weights and biases)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not no_decay_bn_bias:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    decay = [p for _, p in params if p.ndim > 1]
    no_decay = [p for _, p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` over ``groups``.

    Each group gets ``lr_scale`` (its ``lr`` relative to ``cfg.lr``, 1 when unset): the schedule
    sets ``group["lr"] = lr_at(step) * group["lr_scale"]`` so discriminative learning rates from
    fine-tuning follow the same schedule.
    """
    groups = [dict(g) for g in groups]
    for group in groups:
        group.setdefault("lr_scale", group["lr"] / cfg.lr if "lr" in group else 1.0)
        group["lr"] = cfg.lr * group["lr_scale"]
        group.setdefault("weight_decay", cfg.weight_decay)
    builders = {
        "sgd": lambda: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0),
        "adam": lambda: torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps),
        "adamw": lambda: torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps),
    }
    if cfg.name not in builders:
        raise ConfigError(f"config optim.name={cfg.name!r}: expected one of {', '.join(builders)}")
    return builders[cfg.name]()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
