"""Exponential moving average of the weights (Polyak averaging), via torch's AveragedModel."""

from __future__ import annotations

import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnetlab.models.files import unwrap


def create_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An EMA of ``model``'s parameters and buffers (BN statistics), or None when decay is None."""
    if decay is None:
        return None
    raw = unwrap(model)
    ema = AveragedModel(raw, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.module.meta = getattr(raw, "meta", None)
    return ema


def update_ema(ema: AveragedModel | None, model: nn.Module) -> None:
    if ema is not None:
        ema.update_parameters(unwrap(model))
