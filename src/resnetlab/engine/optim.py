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


def param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool, bias_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters split into decay / no-decay groups (1-D tensors: BN weights and biases).

    ``bias_lr_scale`` multiplies the no-decay group's learning rate: airbench trains BN shifts 64x
    faster than the weights (a shift's gradient is tiny next to its useful range).
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not no_decay_bn_bias:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    decay = [p for _, p in params if p.ndim > 1]
    no_decay = [p for _, p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": bias_lr_scale}]
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
    if cfg.name == "muon":
        return _build_muon(groups, cfg)
    builders = {
        "sgd": lambda: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0),
        "adam": lambda: torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps),
        "adamw": lambda: torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps),
    }
    if cfg.name not in builders:
        raise ConfigError(f"config optim.name={cfg.name!r}: expected one of {', '.join(builders)}, muon")
    return builders[cfg.name]()


def _build_muon(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Muon on the conv filters (4-D), Nesterov SGD on everything else, as airbench94_muon splits them.

    Each incoming group is split in two; the filter half gets ``lr_scale * muon_lr / lr`` so one
    schedule drives both learning rates.
    """
    from resnetlab.engine.muon import Muon

    split = []
    for group in groups:
        filters = [p for p in group["params"] if p.ndim == 4]
        others = [p for p in group["params"] if p.ndim != 4]
        rest = {k: v for k, v in group.items() if k != "params"}
        if filters:
            scale = group["lr_scale"] * cfg.muon_lr / cfg.lr
            split.append({**rest, "params": filters, "muon": True, "lr_scale": scale, "lr": cfg.lr * scale,
                          "momentum": cfg.muon_momentum, "nesterov": True})
        if others:
            split.append({**rest, "params": others, "muon": False, "momentum": cfg.momentum, "nesterov": cfg.nesterov})
    return Muon(split, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, ns_steps=cfg.muon_ns_steps,
                normalize=cfg.muon_normalize)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
