"""Render the evaluation metrics as one self-contained HTML page and a short Markdown summary.

The HTML embeds every figure as a base64 data URI and carries its CSS inline, so the single file
opens offline, can be mailed, and is served as-is by ``resnetlab serve``.
"""

from __future__ import annotations

import base64
import html
from importlib import resources
from string import Template

from resnetlab import __version__
from resnetlab.stats import pct

FIGURES = [  # (file name, title, caption, full width)
    ("confusion_matrix.png", "Confusion matrix", "Rows are true classes, columns predictions; colour is the fraction of the row (recall), numbers are counts.", False),
    ("per_class.png", "Per-class scores", "Precision, recall and F1 of each class.", False),
    ("roc.png", "ROC curves", "One class against the rest; area under the curve in the legend.", False),
    ("pr.png", "Precision-recall curves", "One class against the rest; average precision in the legend.", False),
    ("reliability.png", "Reliability diagram", "Accuracy per confidence bin; bars below the diagonal mean over-confidence.", False),
    ("confidence.png", "Confidence histogram", "Top-1 probability of right and wrong predictions.", False),
    ("wrong_images.png", "Most confidently wrong", "The wrong predictions the model was most sure of: label noise, look-alike classes, or blind spots. "
     "Where shown, the heatmap beside each picture (CAM or Grad-CAM, of the predicted class) marks what drove the wrong answer.", True),
]


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _e(text) -> str:
    return html.escape(str(text))


def _bar_cell(value, color: str = "#2563eb", digits: int = 3) -> str:
    if value is None:
        return '<td class="muted">n/a</td>'
    width = max(0.0, min(1.0, value)) * 100
    return (f'<td class="bar"><span class="meter"><span style="width:{width:.1f}%;background:{color}"></span></span>'
            f'{value:.{digits}f}</td>')


def _card(label: str, value: str, note: str = "") -> str:
    return f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div><div class="note">{_e(note)}</div></div>'


def _ci_text(ci: dict) -> str:
    return f"{ci['level']:.0%} CI {pct(ci['low'])} – {pct(ci['high'])}"


def baseline_text(metrics: dict, prefix: str = "") -> str:
    """The accuracy against always predicting the split's most common class ('' when unknown)."""
    from resnetlab.stats import baseline_verdict

    ci = metrics.get("accuracy_ci") or {}
    interval = [ci["low"], ci["high"]] if ci.get("low") is not None else None
    verdict = baseline_verdict(metrics.get("accuracy"), metrics.get("majority_baseline"), interval)
    return "" if verdict is None else prefix + verdict["text"]


def headline(metrics: dict) -> str:
    ci = metrics["accuracy_ci"]
    tta = metrics.get("tta") or {}
    cards = [
        _card("loss", _num(metrics["loss"]), "cross-entropy"),
        _card("macro F1", _num(metrics["macro"]["f1"]), f"weighted {_num(metrics['weighted']['f1'])}"),
        _card("macro AUC", _num(metrics["macro"]["auc"], 4), f"micro {_num(metrics['micro']['auc'], 4)}"),
        _card("average precision", _num(metrics["macro"]["average_precision"], 4), "macro"),
        _card("ECE", pct(metrics["calibration"]["ece"]), f"{metrics['calibration']['n_bins']} bins; MCE {pct(metrics['calibration']['mce'], 1)}"),
    ]
    if metrics["num_classes"] > metrics["top_k"]:  # top-5 of 5 classes or fewer is trivially 100%
        cards.insert(0, _card("top-5 accuracy", pct(metrics["top5_accuracy"]), "true class in the 5 most likely"))
    if tta.get("enabled"):
        delta = tta["accuracy_with"] - tta["accuracy_without"]
        cards.append(_card("TTA effect", f"{100 * delta:+.2f} pt", f"{pct(tta['accuracy_without'])} → {pct(tta['accuracy_with'])}"))
    label = "accuracy (with TTA)" if tta.get("enabled") else "top-1 accuracy"
    return (
        '<div class="hero"><div class="headline">'
        f'<div class="label">{_e(label)}</div><div class="value">{pct(metrics["accuracy"])}</div>'
        f'<div class="ci">{_e(_ci_text(ci))} (bootstrap, {ci["n_resamples"]} resamples)<br>'
        f'{metrics["num_samples"]} images, {metrics["num_classes"]} classes{_e(baseline_text(metrics, "; "))}</div></div>'
        f'<div class="cards">{"".join(cards)}</div></div>'
    )


