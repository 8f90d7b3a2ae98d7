"""Muon: momentum SGD whose update for each weight matrix is orthogonalized (K. Jordan et al. 2024).

Hand-written rather than ``torch.optim.Muon`` because that one accepts only 2-D parameters (and
exists only from torch 2.9), while the speed recipes apply Muon to 4-D conv filters, flattened to
(out_channels, in_channels * kh * kw), as airbench94_muon does. Parameter groups with
``muon=False`` (BN shifts, biases, the linear head) get plain SGD with Nesterov momentum in the
same optimizer, so the schedule, checkpoints and resume treat it as one optimizer.
"""

from __future__ import annotations

import torch

# Coefficients of the quintic Newton-Schulz iteration that pushes singular values towards 1
# (Jordan 2024, "Muon: An optimizer for hidden layers in neural networks").
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T of ``matrix`` = U S V^T (rows x cols), by Newton-Schulz iteration."""
    a, b, c = _NS_COEFFICIENTS
    x = matrix.float() / (matrix.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1
    transposed = x.shape[0] > x.shape[1]
    if transposed:  # iterate on the smaller Gram matrix
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if transposed else x).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for groups with ``muon=True`` (parameters of >= 2 dims), Nesterov SGD for the others.

    Per group: ``lr``, ``momentum``, ``nesterov``, ``weight_decay`` (decoupled for Muon groups,
    coupled L2 for SGD groups as in ``torch.optim.SGD``), ``ns_steps``, ``normalize`` (Muon groups:
    rescale each weight to Frobenius norm sqrt(rows) before its step, as airbench94_muon does; the
    weight decay is then moot and skipped).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0,
                 ns_steps: int = 5, normalize: bool = False):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, ns_steps=ns_steps,
                        normalize=normalize, muon=True)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"]:
                flat = [tuple(p.shape) for p in group["params"] if p.ndim < 2]
                if flat:
                    raise ValueError(f"Muon groups take parameters of >= 2 dimensions; got shapes {flat}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if wd and not group["muon"]:
                    grad = grad.add(p, alpha=wd)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(grad)
                update = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                if group["muon"]:
                    rows = p.shape[0]
                    cols = p[0].numel()
                    update = orthogonalize(update.reshape(rows, cols), group["ns_steps"]).view_as(p)
                    # Scaled so the update's RMS does not depend on the matrix's aspect ratio.
                    update = update * max(1.0, rows / cols) ** 0.5
                    if group.get("normalize", False):
                        p.mul_(rows**0.5 / p.norm().clamp_min(1e-12))
                    elif wd:
                        p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr)
        return loss
