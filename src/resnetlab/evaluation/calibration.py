"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", sec. 4.2).

One scalar T > 0 divides every logit: probabilities become ``softmax(logits / T)``. T is fitted on the
validation split by minimising the negative log-likelihood; the argmax, hence the accuracy, does not
change. T lives in the model's metadata (``ModelMeta.temperature``, written into model.json) and
``predict``, ``serve`` and the ONNX export apply it.

- :func:`fit_temperature` ``(logits, labels) -> T``: bounded Brent search on log T (deterministic).
- :func:`calibration_summary`: ECE, NLL and reliability bins before and after, on any split.
- :func:`calibrate_path`: the library side of ``resnetlab calibrate MODEL --data DATA``.
- :func:`section_html` / :func:`section_markdown` / :func:`reliability_png`: the report's section.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from resnetlab.errors import ConfigError, DataError
from resnetlab.evaluation.metrics import ECE_BINS, calibration_errors, reliability_bins
from resnetlab.models.metadata import MAX_TEMPERATURE, MIN_TEMPERATURE
from resnetlab.stats import pct

log = logging.getLogger(__name__)

FIGURE = "reliability_calibrated.png"


# ----------------------------------------------------------------------------- fitting
def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` (float64)."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising the NLL of ``logits / T`` on ``labels``.

    The NLL is convex in 1/T (a log-sum-exp of linear functions minus a linear one), so it has one
    minimum along log T and a bounded Brent search finds it; searching log T treats T = 0.5 and T = 2
    alike. Deterministic: no random start, float64 throughout.
    """
    logits, labels = torch.as_tensor(logits).detach().cpu().double(), torch.as_tensor(labels).detach().cpu().long()
    if logits.ndim != 2 or logits.shape[0] == 0 or labels.shape != (logits.shape[0],):
        raise DataError(f"temperature scaling needs logits (N, classes) and N labels, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if not torch.isfinite(logits).all():
        raise DataError("temperature scaling: the model's logits hold NaN or infinite values; its weights are broken")
    result = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), method="bounded",
                             bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)), options={"xatol": 1e-7})
    temperature = float(math.exp(result.x))
    if not MIN_TEMPERATURE * 1.01 < temperature < MAX_TEMPERATURE / 1.01:
        log.warning("the fitted temperature %.4g is at the edge of the searched range [%g, %g]: the NLL keeps falling "
                    "beyond it (a validation split where every prediction is right, or wrong)", temperature,
                    MIN_TEMPERATURE, MAX_TEMPERATURE)
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


# ----------------------------------------------------------------------------- measuring
def _side(logits: torch.Tensor, labels: torch.Tensor, temperature: float, n_bins: int) -> dict:
    probs = torch.softmax(logits.double() / temperature, dim=1)
    ece, mce = calibration_errors(probs, labels, n_bins)
    confidence, pred = probs.max(1)
    return {
        "temperature": float(temperature), "nll": nll(logits, labels, temperature), "ece": ece, "mce": mce,
        "mean_confidence": float(confidence.mean()), "accuracy": float((pred == labels).double().mean()),
        "bins": reliability_bins(confidence.numpy(), (pred == labels).double().numpy(), n_bins),
    }


def calibration_summary(logits: torch.Tensor, labels: torch.Tensor, temperature: float, *, fitted: dict | None = None,
                        evaluated: dict | None = None, n_bins: int = ECE_BINS) -> dict:
    """ECE, NLL and reliability bins of ``logits`` before (T = 1) and after (T = ``temperature``).

    ``fitted``: the model's ``extra["calibration"]`` record (where T was fitted); ``evaluated``:
    ``{"spec", "split"}`` of the data measured here. ``warning`` is set when both are the same split,
    where the "after" figures are optimistic (T was chosen on these very images).
    """
    logits, labels = logits.detach().cpu().double(), labels.detach().cpu().long()
    summary = {"temperature": float(temperature), "n_bins": n_bins, "num_samples": int(labels.numel()),
               "before": _side(logits, labels, 1.0, n_bins), "after": _side(logits, labels, temperature, n_bins),
               "fitted_on": fitted or None, "warning": None}
    if fitted and evaluated and fitted.get("split") and fitted.get("split") == evaluated.get("split") \
            and str(fitted.get("data")) == str(evaluated.get("spec")):
        summary["warning"] = (f"T was fitted on this same split ({fitted['split']} of {fitted['data']}): the calibrated "
                              "figures are optimistic; evaluate another split to measure calibration honestly")
    return summary


def reliability_png(summary: dict) -> bytes:
    """Reliability diagram before and after temperature scaling: accuracy per confidence bin, two curves."""
    from resnetlab.utils.figures import STYLE, plt, png_bytes

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 6))
        ax.plot([0, 1], [0, 1], ls="--", color="#9ca3af", label="perfect calibration")
        for key, color, marker in (("before", "#dc2626", "o"), ("after", "#2563eb", "s")):
            side = summary[key]
            filled = [b for b in side["bins"] if b["count"]]
            label = (f"{'uncalibrated' if key == 'before' else 'calibrated'} (T={side['temperature']:.3g}): "
                     f"ECE {pct(side['ece'])}, NLL {side['nll']:.3f}")
            ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], color=color, marker=marker, ms=4,
                    lw=1.6, label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean confidence in bin (top-1 probability)", ylabel="accuracy in bin")
        ax.set_title(f"Temperature scaling ({summary['num_samples']:,} images, {summary['n_bins']} bins)")
        ax.legend(loc="upper left", fontsize=8)
        return png_bytes(fig, dpi=110)


def _fitted_text(summary: dict) -> str:
    fitted = summary.get("fitted_on") or {}
    if not fitted:
        return "T is recorded in the model's metadata; where it was fitted is not recorded."
    return (f"T was fitted on the {fitted.get('split', '?')} split of {fitted.get('data', '?')} "
            f"({fitted.get('num_samples', '?')} images) by minimising the NLL; the figures here are measured on the evaluated split.")


def section_html(summary: dict, png: bytes | None) -> str:
    """The report's "Temperature scaling" section (a table before/after and the two-curve diagram)."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{label}</td><td>{side['temperature']:.4g}</td><td>{pct(side['accuracy'])}</td><td>{side['nll']:.4f}</td>"
        f"<td>{pct(side['ece'])}</td><td>{pct(side['mce'], 1)}</td><td>{pct(side['mean_confidence'])}</td></tr>"
        for label, side in (("uncalibrated", summary["before"]), ("calibrated", summary["after"])))
    warning = (f'<p class="warn" style="color:#b45309"><b>Warning:</b> {e(summary["warning"])}</p>'
               if summary.get("warning") else "")
    figure = ""
    if png:
        from resnetlab.evaluation.report import embedded_figure

        figure = '<div class="figs">' + embedded_figure(
            png, "Reliability before and after", "Accuracy against mean confidence per bin; the calibrated curve should "
            "lie nearer the diagonal.") + "</div>"
    return ('<section id="temperature-scaling"><h2>Temperature scaling</h2>'
            f'<p class="hint">Probabilities are softmax(logits / T) with T = {summary["temperature"]:.4g} (Guo et al. 2017); '
            f'accuracy does not change. {e(_fitted_text(summary))}</p>{warning}'
            '<table id="calibration"><thead><tr><th></th><th>T</th><th>accuracy</th><th>NLL</th><th>ECE</th><th>MCE</th>'
            f'<th>mean confidence</th></tr></thead><tbody>{rows}</tbody></table>{figure}</section>')


def section_markdown(summary: dict) -> list[str]:
    """The same section as Markdown lines."""
    lines = ["", "## Temperature scaling", "",
             f"Probabilities are softmax(logits / T), T = {summary['temperature']:.4g}. {_fitted_text(summary)}", ""]
    if summary.get("warning"):
        lines += [f"**Warning:** {summary['warning']}", ""]
    lines += ["| | T | NLL | ECE | accuracy |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {label} | {side['temperature']:.4g} | {side['nll']:.4f} | {pct(side['ece'])} | {pct(side['accuracy'])} |"
              for label, side in (("uncalibrated", summary["before"]), ("calibrated", summary["after"]))]
    lines += ["", f"![{FIGURE}]({FIGURE})"]
    return lines


def report_summary(model, logits: torch.Tensor, labels: torch.Tensor, context: dict | None) -> dict | None:
    """The report's calibration section data for ``model``, or None when it was never calibrated."""
    meta = getattr(model, "meta", None)
    temperature = float(getattr(meta, "temperature", 1.0) or 1.0)
    extra = getattr(model, "extra", None) or {}
    fitted = extra.get("calibration") if isinstance(extra.get("calibration"), dict) else None
    if temperature == 1.0 and fitted is None:
        return None
    data = (context or {}).get("data")
    evaluated = {"spec": data.get("spec"), "split": data.get("split")} if isinstance(data, dict) else None
    return calibration_summary(logits, labels, temperature, fitted=fitted, evaluated=evaluated)


# ----------------------------------------------------------------------------- applying to a model
def calibrate_model(model, imageset, *, device="cpu", batch_size: int = 512, data: str | None = None,
                    split: str | None = None) -> dict:
    """Fit T of ``model`` (an ``nn.Module`` with ``.meta``) on ``imageset``; set ``model.meta.temperature``.

    Returns the calibration record kept in the model file's ``extra["calibration"]``: T, the split it
    was fitted on and the NLL/ECE there before and after.
    """
    from resnetlab.evaluation.evaluate import check_classes
    from resnetlab.evaluation.predictions import collect_outputs

    if not hasattr(model, "meta"):
        raise ConfigError("calibrate: the model has no .meta; an ONNX export is calibrated from its model file, then re-exported")
    check_classes(model, imageset)
    if len(imageset) == 0:
        raise DataError(f"calibrate: the {split or 'given'} split of {data or imageset.source} is empty")
    logits = collect_outputs(model, imageset.images, device=device, batch_size=batch_size).logits
    labels = imageset.labels.cpu()
    temperature = fit_temperature(logits, labels)
    summary = calibration_summary(logits, labels, temperature)
    model.meta.temperature = temperature
    return {"temperature": temperature, "data": data, "split": split, "num_samples": len(imageset),
            "nll_before": summary["before"]["nll"], "nll_after": summary["after"]["nll"],
            "ece_before": summary["before"]["ece"], "ece_after": summary["after"]["ece"], "accuracy": summary["after"]["accuracy"]}


def write_temperature(model_path: str | Path, temperature: float, record: dict) -> Path:
    """Set ``meta.temperature`` in a resnetlab model file's JSON sidecar and keep ``record`` in its extra.

    Only the sidecar changes (the weights are untouched); the previous temperature stays in the record.
    """
    from resnetlab.models.files import read_model_info, resolve_model_path, update_model_extra, update_model_meta

    path = resolve_model_path(model_path)
    previous = (read_model_info(path).get("meta") or {}).get("temperature", 1.0)
    update_model_meta(path, {"temperature": float(temperature)})
    update_model_extra(path, {"calibration": {**record, "previous_temperature": previous}})
    return path


def calibrate_path(model_path: str | Path, data: str | None = None, *, split: str = "val", output: str | Path | None = None,
                   device: str = "auto", batch_size: int = 512, data_dir: str | None = None, image_size: int | None = None,
                   source_format: str | None = None) -> dict:
    """``resnetlab calibrate``: fit T on ``split`` of ``data`` and store it with the model.

    A resnetlab model file or run directory gets T in its model.json (or, with ``output``, a calibrated
    copy there); a ``.pt`` checkpoint or an outside checkpoint (akamaster, ...) cannot hold it, so it is
    written as a new resnetlab model file at ``output``. Returns the calibration record plus ``path``.
    """
    from resnetlab.evaluation.runner import load_eval_split
    from resnetlab.models.files import WEIGHTS_NAME, model_source_files, save_model_file
    from resnetlab.models.importers import is_resnetlab_model_path, load_any_model, split_format_prefix
    from resnetlab.runs import RunDir
    from resnetlab.utils.atomic import check_output_path
    from resnetlab.utils.device import resolve_device

    fmt, text = split_format_prefix(model_path, source_format)
    path = Path(text)
    if path.suffix.lower() == ".onnx":
        raise ConfigError(f"{path}: an ONNX export cannot be recalibrated in place; calibrate the model file it came from "
                          "and export it again")
    in_place = output is None and fmt is None and is_resnetlab_model_path(path) and path.suffix not in (".pt", ".pth")
    if not in_place:
        if output is None:
            raise ConfigError(f"{path}: a checkpoint cannot store a temperature; give --output FILE.safetensors "
                              "(a resnetlab model file with T in its model.json is written there)")
        output = Path(output)
        if output.suffix != ".safetensors":
            output = output / WEIGHTS_NAME
        check_output_path(output, model_source_files(path), example="calibrated.safetensors")
        check_output_path(output.with_suffix(".json"), model_source_files(path), example="calibrated.safetensors")
    if data is None and RunDir.find(path) is None:  # before the model loads, which can take seconds
        raise ConfigError("--data is required (cifar10, cifar100, an archive or an image folder) unless MODEL is in a run directory")
    device = resolve_device(device)
    model = load_any_model(path, fmt, map_location=device)
    imageset, spec, split = load_eval_split(text, model, data, split, data_dir=data_dir, image_size=image_size)
    previous = float(getattr(model.meta, "temperature", 1.0))
    record = calibrate_model(model, imageset, device=device, batch_size=batch_size, data=spec, split=split)
    if in_place:
        written = write_temperature(path, record["temperature"], record)
    else:
        extra = {**(getattr(model, "extra", None) or {}), "source": str(model_path),
                 "calibration": {**record, "previous_temperature": previous}}
        output.parent.mkdir(parents=True, exist_ok=True)
        written = save_model_file(model, output, extra=extra)
    return {**record, "path": str(written)}