def context_table(metrics: dict) -> str:
    ctx = metrics.get("context", {})
    model, data = ctx.get("model", {}), ctx.get("data", {})
    rows = [
        ("model", model.get("name")),
        ("parameters", f"{model['params']:,}" if isinstance(model.get("params"), int) else model.get("params")),
        ("model file", model.get("path")),
        ("trained with", model.get("trained_with")),
        ("data", data.get("spec") or data.get("source")),
        ("split", data.get("split")),
        ("images", f"{metrics['num_samples']:,} ({data.get('image_size', ['?', '?'])[0]}×{data.get('image_size', ['?', '?'])[1]} px)"),
        ("device", ctx.get("device")),
        ("test-time augmentation", ", ".join((metrics.get("tta") or {}).get("views") or []) or "off"),
        ("command", ctx.get("command")),
        ("evaluated", f"{ctx.get('created', '')} in {ctx.get('eval_time_s', 0):.1f} s"),
    ]
    body = "".join(
        f"<tr><td>{_e(k)}</td><td>{'<code>' + _e(v) + '</code>' if k in ('command', 'model file') else _e(v)}</td></tr>"
        for k, v in rows if v not in (None, "")
    )
    return f'<section><h2>What was evaluated</h2><table class="kv"><tbody>{body}</tbody></table></section>'


def per_class_table(metrics: dict) -> str:
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th>predicted</th><th>AUC</th><th>AP</th></tr>"
    rows = []
    for r in metrics["per_class"]:
        rows.append(
            f"<tr><td>{_e(r['class'])}</td>{_bar_cell(r['precision'])}{_bar_cell(r['recall'], '#d97706')}"
            f"{_bar_cell(r['f1'], '#059669')}<td>{r['support']}</td><td>{r['predicted']}</td>"
            f"<td>{_num(r['auc'], 4)}</td><td>{_num(r['average_precision'], 4)}</td></tr>"
        )
    foot = "".join(
        f"<tr><td>{name} average</td><td>{_num(avg['precision'])}</td><td>{_num(avg['recall'])}</td><td>{_num(avg['f1'])}</td>"
        f"<td>{avg['support']}</td><td></td><td>{_num(avg['auc'], 4) if 'auc' in avg else ''}</td>"
        f"<td>{_num(avg['average_precision'], 4) if 'average_precision' in avg else ''}</td></tr>"
        for name, avg in (("macro", metrics["macro"]), ("weighted", metrics["weighted"]))
    )
    foot += (f"<tr><td>micro average</td><td colspan=5></td><td>{_num(metrics['micro']['auc'], 4)}</td>"
             f"<td>{_num(metrics['micro']['average_precision'], 4)}</td></tr>")
    absent = metrics.get("classes_without_samples") or []
    note = f'<p class="hint">No images of: {_e(", ".join(absent))} (their AUC/AP are undefined).</p>' if absent else ""
    return (f'<section><h2>Per-class metrics</h2>{note}<div class="scroll"><table id="per-class"><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody><tfoot>{foot}</tfoot></table></div></section>')


def confusions_table(metrics: dict) -> str:
    pairs = metrics["most_confused"]
    if not pairs:
        return '<section><h2>Most confused classes</h2><p>No confusions: every prediction is correct.</p></section>'
    rows = "".join(
        f"<tr><td>{_e(p['true'])}</td><td class=l>{_e(p['predicted'])}</td><td>{p['count']}</td><td>{pct(p['fraction_of_true'], 1)}</td></tr>"
        for p in pairs
    )
    return ('<section><h2>Most confused classes</h2><p class="hint">Images of the true class predicted as another class.</p>'
            '<table id="confusions"><thead><tr><th>true class</th><th class=l>predicted as</th><th>images</th><th>of the true class</th></tr></thead>'
            f'<tbody>{rows}</tbody></table></section>')


def tta_table(metrics: dict) -> str:
    tta = metrics.get("tta") or {}
    if not tta.get("enabled"):
        return ""
    gain = tta["gain_ci"]
    rows = (
        f"<tr><td>without TTA</td><td>{pct(tta['accuracy_without'])}</td><td>{_num(tta['loss_without'])}</td><td>{pct(tta['ece_without'])}</td></tr>"
        f"<tr><td>with TTA ({len(tta['views'])} views)</td><td>{pct(tta['accuracy_with'])}</td><td>{_num(tta['loss_with'])}</td><td>{pct(tta['ece_with'])}</td></tr>"
    )
    return ('<section><h2>Test-time augmentation</h2>'
            f'<p class="hint">Softmax averaged over {_e(", ".join(tta["views"]))}. '
            f'Paired bootstrap of the gain: {100 * gain["estimate"]:+.2f} pt, {gain["level"]:.0%} CI {100 * gain["low"]:+.2f} to {100 * gain["high"]:+.2f} pt; '
            f'{tta["changed_predictions"]} predictions changed.</p>'
            f'<table id="tta"><thead><tr><th></th><th>accuracy</th><th>loss</th><th>ECE</th></tr></thead><tbody>{rows}</tbody></table></section>')


def embedded_figure(png: bytes, title: str, caption: str, *, wide: bool = False) -> str:
    """One ``<figure>`` with the PNG inline as a data URI (every report page is a single offline file)."""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure{" class=wide" if wide else ""}><img alt="{_e(title)}" src="data:image/png;base64,{data}">'
            f'<figcaption><b>{_e(title)}.</b> {_e(caption)}</figcaption></figure>')


