"""``plan_run``: choose the best plan that fits a wall-clock budget on this machine.

The budget counts from the moment the command started (data loading and this probe included) to
the end of the final evaluation. Each candidate plan's time is predicted from the probe's
measurements (:mod:`resnetlab.budget.probe`); the best plan whose prediction fits ``SAFETY`` of the
time left is chosen. While training, a deadline guard stops the run early, keeping its best
weights, should the prediction still prove short (see ``train_deadline_s`` in the record).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from resnetlab.budget.duration import format_duration
from resnetlab.budget.plans import Plan, apply_plan, candidates, hardware_class, plan_source, steps_per_epoch
from resnetlab.budget.probe import Costs, measure, variant_key
from resnetlab.config import TrainConfig
from resnetlab.errors import ConfigError

# Share of the time left that a plan may be predicted to use. The rest absorbs the probe's
# extrapolation error (timing noise, a slower epoch) so the run ends inside its budget.
SAFETY = 0.9


class BudgetError(ConfigError):
    """Even the smallest plan cannot finish within the budget."""


def predict_seconds(config: TrainConfig, costs: Costs, n_train: int, n_val: int, n_final: int, tta_views: int) -> dict:
    """Predicted seconds of each phase of ``config``'s run, and their total."""
    spe = steps_per_epoch(n_train, config.batch_size, config.drop_last)
    total_steps = config.max_steps if config.max_steps is not None else config.epochs * spe
    epochs = -(-total_steps // max(spe, 1))
    full_side = config.data.image_size or None
    train_s, evals = 0.0, 0
    for epoch in range(epochs):
        steps = min(spe, total_steps - epoch * spe)
        side = config.augment.size_at(epoch) or full_side or max(costs.step_s)
        train_s += steps * costs.step_s[side]
        if (epoch + 1) % config.eval_every == 0 or epoch == epochs - 1:
            evals += 1
    eval_s = evals * n_val * costs.eval_image_s
    checkpoint_s = 2 * epochs * costs.checkpoint_s  # last and (at most) best each epoch
    final_s = n_final * costs.eval_image_s * (tta_views if config.tta else 1) + costs.report_s + costs.checkpoint_s
    total = costs.setup_s + train_s + eval_s + checkpoint_s + final_s
    return {"setup_s": costs.setup_s, "train_s": train_s, "eval_s": eval_s, "checkpoint_s": checkpoint_s,
            "final_s": final_s, "total_s": total}


def _sides(config: TrainConfig, n_train: int) -> list[int]:
    spe = max(steps_per_epoch(n_train, config.batch_size, config.drop_last), 1)
    total_steps = config.max_steps if config.max_steps is not None else config.epochs * spe
    epochs = -(-total_steps // spe)
    return sorted({config.augment.size_at(e) or 0 for e in range(epochs)})


@dataclass
class Prediction:
    plan: Plan
    config: TrainConfig  # the plan applied, schedule fitted
    phases: dict  # predicted seconds per phase and total_s
    costs: Costs  # the probe figures it was predicted from


def predict_plans(config: TrainConfig, splits, *, device: torch.device, precision, tta_views: int = 1,
                  final_report=None, model=None) -> tuple[str, list[Prediction]]:
    """Probe this machine and predict every candidate plan's time: ``(hardware class, predictions cheapest first)``.

    ``model``: the model the run will train (fine-tuning: no built-in plan table); default: each plan's ``config.model``.
    """
    n_train = len(splits.train)
    n_val = len(splits.val) if splits.val is not None else 0
    n_final = len(splits.test) if splits.test is not None else n_val
    full_side = config.data.image_size or splits.train.image_size[0]
    hardware = hardware_class(device, precision.dtype)
    plans: list[Plan] = candidates(config, hardware, n_train, from_scratch=model is None)
    configs = [apply_plan(config, plan, n_train) for plan in plans]
    costs: dict[str, Costs] = {}
    for plan_config in configs:  # one probe per model variant, covering every side its plans use
        key = variant_key(plan_config)
        sides = {s or full_side for c in configs if variant_key(c) == key for s in _sides(c, n_train)}
        if key not in costs:
            costs[key] = measure(plan_config, splits, sorted(sides), device, precision, final_report, model=model)
    predictions = []
    for plan, plan_config in zip(plans, configs):
        cost = costs[variant_key(plan_config)]
        predictions.append(Prediction(plan, plan_config, predict_seconds(plan_config, cost, n_train, n_val, n_final, tta_views), cost))
    return hardware, predictions


def choose(predictions: list[Prediction], budget_s: float, left_s: float) -> int:
    """Index of the best (last) plan predicted to fit ``SAFETY`` of the ``left_s`` seconds left."""
    fitting = [i for i, p in enumerate(predictions) if p.phases["total_s"] <= SAFETY * left_s]
    if not fitting:
        smallest = predictions[0]
        need = smallest.phases["total_s"]
        raise BudgetError(
            f"--budget {format_duration(budget_s)}: the smallest plan ({smallest.plan.name}) needs about "
            f"{format_duration(need)} on this machine and {format_duration(max(left_s, 0))} are left "
            f"after loading the data and probing; give at least {format_duration(budget_s - left_s + need / SAFETY)}")
    return fitting[-1]


def plan_run(config: TrainConfig, budget_s: float, *, splits, device: torch.device, precision, started_at: float,
             tta_views: int = 1, final_report=None, model=None) -> tuple[TrainConfig, dict]:
    """The config of the best plan fitting ``budget_s`` seconds counted from ``started_at`` (perf_counter),
    and the record of the choice (also stored in the config's ``budget.chosen``)."""
    hardware, predictions = predict_plans(config, splits, device=device, precision=precision, tta_views=tta_views,
                                          final_report=final_report, model=model)
    left = budget_s - (time.perf_counter() - started_at)
    best = predictions[choose(predictions, budget_s, left)]
    phases = best.phases
    record = {
        "seconds": budget_s,
        "hardware": hardware,
        "plan": best.plan.name,
        "plans_from": plan_source(config, hardware, from_scratch=model is None),
        "overrides": best.plan.overrides,
        "predicted_s": round(phases["total_s"], 1),
        "phases": {k: round(v, 2) for k, v in phases.items()},
        "left_at_plan_s": round(left, 1),
        # Training stops early (best weights kept) if it runs past this many seconds of the run's own
        # clock: what is left minus the predicted set-up, final evaluation, report and model file,
        # with the plan's own margin: a machine slow enough to trip the guard is slow for those too
        # (a 40 s test budget under a loaded CI ended at 42.3 s when they were reserved at face value).
        "train_deadline_s": round(left - (phases["final_s"] + phases["setup_s"]) / SAFETY, 1),
        "probe": best.costs.to_dict(),
        "candidates": [{"plan": p.plan.name, "predicted_s": round(p.phases["total_s"], 1),
                        "fits": p.phases["total_s"] <= SAFETY * left} for p in predictions],
    }
    chosen = best.config
    chosen.budget.seconds = budget_s
    chosen.budget.chosen = record
    return chosen, record
