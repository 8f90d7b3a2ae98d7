"""Plan a run to a wall-clock budget (``--budget 10m``): probe this machine, pick the best plan that fits."""

from resnetlab.budget.duration import format_duration, parse_duration
from resnetlab.budget.planner import BudgetError, plan_run, predict_seconds

__all__ = ["BudgetError", "format_duration", "parse_duration", "plan_run", "predict_seconds"]
