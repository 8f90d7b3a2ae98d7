"""``evaluate_model``: one pass over a dataset, every metric, every figure, one report directory."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from resnetlab import __version__
from resnetlab.errors import DataError
from resnetlab.evaluation import plots
from resnetlab.evaluation.calibration import FIGURE as CALIBRATION_FIGURE, calibrate_model, report_summary, reliability_png as calibration_png
from resnetlab.evaluation.explain import gallery_heatmaps
from resnetlab.evaluation.metrics import bootstrap_mean_ci, calibration_errors, classification_metrics, nan_safe
from resnetlab.evaluation.predictions import collect_outputs, model_classes, model_num_classes, tta_canvases
from resnetlab.evaluation.report import render_html, render_markdown
from resnetlab.utils.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

WRONG_GRID = 24  # images in the "most confidently wrong" grid
OUTPUT_FILES = ("metrics.json", "report.html", "report.md", "corruptions.json", "corruptions.png")


def check_classes(model, imageset) -> None:
    """Raise DataError unless the model's classes are the dataset's, in the same order."""
    classes = model_classes(model)
    if classes is not None and list(classes) != list(imageset.classes):
        missing = [c for c in imageset.classes if c not in classes]
        extra = [c for c in classes if c not in imageset.classes]
        detail = (f"data has classes the model lacks {missing[:5]}; model has classes the data lacks {extra[:5]}"
                  if missing or extra else "same names in a different order")
        raise DataError(f"class names of the data ({imageset.source or 'dataset'}: {len(imageset.classes)} classes) do not match "
                        f"the model's ({len(classes)} classes): {detail}")
    num = model_num_classes(model)
    if num is not None and num != imageset.num_classes:
        raise DataError(f"the model predicts {num} classes but the data ({imageset.source or 'dataset'}) has {imageset.num_classes}")


def _model_context(model) -> dict:
    meta = getattr(model, "meta", None)
    meta_dict = meta.to_dict() if hasattr(meta, "to_dict") else (dict(meta) if isinstance(meta, dict) else None)
    info = {"name": (meta_dict or {}).get("name") or type(model).__name__, "meta": meta_dict, "kind": type(model).__name__}
    if isinstance(model, nn.Module):
        info["params"] = int(sum(p.numel() for p in model.parameters()))
    extra = getattr(model, "extra", None)
    if extra:
        info["extra"] = extra
    return info


def _deep_update(base: dict, other: dict) -> dict:
    for key, value in (other or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def _normalize_context(context: dict | None) -> dict:
    """Accept the short form ``{"data": "cifar10", "split": "test"}`` as well as nested dicts."""
    context = dict(context or {})
    data = context.get("data")
    if data is not None and not isinstance(data, dict):
        context["data"] = {"spec": str(data)}
    if "split" in context:
        context.setdefault("data", {})["split"] = context.pop("split")
    model = context.get("model")
    if model is not None and not isinstance(model, dict):
        context["model"] = {"path": str(model)}
    return context


def _tta_summary(outputs, labels: torch.Tensor, seed: int) -> dict:
    plain_pred, tta_pred = outputs.probs.argmax(1), outputs.probs_tta.argmax(1)
    plain_ok, tta_ok = (plain_pred == labels), (tta_pred == labels)

    def ece(p):
        return calibration_errors(p, labels)[0]

    return {
        "enabled": True,
        "views": outputs.tta_views,
        "accuracy_without": float(plain_ok.float().mean()),
        "accuracy_with": float(tta_ok.float().mean()),
        "loss_without": float(F.cross_entropy(outputs.logits, labels)),
        "loss_with": float(F.nll_loss(outputs.probs_tta.clamp_min(1e-12).log(), labels)),
        "ece_without": ece(outputs.probs),
        "ece_with": ece(outputs.probs_tta),
        "changed_predictions": int((plain_pred != tta_pred).sum()),
        "fixed": int((tta_ok & ~plain_ok).sum()),
        "broken": int((plain_ok & ~tta_ok).sum()),
        # Paired bootstrap: resample images, not the two accuracies independently.
        "gain_ci": bootstrap_mean_ci((tta_ok.float() - plain_ok.float()).numpy(), seed=seed),
        "accuracy_without_ci": bootstrap_mean_ci(plain_ok.float().numpy(), seed=seed),
    }


def _fit_temperature(model, validation, device, batch_size: int, context: dict | None) -> None:
    try:
        record = calibrate_model(model, validation, device=device, batch_size=batch_size,
                                 data=str((context or {}).get("data")), split="val")
    except Exception as exc:  # noqa: BLE001 - calibration must never cost a trained model its report
        log.warning("warning: temperature scaling was skipped (%s); run 'resnetlab calibrate' on the run later", exc)
        return
    model.extra = {**(getattr(model, "extra", None) or {}), "calibration": record}
    log.info("temperature scaling: T = %.4f fitted on the validation split (%d images): NLL %.4f -> %.4f",
             record["temperature"], record["num_samples"], record["nll_before"], record["nll_after"])


def _write_predictions_csv(path: Path, imageset, probs: torch.Tensor) -> None:
    confidence, pred = probs.max(1)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "path", "true", "predicted", "confidence", "correct"])
    for i, (t, p, c) in enumerate(zip(imageset.labels.tolist(), pred.tolist(), confidence.tolist())):
        writer.writerow([i, imageset.paths[i] if imageset.paths else "", imageset.classes[t], imageset.classes[p], f"{c:.6f}", int(t == p)])
    atomic_write_text(path, buffer.getvalue())


def evaluate_model(model, imageset, out_dir, *, device: str | torch.device = "cpu", batch_size: int = 512,
                   tta: bool = False, context: dict | None = None, seed: int = 0, corruptions: dict | None = None,
                   validation=None) -> dict:
    """Evaluate ``model`` on ``imageset`` and write the report into ``out_dir``.

    model: an ``nn.Module`` with ``.meta`` (normalized with its meta mean/std) or an object with
        ``logits(images_uint8_nhwc) -> Tensor`` such as an ONNX ``Predictor``.
    context: merged into ``metrics.json["context"]`` (e.g. ``{"data": {"split": "test", "spec": ...},
        "command": ..., "run_dir": ...}``).
    corruptions: the result of :func:`resnetlab.evaluation.robustness.evaluate_corruptions`
        (``evaluate --corruptions``): written as corruptions.json, plotted and given a report section.
    validation: a training run's validation split (the engine passes it when ``imageset`` is a
        separate test split): temperature scaling is fitted on it first, setting
        ``model.meta.temperature`` and ``model.extra["calibration"]`` (the engine writes both into the
        model file), so the report shows ``imageset`` before and after. A failed fit is a warning.
    Returns the metrics dict that is written to ``out_dir/metrics.json``; that file is written last,
    so its presence means the whole report is complete.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:  # a stale report must not outlive a failed re-evaluation
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    check_classes(model, imageset)
    if len(imageset) == 0:
        raise DataError(f"nothing to evaluate: the dataset {imageset.source or ''} is empty")
    if validation is not None and len(validation) and hasattr(model, "meta"):
        _fit_temperature(model, validation, device, batch_size, context)

    was_training = model.training if isinstance(model, nn.Module) else None
    try:
        outputs = collect_outputs(model, imageset.images, device=device, batch_size=batch_size, tta=tta,
                                  tta_images=tta_canvases(imageset, model) if tta else None)  # photo models' crops
    except RuntimeError as exc:  # typically a shape mismatch deep in the network: name the likely cause
        meta = getattr(model, "meta", None)
        expected = tuple(meta.input_size[1:]) if getattr(meta, "input_size", None) else None
        if expected and tuple(imageset.image_size) != expected:
            raise DataError(f"the images of {imageset.source or 'the data'} are {imageset.image_size[0]}x{imageset.image_size[1]} "
                            f"but the model takes {expected[0]}x{expected[1]}; resize them (--image-size {expected[0]}) "
                            f"[{str(exc).splitlines()[0][:200]}]") from exc
        raise
    finally:
        if was_training:
            model.train()
    labels = imageset.labels.cpu()
    classes = list(imageset.classes)
    probs = outputs.probs_tta if tta else outputs.probs
    loss = None if tta else float(F.cross_entropy(outputs.logits, labels))
    metrics = classification_metrics(probs, labels, classes, loss=loss, seed=seed)
    metrics["tta"] = _tta_summary(outputs, labels, seed) if tta else {"enabled": False}

    # Figures.
    p_np, y_np = probs.double().numpy(), labels.numpy()
    confidence, pred = probs.max(1)
    wrong = torch.nonzero(pred != labels).flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)][:WRONG_GRID]
    # Where the model looked when it said the wrong class (CAM where exact, else Grad-CAM).
    heatmaps, heatmap_method = gallery_heatmaps(model, imageset.images[wrong], device)
    pngs = {
        "confusion_matrix.png": plots.confusion_matrix_png(metrics, classes),
        "per_class.png": plots.per_class_png(metrics),
        "roc.png": plots.roc_png(p_np, y_np, metrics, classes),
        "pr.png": plots.pr_png(p_np, y_np, metrics, classes),
        "reliability.png": plots.reliability_png(metrics),
        "confidence.png": plots.confidence_png(metrics),
        "wrong_images.png": plots.wrong_images_png(
            imageset.images[wrong].numpy(), [classes[i] for i in labels[wrong]], [classes[i] for i in pred[wrong]],
            confidence[wrong].numpy(), heatmaps=heatmaps, heatmap_method=heatmap_method),
    }
    if corruptions is not None:
        from resnetlab.evaluation.robustness import corruptions_png

        metrics["corruptions"] = nan_safe(corruptions)
        pngs["corruptions.png"] = corruptions_png(corruptions)
    # Temperature scaling before/after on this split, for a calibrated model (resnetlab calibrate).
    calibration = report_summary(model, outputs.logits, labels, _normalize_context(context))
    if calibration is not None:
        metrics["temperature_scaling"] = calibration
        pngs[CALIBRATION_FIGURE] = calibration_png(calibration)
    metrics["most_confident_wrong"] = [
        {"index": int(i), "path": imageset.paths[i] if imageset.paths else None, "true": classes[labels[i]],
         "predicted": classes[pred[i]], "confidence": float(confidence[i])}
        for i in wrong.tolist()
    ]
    metrics["most_confident_wrong_heatmaps"] = heatmap_method  # "cam", "gradcam" or None (no heatmaps)

    ctx = {
        "model": _model_context(model),
        "data": {"source": imageset.source, "num_samples": len(imageset), "classes": classes,
                 "image_size": list(imageset.image_size), "split": None},
        "command": " ".join(sys.argv),
        "device": str(device),
        "batch_size": batch_size,
        "seed": seed,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "versions": {"resnetlab": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__},
    }
    metrics["context"] = _deep_update(ctx, _normalize_context(context))
    metrics["context"]["eval_time_s"] = round(time.perf_counter() - started, 3)
    metrics["files"] = sorted([*pngs, "predictions.csv", "report.html", "report.md", "metrics.json",
                               *(["corruptions.json"] if corruptions is not None else [])])
    metrics = nan_safe(metrics)

    for name, data in pngs.items():
        atomic_write_bytes(out_dir / name, data)
    _write_predictions_csv(out_dir / "predictions.csv", imageset, probs)
    if corruptions is not None:
        atomic_write_text(out_dir / "corruptions.json", json.dumps(metrics["corruptions"], indent=1, allow_nan=False) + "\n")
    atomic_write_text(out_dir / "report.md", render_markdown(metrics, list(pngs)))
    atomic_write_text(out_dir / "report.html", render_html(metrics, pngs))
    # Last: its presence marks a complete report.
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, allow_nan=False) + "\n")
    return metrics
