"""Summary statistics shared by every report: one t-interval schema and one percentage format.

Seeds (``engine/seeds.py``), ``compare`` and the degradation experiment all summarize a handful of
runs; they used to do it with two helpers whose keys differed (``ci_low``/``ci_high`` against
``low``/``high``). Everything now goes through :func:`t_interval`, whose keys are
``mean``, ``std``, ``interval``, ``n`` (plus ``level`` and the ``values`` themselves).
"""

from __future__ import annotations

import math
import statistics

from scipy import stats as _scipy_stats


def t_critical(dof: int, level: float = 0.95) -> float:
    """Two-sided Student's t critical value for ``dof`` degrees of freedom."""
    return float(_scipy_stats.t.ppf(0.5 + level / 2, dof))


def t_interval(values, level: float = 0.95) -> dict:
    """Mean, sample std and the Student's t interval of the mean of ``values``.

    The interval is mean ± t(0.5 + level/2, n-1) · s / √n: Student's t because runs are few (2-10
    seeds), where the normal quantile would be too narrow. ``std`` and ``interval`` are None for one
    value; ``mean`` is None for none. ``interval`` is ``[low, high]``.
    """
    values = [float(v) for v in values if v is not None]
    n = len(values)
    mean = statistics.fmean(values) if n else None
    std = statistics.stdev(values) if n > 1 else None
    interval = None
    if n > 1:
        half = t_critical(n - 1, level) * std / math.sqrt(n)
        interval = [mean - half, mean + half]
    return {"mean": mean, "std": std, "interval": interval, "n": n, "level": level, "values": values}


def pct(value: float | None, digits: int = 2, missing: str = "n/a", sign: str = "%") -> str:
    """``value`` (a fraction) as a percentage string; ``missing`` for None or a non-finite value."""
    if value is None or not math.isfinite(value):
        return missing
    return f"{100 * value:.{digits}f}{sign}"


def majority_baseline(labels, classes) -> dict | None:
    """Accuracy of always predicting the most common class of ``labels``: ``{class, accuracy, n}``.

    A classifier is only worth something above this; on an imbalanced split (ants/bees: 54% bees)
    a model stuck at chance reads as a plausible "54%" without it. None for no labels.
    """
    import numpy as np

    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.size == 0:
        return None
    counts = np.bincount(labels, minlength=len(classes))
    top = int(counts.argmax())
    return {"class": str(classes[top]), "accuracy": float(counts[top] / labels.size), "n": int(labels.size)}


def proportion_interval(rate: float, n: int, level: float = 0.95) -> list[float]:
    """Wilson score interval of a proportion observed as ``rate`` over ``n`` trials (Wilson 1927)."""
    z = float(_scipy_stats.norm.ppf(0.5 + level / 2))
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def baseline_verdict(accuracy: float | None, baseline: dict | None, interval=None) -> dict | None:
    """Compare ``accuracy`` with a :func:`majority_baseline`: ``{better, text}``, None when either is unknown.

    "No better" when the accuracy is at or below the majority rate, or the rate lies inside the
    accuracy's interval (``interval`` [low, high]; default the Wilson interval over ``baseline['n']``).
    """
    if accuracy is None or baseline is None or not math.isfinite(accuracy):
        return None
    rate, name = baseline["accuracy"], baseline["class"]
    low = (interval or proportion_interval(accuracy, baseline["n"]))[0]
    better = accuracy > rate and low > rate
    text = (f"above the majority baseline {pct(rate, 1)} (always '{name}')" if better
            else f"no better than always predicting '{name}' ({pct(rate, 1)})")
    return {"better": bool(better), "text": text}
