"""``--budget``: load the data once, plan, then train the chosen plan on the same data."""

from __future__ import annotations

import copy
import time
from typing import Callable

from resnetlab.budget.duration import format_duration, process_age
from resnetlab.budget.planner import plan_run
from resnetlab.config import TrainConfig
from resnetlab.engine import distributed
from resnetlab.engine.small_data import announce, resolve_batching
from resnetlab.errors import ConfigError


def train_within_budget(config: TrainConfig, budget_s: float, train_fn: Callable, *, final_report=None, **train_options):
    """Plan ``config`` to end within ``budget_s`` seconds of this process's life, then ``train_fn(config, splits=...)``."""
    from resnetlab.data.splits import load_splits_for

    check_budget_allowed()
    started_at = time.perf_counter() - process_age()
    splits = load_splits_for(config.data)
    config = plan_config(config, budget_s, splits, started_at=started_at, final_report=final_report)
    return train_fn(config, splits=splits, **train_options)


def check_budget_allowed() -> None:
    if distributed.detect().enabled:
        raise ConfigError("--budget plans a run on one process; under torchrun give --epochs instead")


def plan_config(config: TrainConfig, budget_s: float, splits, *, started_at: float | None = None, final_report=None,
                model=None) -> TrainConfig:
    """``config`` with the plan chosen for ``budget_s`` (printed, and recorded in ``config.budget.chosen``)."""
    from resnetlab.engine.precision import resolve_precision
    from resnetlab.evaluation.predictions import tta_views
    from resnetlab.utils.device import resolve_device

    started_at = time.perf_counter() - process_age() if started_at is None else started_at
    # Batch size, lr and drop_last fitted to the data first (the trainer then keeps them), so the
    # probe times the steps the run will take.
    config = copy.deepcopy(config)
    announce(resolve_batching(config, len(splits.train)))
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    side = config.data.image_size or splits.train.image_size[0]
    config, record = plan_run(config, budget_s, splits=splits, device=device, precision=precision, started_at=started_at,
                              tta_views=len(tta_views((side, side))), final_report=final_report, model=model)
    probe_s = record["probe"]["probe_s"]
    print(f"budget {format_duration(budget_s)} on this {record['hardware'].replace('_', ' ')}: plan {record['plan']}, "
          f"predicted {format_duration(record['predicted_s'])} of the {format_duration(record['left_at_plan_s'])} left "
          f"(data and a {probe_s:.0f} s probe took the rest); plans from {record['plans_from']}", flush=True)
    return config
