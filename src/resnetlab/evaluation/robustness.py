"""``evaluate --corruptions``: accuracy under the CIFAR-10-C corruptions, the corruption errors,
corruptions.json, the accuracy-vs-severity plot and the report section.

Hendrycks & Dietterich (2019), sec. 4: with E(f, c, s) the top-1 error of classifier f on
corruption c at severity s,

- corruption error     CE(f, c)  = sum_s E(f, c, s) / sum_s E(baseline, c, s)
- relative CE          rCE(f, c) = sum_s [E(f, c, s) - E(f, clean)] / sum_s [E(baseline, c, s) - E(baseline, clean)]
- mCE, relative mCE    the means of CE and rCE over the corruption types.

The paper normalises by AlexNet; here the baseline is whatever ``--baseline MODEL`` names, evaluated
on exactly the same corrupted images. Without one we report the unnormalised CE, which we define as
the mean error over the severities evaluated (comparable between runs with the same severities).
"""

from __future__ import annotations

import html
import logging
import time

import numpy as np
import torch

from resnetlab.errors import ConfigError
from resnetlab.evaluation.corruptions import CORRUPTIONS, FAMILIES, SEVERITIES, corrupt_batch
from resnetlab.evaluation.predictions import collect_outputs, model_classes
from resnetlab.imaging import fit_batch
from resnetlab.stats import pct

log = logging.getLogger(__name__)

SUBSET_STREAM = 2403  # a random stream of its own: the subset shares no draws with the corruptions
DEFAULT_LIMIT = 1000  # images per (type, severity): 76 passes over 1,000 CIFAR images take minutes on a CPU
PAPER = ("Hendrycks & Dietterich (2019), Benchmarking Neural Network Robustness to Common Corruptions and "
         "Perturbations, ICLR; CIFAR-10-C severity parameters")
FROST_NOTE = ("frost uses a procedurally synthesised frost texture (the original blends frost photographs we do "
              "not have): its numbers are not comparable with published CIFAR-10-C frost results")


