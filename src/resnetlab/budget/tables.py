"""Built-in plan tables per model, for a budgeted run from scratch without a recipe.

``resnetlab train --model resnet20 --budget 20m`` (issue 20) starts from the built-in defaults:
10 epochs, no augmentation, a constant learning rate. Shortening that (the epoch ladder) could never
train longer than 10 epochs, nor well. A model listed here instead gets a table of whole training
recipes of increasing length, so the planner picks the longest that fits the budget. A recipe's own
``budget.plans`` always wins: a recipe chose its schedule and augmentation itself.
"""

from __future__ import annotations

# Run lengths in epochs tried for ResNet-20: dense where a few epochs change the accuracy most,
# sparse later, ending with the paper's 64k iterations of 128 on 45k images (182 epochs).
# recipes/resnet20-he2016.yaml's table holds the same plans (tests/test_budget.py checks).
RESNET20_EPOCHS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 21, 25, 30, 40, 50, 60, 80, 100, 120, 150, 182)


def _resnet20_plan(epochs: int) -> dict:
    """He et al. 2016, Sec. 4.2, fitted to ``epochs``: pad 4 (zeros), random crop, flip; SGD momentum
    0.9, decay 1e-4, batch 128, lr 0.1 (the defaults), annealed by a cosine to 0 at the run's end.
    Cosine, not the paper's lr drops at 1/2 and 3/4: at equal time on short runs it scored ~4 points
    higher on the validation split (BENCHMARKS.md, "Budgeted runs", ResNet-20)."""
    return {"epochs": epochs, "augment.crop_padding": 4, "augment.pad_mode": "zeros", "augment.flip": True,
            "schedule.name": "cosine", "schedule.min_lr": 0.0}


_RESNET20 = [_resnet20_plan(e) for e in RESNET20_EPOCHS]

# model name -> machine class -> plans, cheapest first (the shape of a recipe's budget.plans).
# The lengths are the same on every machine: the probe, not the table, decides which fits.
MODEL_PLANS: dict[str, dict[str, list[dict]]] = {
    "resnet20": {"fp32_cpu": _RESNET20, "bf16_cpu": _RESNET20, "gpu": _RESNET20},
}
