"""Lookahead weight averaging (Zhang et al. 2019), as the speed recipes use it (airbench).

Every ``steps`` optimizer steps the slow weights move a fraction ``alpha`` towards the fast
(trained) weights, and the fast weights are reset to them. Kept beside the optimizer rather than
wrapping it, like the EMA: the optimizer, schedule and GradScaler stay untouched, and the slow
weights travel in the checkpoint so resume stays exact.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from resnetlab.models.files import unwrap


class Lookahead:
    def __init__(self, model: nn.Module, steps: int, alpha: float):
        if steps < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"lookahead needs steps >= 1 and alpha in (0, 1]; got steps={steps}, alpha={alpha}")
        self.steps, self.alpha = steps, alpha
        self.count = 0
        self.slow = {name: p.detach().clone() for name, p in self._params(model)}

    @staticmethod
    def _params(model: nn.Module):
        return [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        self.count += 1
        if self.count % self.steps:
            return
        for name, fast in self._params(model):
            slow = self.slow[name]
            slow.lerp_(fast, self.alpha)
            fast.copy_(slow)

    def state_dict(self) -> dict:
        return {"count": self.count, "slow": {k: v.clone() for k, v in self.slow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        for name, value in state["slow"].items():
            self.slow[name].copy_(value)