def figures_section(pngs: dict[str, bytes], num_classes: int) -> str:
    items = []
    for name, title, caption, wide in FIGURES:
        if name not in pngs:
            continue
        wide = wide or (num_classes > 6 and name in ("confusion_matrix.png", "per_class.png"))
        items.append(embedded_figure(pngs[name], title, caption, wide=wide))
    return f'<section><h2>Figures</h2><div class="figs">{"".join(items)}</div></section>'


def corruptions_section(metrics: dict, pngs: dict[str, bytes]) -> str:
    """``evaluate --corruptions``: drawn by evaluation/robustness.py, empty without it."""
    if not metrics.get("corruptions"):
        return ""
    from resnetlab.evaluation.robustness import section_html

    return section_html(metrics["corruptions"], pngs.get("corruptions.png"))


def calibration_section(metrics: dict, pngs: dict[str, bytes]) -> str:
    """Temperature scaling before/after: drawn by evaluation/calibration.py, empty for an uncalibrated model."""
    if not metrics.get("temperature_scaling"):
        return ""
    from resnetlab.evaluation.calibration import FIGURE, section_html

    return section_html(metrics["temperature_scaling"], pngs.get(FIGURE))


def render_html(metrics: dict, pngs: dict[str, bytes]) -> str:
    """The whole report page as a string (no external resources)."""
    ctx = metrics.get("context", {})
    model_name = ctx.get("model", {}).get("name", "model")
    split = ctx.get("data", {}).get("split") or ""
    template = Template(resources.files("resnetlab.evaluation").joinpath("templates/report.html").read_text(encoding="utf-8"))
    body = headline(metrics) + tta_table(metrics) + per_class_table(metrics) + confusions_table(metrics) + figures_section(pngs, metrics["num_classes"]) + calibration_section(metrics, pngs) + corruptions_section(metrics, pngs) + context_table(metrics)
    return template.substitute(
        title=_e(f"Evaluation of {model_name}"),
        subtitle=_e(" · ".join(x for x in (ctx.get("data", {}).get("spec") or ctx.get("data", {}).get("source") or "", f"{split} split" if split else "") if x)),
        body=body,
        version=_e(__version__),
        created=_e(ctx.get("created", "")),
    )


def render_markdown(metrics: dict, figure_names: list[str]) -> str:
    """A short Markdown summary that links the PNG files beside it."""
    ctx = metrics.get("context", {})
    model, data = ctx.get("model", {}), ctx.get("data", {})
    ci = metrics["accuracy_ci"]
    lines = [
        f"# Evaluation of {model.get('name', 'model')}",
        "",
        f"Data: {data.get('spec') or data.get('source', '')}, split {data.get('split', '?')}, {metrics['num_samples']} images, "
        f"{metrics['num_classes']} classes.",
        f"Command: `{ctx.get('command', '')}`",
        "",
        "| metric | value |",
        "|---|---|",
        f"| top-1 accuracy | **{pct(metrics['accuracy'])}** ({_ci_text(ci)}, bootstrap) |",
        f"| majority-class baseline | {baseline_text(metrics) or 'n/a'} |",
        f"| top-{metrics['top_k']} accuracy | {pct(metrics['top5_accuracy'])} |",
        f"| loss (cross-entropy) | {_num(metrics['loss'])} |",
        f"| macro / weighted F1 | {_num(metrics['macro']['f1'])} / {_num(metrics['weighted']['f1'])} |",
        f"| macro / micro AUC | {_num(metrics['macro']['auc'], 4)} / {_num(metrics['micro']['auc'], 4)} |",
        f"| macro / micro average precision | {_num(metrics['macro']['average_precision'], 4)} / {_num(metrics['micro']['average_precision'], 4)} |",
        f"| ECE ({metrics['calibration']['n_bins']} bins) | {pct(metrics['calibration']['ece'])} |",
    ]
    tta = metrics.get("tta") or {}
    if tta.get("enabled"):
        lines.append(f"| TTA ({len(tta['views'])} views) | {pct(tta['accuracy_without'])} → {pct(tta['accuracy_with'])} |")
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |" for r in metrics["per_class"]]
    if metrics["most_confused"]:
        lines += ["", "## Most confused (true → predicted)", ""]
        lines += [f"- {p['true']} → {p['predicted']}: {p['count']} ({pct(p['fraction_of_true'], 1)} of {p['true']})" for p in metrics["most_confused"][:5]]
    if metrics.get("temperature_scaling"):
        from resnetlab.evaluation.calibration import section_markdown as calibration_markdown

        lines += calibration_markdown(metrics["temperature_scaling"])
    if metrics.get("corruptions"):
        from resnetlab.evaluation.robustness import section_markdown

        lines += section_markdown(metrics["corruptions"])
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({name})" for name in figure_names if name not in ("corruptions.png", "reliability_calibrated.png")]
    lines += ["", "Full report: [report.html](report.html); every number: [metrics.json](metrics.json).", ""]
    return "\n".join(lines)
