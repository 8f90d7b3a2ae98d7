"""Cheap per-layer diagnostics at chosen steps: gradient norms and activation statistics.

Only the steps listed in ``log_grad_norms`` pay for it: forward hooks are attached for that one
step and removed afterwards. Records go to ``grad_norms.jsonl`` (one JSON object per step).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from resnetlab.models.files import unwrap


class ActivationProbe:
    """Mean, std and fraction of zeros of every parametrized leaf module's output for one forward."""

    def __init__(self, model: nn.Module):
        self.stats: dict[str, dict] = {}
        self._handles = []
        for name, module in unwrap(model).named_modules():
            if name and not list(module.children()) and any(True for _ in module.parameters(recurse=False)):
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if torch.is_tensor(output):
                out = output.detach().float()
                self.stats[name] = {"mean": out.mean().item(), "std": out.std().item(), "zero_frac": (out == 0).float().mean().item()}

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of each parameter's gradient (after backward, before the optimizer step)."""
    return {name: p.grad.detach().float().norm().item() for name, p in unwrap(model).named_parameters() if p.grad is not None}
