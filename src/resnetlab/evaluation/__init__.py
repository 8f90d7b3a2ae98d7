"""Evaluation: metrics, figures and reports of a trained model on a dataset, and run comparison."""

from resnetlab.evaluation.evaluate import check_classes, evaluate_model
from resnetlab.evaluation.metrics import accuracy_ci_from_counts, bootstrap_mean_ci, classification_metrics

__all__ = ["accuracy_ci_from_counts", "bootstrap_mean_ci", "check_classes", "classification_metrics", "evaluate_model"]
