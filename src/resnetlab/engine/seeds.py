"""Multi-seed runs: the same config trained with several seeds, summarized with a 95% t-interval.

Accuracy claims are made from several seeds (airbench reports means over many runs); the
interval is mean ± t(0.975, n-1) · s / √n, Student's t for the small number of runs.
"""

from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path

from resnetlab.config import TrainConfig
from resnetlab.runs import RunDir, default_run_dir

# Two-sided 95% critical values of Student's t by degrees of freedom (used when scipy is absent).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_critical(dof: int, level: float = 0.95) -> float:
    try:
        from scipy import stats

        return float(stats.t.ppf(0.5 + level / 2, dof))
    except ImportError:
        if level != 0.95:
            raise
        # Nearest tabulated dof at or below (conservative), 1.96 beyond the table.
        return _T975[max(d for d in _T975 if d <= dof)] if dof <= 120 else 1.960


def summarize(values: list[float], level: float = 0.95) -> dict:
    """Mean, sample std and a t-interval of ``values`` (the interval is None for one value)."""
    values = [float(v) for v in values]
    n = len(values)
    mean = statistics.fmean(values) if n else None
    std = statistics.stdev(values) if n > 1 else None
    low = high = None
    if n > 1:
        half = t_critical(n - 1, level) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    return {"n": n, "mean": mean, "std": std, "ci_low": low, "ci_high": high, "level": level, "values": values}


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
        "final_acc": summarize(finals),
        "best_val_acc": summarize([r["best_val_acc"] for r in runs if r["best_val_acc"] is not None]),
        "runs": runs,
    }
    base.mkdir(parents=True, exist_ok=True)
    RunDir(base).write_json("seeds.json", report)
    return report