def stratified_subset(labels: torch.Tensor, limit: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` images (sorted), each class represented in proportion to its
    share of the data; which images of a class are taken is a seeded shuffle. None or 0: all."""
    labels = np.asarray(labels)
    n = len(labels)
    if not limit or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng([int(seed), SUBSET_STREAM])
    order = rng.permutation(n)
    key = np.empty(n)
    for cls in np.unique(labels):
        members = order[labels[order] == cls]  # the class's images in shuffled order
        # The k-th pick of a class sits at (k + 1/2) / n_class: merging all classes on this key
        # and cutting at ``limit`` takes from each class in proportion to its size.
        key[members] = (np.arange(len(members)) + 0.5) / len(members)
    chosen = np.lexsort((order.argsort(), key))[:limit]
    return np.sort(chosen)


def error_summary(errors: dict[str, dict[int, float]], clean_error: float,
                  baseline_errors: dict[str, dict[int, float]] | None = None,
                  baseline_clean_error: float | None = None) -> dict:
    """Per type: mean error (the unnormalised CE) and, with a baseline, CE and relative CE; then
    their means over the types (mCE, relative mCE). A relative CE whose baseline did not degrade
    (denominator <= 0) is undefined (None) and left out of the relative mCE."""
    types = list(errors)
    ce_unnormalised = {t: float(np.mean(list(errors[t].values()))) for t in types}
    out = {
        "ce_unnormalised": ce_unnormalised,
        "mean_ce_unnormalised": float(np.mean(list(ce_unnormalised.values()))) if types else None,
        "ce": None, "mce": None, "relative_ce": None, "relative_mce": None,
    }
    if baseline_errors is None:
        return out
    ce, rel = {}, {}
    for t in types:
        sevs = list(errors[t])
        ours = sum(errors[t][s] for s in sevs)
        theirs = sum(baseline_errors[t][s] for s in sevs)
        ce[t] = ours / theirs if theirs > 0 else None
        rel_theirs = sum(baseline_errors[t][s] - baseline_clean_error for s in sevs)
        rel[t] = (sum(errors[t][s] - clean_error for s in sevs) / rel_theirs) if rel_theirs > 0 else None
    defined_ce = [v for v in ce.values() if v is not None]
    defined_rel = [v for v in rel.values() if v is not None]
    out.update(ce=ce, relative_ce=rel,
               mce=float(np.mean(defined_ce)) if defined_ce else None,
               relative_mce=float(np.mean(defined_rel)) if defined_rel else None)
    return out


def _input_side(model, images: torch.Tensor) -> tuple[int, int]:
    meta = getattr(model, "meta", None)
    size = meta.get("input_size") if isinstance(meta, dict) else getattr(meta, "input_size", None)
    return (int(size[1]), int(size[2])) if size and len(size) == 3 else tuple(images.shape[1:3])


def _accuracy(model, images: torch.Tensor, labels: torch.Tensor, device, batch_size: int) -> float:
    logits = collect_outputs(model, images, device=device, batch_size=batch_size).logits
    return int((logits.argmax(1) == labels).sum()) / len(labels)  # exact: a count over n, not a float32 mean


def evaluate_corruptions(model, imageset, *, types: list[str] | None = None, severities: list[int] | None = None,
                         limit: int | None = DEFAULT_LIMIT, seed: int = 0, batch_size: int = 512,
                         device: str | torch.device = "cpu", baseline=None, baseline_name: str | None = None) -> dict:
    """Accuracy of ``model`` (and ``baseline``, on the same images) on the clean images and on each
    corruption type x severity; returns the dict written as corruptions.json.

    The images are the ``limit`` of a stratified subset, brought to the model's input size as uint8
    (``imaging.fit_batch``) and corrupted there, before the normalization that ``collect_outputs``
    applies as for any evaluation. Image i of ``imageset`` is always corrupted with the random
    stream of (seed, i, type, severity), whatever the limit or batch.
    """
    types = list(types or CORRUPTIONS)
    severities = sorted(severities or SEVERITIES)
    if baseline is not None:
        mine, theirs = model_classes(model), model_classes(baseline)
        if mine and theirs and list(mine) != list(theirs):
            raise ConfigError(f"--baseline {baseline_name or ''}: its classes ({', '.join(theirs[:5])}...) are not the "
                              f"model's ({', '.join(mine[:5])}...); the baseline must classify the same classes")
    started = time.perf_counter()
    index = stratified_subset(imageset.labels, limit, seed)
    images = imageset.images[torch.as_tensor(index)]
    size = _input_side(model, images)
    if tuple(images.shape[1:3]) != size:  # corrupt at the size the model sees
        images = fit_batch(images, size)
    labels = imageset.labels[torch.as_tensor(index)].cpu()
    models = {"model": model} | ({"baseline": baseline} if baseline is not None else {})
    clean = {k: _accuracy(m, images, labels, device, batch_size) for k, m in models.items()}
    log.info("corruptions: %d images at %dx%d, %d types x %d severities; clean accuracy %s",
             len(index), size[0], size[1], len(types), len(severities), pct(clean["model"]))
    accuracy = {k: {} for k in models}
    raw = images.numpy()
    for n, name in enumerate(types, 1):
        t0 = time.perf_counter()
        for k in models:
            accuracy[k][name] = {}
        for severity in severities:
            corrupted = torch.from_numpy(corrupt_batch(raw, name, severity, indices=index, seed=seed))
            for k, m in models.items():
                accuracy[k][name][severity] = _accuracy(m, corrupted, labels, device, batch_size)
        log.info("  [%2d/%d] %-18s accuracy by severity %s  (%.1f s)", n, len(types), name,
                 " ".join(pct(accuracy["model"][name][s], 1) for s in severities), time.perf_counter() - t0)

    def errors(k):
        return {t: {s: 1.0 - a for s, a in accuracy[k][t].items()} for t in types}

    summary = error_summary(errors("model"), 1.0 - clean["model"],
                            errors("baseline") if baseline is not None else None,
                            1.0 - clean["baseline"] if baseline is not None else None)
    result = {
        "paper": PAPER,
        "types": types,
        "severities": severities,
        "num_images": int(len(index)),
        "limit": limit,
        "seed": seed,
        "image_size": list(size),
        "clean": {"accuracy": clean["model"], "error": 1.0 - clean["model"]},
        # JSON keys are strings: severities "1".."5"
        "accuracy": {t: {str(s): a for s, a in accuracy["model"][t].items()} for t in types},
        "error": {t: {str(s): 1.0 - a for s, a in accuracy["model"][t].items()} for t in types},
        "mean_accuracy": {t: float(np.mean(list(accuracy["model"][t].values()))) for t in types},
        "mean_corruption_accuracy": float(np.mean([a for t in types for a in accuracy["model"][t].values()])),
        **summary,
        "baseline": None if baseline is None else {
            "name": baseline_name,
            "clean": {"accuracy": clean["baseline"], "error": 1.0 - clean["baseline"]},
            "accuracy": {t: {str(s): a for s, a in accuracy["baseline"][t].items()} for t in types},
        },
        "notes": ([] if baseline is not None else
                  ["mCE needs a baseline model (--baseline MODEL): without one only the unnormalised CE "
                   "(mean error over the severities) is reported"])
                 + ([FROST_NOTE] if "frost" in types else []),
        "time_s": round(time.perf_counter() - started, 1),
    }
    if baseline is not None:
        log.info("corruptions: mCE %.1f%%, relative mCE %s (baseline %s)", 100 * (result["mce"] or float("nan")),
                 "n/a" if result["relative_mce"] is None else f"{100 * result['relative_mce']:.1f}%", baseline_name)
    return result


# ---------------------------------------------------------------------------------------------
# Figure and report section
# ---------------------------------------------------------------------------------------------

def corruptions_png(result: dict) -> bytes:
    """Accuracy against severity (0 = clean), one panel per family (noise, blur, weather, digital),
    one line per type; the baseline, when there is one, dashed in the same colour."""
    from resnetlab.utils.figures import STYLE, plt, png_bytes

    panels = [(family, [t for t in members if t in result["types"]]) for family, members in FAMILIES.items()]
    panels = [p for p in panels if p[1]]
    severities = [0] + list(result["severities"])
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.6, 3.6), sharey=True, squeeze=False)
        for ax, (family, members) in zip(axes[0], panels):
            for i, name in enumerate(members):
                color = plt.get_cmap("tab10")(i)
                ys = [result["clean"]["accuracy"]] + [result["accuracy"][name][str(s)] for s in result["severities"]]
                ax.plot(severities, [100 * y for y in ys], marker="o", ms=3.5, color=color, label=name.replace("_", " "))
                if result.get("baseline"):
                    base = result["baseline"]
                    yb = [base["clean"]["accuracy"]] + [base["accuracy"][name][str(s)] for s in result["severities"]]
                    ax.plot(severities, [100 * y for y in yb], ls="--", lw=1, color=color, alpha=0.7)
            ax.set_title(family)
            ax.set_xlabel("severity (0 = clean)")
            ax.set_xticks(severities)
            ax.legend(fontsize=8, loc="lower left")
        axes[0][0].set_ylabel("top-1 accuracy (%)")
        axes[0][0].set_ylim(bottom=0)
        if result.get("baseline"):
            fig.suptitle(f"solid: model; dashed: baseline {result['baseline'].get('name') or ''}", fontsize=9)
    return png_bytes(fig)


def _cell(value, digits: int = 1) -> str:
    return pct(value, digits)


def section_html(result: dict, png: bytes | None) -> str:
    """The report's "Robustness to corruptions" section: headline, table per type, the plot."""
    e = html.escape
    sevs = result["severities"]
    has_base = result.get("ce") is not None
    head = ("<tr><th class=l>corruption</th>" + "".join(f"<th>sev {s}</th>" for s in sevs)
            + "<th>mean acc.</th><th>mean error<br>(CE unnorm.)</th>"
            + ("<th>CE</th><th>relative CE</th>" if has_base else "") + "</tr>")
    rows = []
    for t in result["types"]:
        cells = "".join(f"<td>{_cell(result['accuracy'][t][str(s)])}</td>" for s in sevs)
        extra = (f"<td>{_cell(result['ce'][t])}</td><td>{_cell(result['relative_ce'][t])}</td>" if has_base else "")
        rows.append(f"<tr><td class=l>{e(t)}</td>{cells}<td>{_cell(result['mean_accuracy'][t])}</td>"
                    f"<td>{_cell(result['ce_unnormalised'][t])}</td>{extra}</tr>")
    foot = (f"<tr><td class=l>all types</td><td colspan={len(sevs)}>clean accuracy {_cell(result['clean']['accuracy'])}</td>"
            f"<td>{_cell(result['mean_corruption_accuracy'])}</td><td>{_cell(result['mean_ce_unnormalised'])}</td>"
            + (f"<td>mCE {_cell(result['mce'])}</td><td>relative mCE {_cell(result['relative_mce'])}</td>" if has_base else "")
            + "</tr>")
    which = ("The 15 corruptions" if len(result["types"]) == len(CORRUPTIONS)
             else f"{len(result['types'])} of the 15 corruptions")
    if has_base:
        verdict = (f"mCE <b>{_cell(result['mce'])}</b>, relative mCE <b>{_cell(result['relative_mce'])}</b> "
                   f"against the baseline {e(str(result['baseline'].get('name') or ''))} "
                   f"(clean accuracy {_cell(result['baseline']['clean']['accuracy'])}); below 100% is more robust than the baseline.")
    else:
        verdict = ("No baseline given: mean error over severities (the unnormalised CE) only; "
                   "mCE needs a baseline model (<code>--baseline MODEL</code>).")
    notes = "".join(f"<li>{e(n)}</li>" for n in result.get("notes", []) if not n.startswith("mCE needs"))
    figure = ""
    if png:
        from resnetlab.evaluation.report import embedded_figure

        figure = embedded_figure(png, "Accuracy against severity", "One line per corruption type; severity 0 is the clean image.",
                                 wide=True)
    return ('<section id="corruptions"><h2>Robustness to corruptions</h2>'
            f'<p class="hint">{which} of CIFAR-10-C (Hendrycks &amp; Dietterich 2019) generated on the fly '
            f'(seed {result["seed"]}) on {result["num_images"]:,} images at {result["image_size"][0]}×{result["image_size"][1]} px; '
            f'clean accuracy {_cell(result["clean"]["accuracy"])}, mean over all corruptions {_cell(result["mean_corruption_accuracy"])}. '
            f'{verdict}</p>'
            f'<div class="scroll"><table id="corruption-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody>'
            f'<tfoot>{foot}</tfoot></table></div>'
            f'{"<ul class=hint>" + notes + "</ul>" if notes else ""}{figure}</section>')


def section_markdown(result: dict) -> list[str]:
    """The same section for report.md (links corruptions.png beside it)."""
    sevs = result["severities"]
    has_base = result.get("ce") is not None
    lines = ["", "## Robustness to corruptions", "",
             f"CIFAR-10-C corruptions (Hendrycks & Dietterich 2019) on {result['num_images']} images, seed {result['seed']}; "
             f"clean accuracy {_cell(result['clean']['accuracy'])}, mean over corruptions {_cell(result['mean_corruption_accuracy'])}.",
             (f"mCE {_cell(result['mce'])}, relative mCE {_cell(result['relative_mce'])} against {result['baseline'].get('name')}."
              if has_base else "No baseline: mean error over severities (CE unnormalised) only; mCE needs `--baseline MODEL`."),
             "",
             "| corruption | " + " | ".join(f"sev {s}" for s in sevs) + " | mean acc. | CE unnorm. |" + (" CE | rel. CE |" if has_base else ""),
             "|---|" + "---:|" * (len(sevs) + 2 + (2 if has_base else 0))]
    for t in result["types"]:
        lines.append(f"| {t} | " + " | ".join(_cell(result["accuracy"][t][str(s)]) for s in sevs)
                     + f" | {_cell(result['mean_accuracy'][t])} | {_cell(result['ce_unnormalised'][t])} |"
                     + (f" {_cell(result['ce'][t])} | {_cell(result['relative_ce'][t])} |" if has_base else ""))
    lines += [f"- {n}" for n in result.get("notes", []) if not n.startswith("mCE needs")]
    lines += ["", "![accuracy against severity](corruptions.png)"]
    return lines


__all__ = ["DEFAULT_LIMIT", "corruptions_png", "error_summary", "evaluate_corruptions", "section_html",
           "section_markdown", "stratified_subset"]
