"""Candidate plans for a budgeted run, and the run length each one implies.

A plan is a set of dotted config overrides (``{"epochs": 6, "model.options.widths": [64, 256, 256]}``).
A recipe may carry a measured plan table per kind of machine under ``budget.plans`` (cheapest plan
first, best last). Without a recipe, a model with a built-in table (:mod:`resnetlab.budget.tables`)
gets that one; otherwise the candidates are the config itself shortened to fewer epochs.
Either way the chosen plan's learning-rate schedule is fitted to its length, so a 6-epoch plan of a
182-epoch recipe decays over 6 epochs instead of stopping before its first milestone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from resnetlab.budget.tables import MODEL_PLANS
from resnetlab.config import TrainConfig, build_config

# Epoch counts tried when a recipe has no plan table for this machine: dense where a few epochs
# change the accuracy most, sparse later; the recipe's own length always ends the list.
EPOCH_LADDER = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300)


@dataclass(frozen=True)
class Plan:
    name: str
    overrides: dict = field(default_factory=dict)


def hardware_class(device: torch.device, precision_dtype: torch.dtype | None) -> str:
    """Which plan table applies: a GPU, a CPU training in bf16 (AMX/AVX512-BF16), or an fp32 CPU."""
    if device.type == "cuda":
        return "gpu"
    return "bf16_cpu" if precision_dtype is torch.bfloat16 else "fp32_cpu"


def steps_per_epoch(n_train: int, batch_size: int, drop_last: bool | str = True) -> int:
    """Optimizer steps in one epoch (``drop_last`` as resolved by engine.small_data; "auto": dropped)."""
    return n_train // batch_size if drop_last is not False else -(-n_train // batch_size)


def recipe_epochs(config: TrainConfig, n_train: int) -> float:
    """The configured run length in epochs (fractional for a ``max_steps`` recipe)."""
    if config.max_steps is None:
        return float(config.epochs)
    return config.max_steps / max(steps_per_epoch(n_train, config.batch_size, config.drop_last), 1)


def candidates(config: TrainConfig, hardware: str, n_train: int, from_scratch: bool = True) -> list[Plan]:
    """The plans to choose from, cheapest first (where they come from: :func:`plan_source`)."""
    table = (config.budget.plans or {}).get(hardware)
    if table:
        return [Plan(_plan_name(entry), dict(entry)) for entry in table]
    builtin = _builtin_table(config, hardware, from_scratch)
    if builtin:
        return [Plan(_epochs_name(entry["epochs"]), dict(entry)) for entry in builtin]
    longest = recipe_epochs(config, n_train)
    shorter = [Plan(_epochs_name(e), {"epochs": e}) for e in EPOCH_LADDER if e < longest]
    return shorter + [Plan(f"the recipe's full length ({longest:.4g} epochs)", {})]


def plan_source(config: TrainConfig, hardware: str, from_scratch: bool = True) -> str:
    """Where :func:`candidates` takes the plans from, for the planner's printout and record."""
    if (config.budget.plans or {}).get(hardware):
        return f"{config.recipe or 'the config'}'s budget.plans.{hardware} table"
    if _builtin_table(config, hardware, from_scratch):
        return f"the built-in {config.model.name} table (resnetlab/budget/tables.py)"
    return f"{config.recipe or 'the built-in defaults'} shortened to fewer epochs"


def _builtin_table(config: TrainConfig, hardware: str, from_scratch: bool) -> list[dict] | None:
    # Only for a run from scratch without a recipe: a recipe (or a fine-tuning run) chose its schedule
    # and augmentation itself, which a built-in plan would replace.
    if config.recipe is not None or not from_scratch:
        return None
    return MODEL_PLANS.get(config.model.name, {}).get(hardware)


def _epochs_name(epochs: float) -> str:
    return f"{epochs:g} epoch{'s' if epochs != 1 else ''}"


def apply_plan(config: TrainConfig, plan: Plan, n_train: int) -> TrainConfig:
    """``config`` with the plan's overrides, the run length in epochs, and the schedule fitted to it."""
    overrides = dict(plan.overrides)
    if "epochs" in overrides:
        overrides.setdefault("max_steps", None)
    data = config.to_dict()
    new = build_config(data, overrides)
    _fit_schedule(new, config, n_train, explicit=set(overrides))
    return new


def _fit_schedule(new: TrainConfig, old: TrainConfig, n_train: int, explicit: set[str]) -> None:
    """Scale milestones, step size and warm-up by the change in run length (in the schedule's unit)."""
    sched = new.schedule
    if sched.unit == "steps":
        old_len = old.max_steps if old.max_steps is not None else old.epochs * steps_per_epoch(n_train, old.batch_size, old.drop_last)
        new_len = new.max_steps if new.max_steps is not None else new.epochs * steps_per_epoch(n_train, new.batch_size, new.drop_last)
    else:
        old_len, new_len = recipe_epochs(old, n_train), recipe_epochs(new, n_train)
    if not old_len or not new_len or old_len == new_len:
        return
    factor = new_len / old_len
    # Steps are whole; epochs may be fractional (a milestone at 2.5 epochs is a valid config).
    scale = (lambda v: max(int(round(v * factor)), 1)) if sched.unit == "steps" else (lambda v: round(v * factor, 4))
    if "schedule.milestones" not in explicit and sched.milestones:
        sched.milestones = [scale(m) for m in sched.milestones]
    if "schedule.step_size" not in explicit and sched.name == "step":
        sched.step_size = scale(sched.step_size)
    if "schedule.warmup" not in explicit and sched.warmup:
        sched.warmup = scale(sched.warmup)


def _plan_name(entry: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in entry.items())

