"""Parameter and FLOP counts of registered models (the table of ``resnetlab models``).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one image at the model's
input size. It counts matrix products and convolutions only (BN, activations and pooling are
ignored) and reports FLOPs = 2 x multiply-accumulates; MACs here are FLOPs / 2. Models are built
on the ``meta`` device: shapes only, no memory and no arithmetic, so the whole zoo takes seconds.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from resnetlab.models.registry import create_model, get_model_entry, list_models


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_size: tuple[int, ...], batch_size: int = 1) -> int:
    """Forward FLOPs (2 x MACs of convs and matmuls) for a batch of ``input_size`` images.

    The input is created on the model's device; a model on the ``meta`` device costs no compute.
    """
    device = next(model.parameters()).device
    x = torch.empty((batch_size, *input_size), device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _drop_batchnorm(model: nn.Module) -> None:
    """Replace BN layers by identities: they keep shapes and cost no counted FLOPs, but BN is
    decomposed into many small ops on the meta device, which made counting the deep nets slow."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, nn.Identity())


def model_summary(name: str, num_classes: int = 10) -> dict:
    """One row: name, family, input size, parameters, forward MACs and FLOPs at the input size."""
    entry = get_model_entry(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    params = count_parameters(model)
    input_size = tuple(model.meta.input_size)
    _drop_batchnorm(model)
    flops = count_flops(model, input_size)
    return {
        "name": name,
        "family": entry.family,
        "input_size": list(input_size),
        "params": params,
        "macs": flops // 2,
        "flops": flops,
        "description": entry.description,
    }


FAMILY_ORDER = ("cnn", "plain-cifar", "resnet-cifar", "preact-resnet", "wide-resnet", "resnet", "fast")


def _sort_key(name: str) -> tuple:
    family = get_model_entry(name).family
    rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
    # natural order: resnet20 before resnet110
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)
    return (rank, family, parts)


def model_table(pattern: str = "*", num_classes: int = 10) -> list[dict]:
    """Rows of :func:`model_summary` for every registered model matching ``pattern``.

    A pattern without shell wildcards matches as a substring (``resnet5`` finds resnet50, resnet56).
    Rows are ordered by family, then by depth.
    """
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    names = sorted(list_models(pattern), key=_sort_key)
    return [model_summary(name, num_classes) for name in names]
