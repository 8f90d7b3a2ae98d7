"""Classification metrics from predicted probabilities, computed with scikit-learn and numpy.

Everything here is a pure function of ``probs`` (N, C) and ``labels`` (N,): no models, no files.
Not taken from a library: top-k accuracy (one ``topk``), the calibration bins (ECE/MCE) and the
bootstrap (a resampling scheme, not a metric).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from resnetlab.stats import majority_baseline

CURVE_POINTS = 101  # ROC/PR curves are stored in metrics.json sampled on this many grid points
ECE_BINS = 15  # Guo et al. 2017, "On Calibration of Modern Neural Networks", use 15 equal-width bins


# ----------------------------------------------------------------------------- bootstrap
def bootstrap_mean_ci(values, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of the mean of a per-sample statistic with few distinct values.

    Resampling N items with replacement only changes how many times each distinct value is drawn,
    and those counts are Multinomial(N, observed frequencies). Drawing the counts directly gives
    exactly the distribution of the ordinary index bootstrap (Efron & Tibshirani 1993, ch. 13) in
    O(resamples x distinct values) memory instead of O(resamples x N). For accuracy the values are
    {0, 1}; for a paired difference of two classifiers they are {-1, 0, 1}.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        return {"estimate": None, "low": None, "high": None, "level": level, "n_resamples": n_resamples, "seed": seed, "n": 0}
    distinct, counts = np.unique(values, return_counts=True)
    if distinct.size > 64:
        raise ValueError("bootstrap_mean_ci expects a statistic with few distinct values (e.g. 0/1 correctness)")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=n_resamples)  # (R, K) counts per distinct value
    means = draws @ distinct / n  # (R,)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return {
        "estimate": float(values.mean()),
        "low": float(low),
        "high": float(high),
        "std_error": float(means.std(ddof=1)) if n_resamples > 1 else 0.0,
        "level": level,
        "n_resamples": n_resamples,
        "seed": seed,
        "n": int(n),
    }


def accuracy_ci_from_counts(correct: int, total: int, **kwargs) -> dict:
    """The bootstrap interval of an accuracy known only as ``correct`` out of ``total``."""
    values = np.zeros(int(total))
    values[: int(correct)] = 1.0
    return bootstrap_mean_ci(values, **kwargs)


# ----------------------------------------------------------------------------- metrics
def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _grid_roc(fpr: np.ndarray, tpr: np.ndarray) -> list[float]:
    grid = np.linspace(0.0, 1.0, CURVE_POINTS)
    return np.interp(grid, fpr, tpr).round(6).tolist()


def _grid_pr(recall: np.ndarray, precision: np.ndarray) -> list[float]:
    # Interpolated precision (the max precision at any recall >= r), the usual way to draw PR curves.
    order = np.argsort(recall)
    recall, precision = recall[order], precision[order]
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    grid = np.linspace(0.0, 1.0, CURVE_POINTS)
    idx = np.searchsorted(recall, grid, side="left").clip(max=len(recall) - 1)
    return envelope[idx].round(6).tolist()


def roc_pr_curves(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """One-vs-rest ROC and precision-recall curves (full resolution) per class, plus micro average."""
    onehot = np.eye(num_classes, dtype=np.int64)[labels]  # (N, C)
    curves = {"roc": {}, "pr": {}}
    for c in range(num_classes):
        if onehot[:, c].min() == onehot[:, c].max():  # class absent (or alone): curve undefined
            continue
        fpr, tpr, _ = roc_curve(onehot[:, c], probs[:, c])
        precision, recall, _ = precision_recall_curve(onehot[:, c], probs[:, c])
        curves["roc"][c] = (fpr, tpr)
        curves["pr"][c] = (recall, precision)
    if onehot.min() != onehot.max():
        fpr, tpr, _ = roc_curve(onehot.ravel(), probs.ravel())
        precision, recall, _ = precision_recall_curve(onehot.ravel(), probs.ravel())
        curves["roc"]["micro"] = (fpr, tpr)
        curves["pr"]["micro"] = (recall, precision)
    return curves


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """Per-bin accuracy, mean confidence and count of the top-1 prediction (the reliability diagram).

    Bins are equal-width (a value on an edge goes to the bin above it, as in torchmetrics, which
    computed our ECE before), so ``sum(count * |accuracy - confidence|) / N`` is the ECE.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = (np.searchsorted(edges, confidence, side="right") - 1).clip(0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    right = np.bincount(index, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    bins = []
    for i in range(n_bins):
        filled = counts[i] > 0
        bins.append({
            "low": float(edges[i]), "high": float(edges[i + 1]), "count": int(counts[i]),
            "accuracy": float(right[i] / counts[i]) if filled else None,
            "confidence": float(conf_sum[i] / counts[i]) if filled else None,
        })
    return bins


def calibration_errors(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> tuple[float, float]:
    """(ECE, MCE) of the top-1 prediction over ``n_bins`` equal-width confidence bins (Guo et al. 2017)."""
    p_np, y_np = probs.detach().cpu().double().numpy(), labels.cpu().numpy()
    confidence = p_np.max(axis=1)
    correct = (p_np.argmax(axis=1) == y_np).astype(np.float64)
    gaps = [(b["count"], abs(b["accuracy"] - b["confidence"])) for b in reliability_bins(confidence, correct, n_bins) if b["count"]]
    if not gaps:
        return 0.0, 0.0
    return sum(count * gap for count, gap in gaps) / len(y_np), max(gap for _, gap in gaps)


def top_k_accuracy(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest probabilities."""
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(dim=1).double().mean())


def most_confused_pairs(cm: np.ndarray, classes: list[str], top: int = 10) -> list[dict]:
    """Off-diagonal cells of the confusion matrix with the largest counts (true -> predicted)."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None)[::-1][:top]
    rows = cm.sum(axis=1)
    pairs = []
    for index in flat:
        t, p = np.unravel_index(index, cm.shape)
        if off[t, p] == 0:
            break
        pairs.append({
            "true": classes[t], "predicted": classes[p], "true_index": int(t), "predicted_index": int(p),
            "count": int(off[t, p]), "fraction_of_true": float(off[t, p] / rows[t]) if rows[t] else 0.0,
        })
    return pairs


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: list[str], *, loss: float | None = None,
                           bootstrap_resamples: int = 1000, seed: int = 0) -> dict:
    """Every number of the report from probabilities (N, C) and integer labels (N,).

    ``loss`` is the mean cross-entropy if already known (from logits, more precise); otherwise it is
    the negative log-likelihood of ``probs``.
    """
    probs = probs.detach().to("cpu", torch.float64)
    labels = labels.detach().to("cpu", torch.int64)
    n, num_classes = probs.shape
    if num_classes != len(classes):
        raise ValueError(f"probabilities have {num_classes} columns but there are {len(classes)} classes")
    p_np, y_np = probs.numpy(), labels.numpy()
    pred = p_np.argmax(axis=1)
    confidence = p_np.max(axis=1)
    correct = (pred == y_np).astype(np.float64)
    class_ids = list(range(num_classes))

    top1, top5 = top_k_accuracy(probs, labels, 1), top_k_accuracy(probs, labels, 5)
    if loss is None:
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # zero_division handles it; absent classes are expected
        precision, recall, f1, support = precision_recall_fscore_support(y_np, pred, labels=class_ids, zero_division=0)
        averages = {}
        for avg in ("macro", "weighted"):
            p, r, f, _ = precision_recall_fscore_support(y_np, pred, labels=class_ids, average=avg, zero_division=0)
            averages[avg] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}

    cm = confusion_matrix(y_np, pred, labels=class_ids)
    with np.errstate(invalid="ignore", divide="ignore"):
        cm_norm = np.where(cm.sum(1, keepdims=True) > 0, cm / cm.sum(1, keepdims=True), 0.0)

    onehot = np.eye(num_classes, dtype=np.int64)[y_np]
    present = onehot.sum(0) > 0
    auc = [None] * num_classes
    ap = [None] * num_classes
    for c in class_ids:
        if 0 < onehot[:, c].sum() < n:
            auc[c] = float(roc_auc_score(onehot[:, c], p_np[:, c]))
            ap[c] = float(average_precision_score(onehot[:, c], p_np[:, c]))
    defined = [a for a in auc if a is not None]
    defined_ap = [a for a in ap if a is not None]
    has_both = onehot.min() != onehot.max()
    auc_micro = float(roc_auc_score(onehot, p_np, average="micro")) if has_both else None
    ap_micro = float(average_precision_score(onehot, p_np, average="micro")) if has_both else None

    curves = roc_pr_curves(p_np, y_np, num_classes)
    ece, mce = calibration_errors(probs, labels)
    conf_hist_edges = np.linspace(0.0, 1.0, 21)
    hist_right, _ = np.histogram(confidence[correct == 1], bins=conf_hist_edges)
    hist_wrong, _ = np.histogram(confidence[correct == 0], bins=conf_hist_edges)

    per_class = [
        {"class": classes[c], "index": c, "precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
         "support": int(support[c]), "predicted": int((pred == c).sum()), "auc": auc[c], "average_precision": ap[c]}
        for c in class_ids
    ]
    return {
        "num_samples": int(n),
        "num_classes": int(num_classes),
        "accuracy": float(top1),
        "top5_accuracy": float(top5),
        "top_k": int(min(5, num_classes)),
        "loss": float(loss),
        "error_rate": float(1.0 - top1),
        "accuracy_ci": bootstrap_mean_ci(correct, n_resamples=bootstrap_resamples, seed=seed),
        # What always predicting this split's most common class scores: the floor a model must clear.
        "majority_baseline": majority_baseline(y_np, classes),
        "per_class": per_class,
        "macro": {**averages["macro"], "auc": float(np.mean(defined)) if defined else None,
                  "average_precision": float(np.mean(defined_ap)) if defined_ap else None},
        "weighted": averages["weighted"],
        "micro": {"auc": auc_micro, "average_precision": ap_micro},
        "classes_without_samples": [classes[c] for c in class_ids if not present[c]],
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": cm_norm.round(6).tolist(),
        "most_confused": most_confused_pairs(cm, classes),
        "calibration": {
            "ece": float(ece), "mce": float(mce), "n_bins": ECE_BINS, "norm": "l1",
            "mean_confidence": float(confidence.mean()) if n else None,
            "bins": reliability_bins(confidence, correct),
            "confidence_histogram": {"edges": conf_hist_edges.round(3).tolist(), "correct": hist_right.tolist(), "wrong": hist_wrong.tolist()},
        },
        "curves": {
            "grid": np.linspace(0.0, 1.0, CURVE_POINTS).round(6).tolist(),
            "roc_tpr_at_fpr": {str(k if k == "micro" else classes[k]): _grid_roc(*v) for k, v in curves["roc"].items()},
            "pr_precision_at_recall": {str(k if k == "micro" else classes[k]): _grid_pr(*v) for k, v in curves["pr"].items()},
        },
    }


def nan_safe(obj):
    """Replace NaN/inf floats by None so the result is strict JSON."""
    if isinstance(obj, dict):
        return {k: nan_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
