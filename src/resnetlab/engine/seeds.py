"""Multi-seed runs: the same config trained with several seeds, summarized with a 95% t-interval.

Accuracy claims are made from several seeds (airbench reports means over many runs); the
interval is ``resnetlab.stats.t_interval`` (Student's t, for the small number of runs).
"""

from __future__ import annotations

import copy
from pathlib import Path

from resnetlab.config import TrainConfig
from resnetlab.runs import RunDir, default_run_dir
from resnetlab.stats import t_interval


def train_seeds(config: TrainConfig, seeds: list[int], train_fn=None) -> dict:
    """Train ``config`` once per seed into ``RUN_DIR/seed-N``; write and return ``RUN_DIR/seeds.json``."""
    from resnetlab.engine import train

    train_fn = train_fn or train
    base = Path(config.run_dir or default_run_dir(config.model.name, config.name))
    runs = []
    for seed in seeds:
        cfg = copy.deepcopy(config)
        cfg.seed = seed
        cfg.run_dir = str(base / f"seed-{seed}")
        result = train_fn(cfg)
        runs.append({"seed": seed, "run_dir": str(result.run_dir), "best_val_acc": result.best_val_acc,
                     "test_acc": result.test_acc, "test_split": result.test_split})
    finals = [r["test_acc"] for r in runs if r["test_acc"] is not None]
    report = {
        "seeds": seeds,
        "metric": f"{runs[0]['test_split'] if runs else 'test'}_acc of the best-on-validation model",
        "final_acc": t_interval(finals),
        "best_val_acc": t_interval([r["best_val_acc"] for r in runs]),
        "runs": runs,
    }
    base.mkdir(parents=True, exist_ok=True)
    RunDir(base).write_json("seeds.json", report)
    return report
