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
