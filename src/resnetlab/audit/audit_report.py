"""The audit as audit.json, a self-contained audit.html (the evaluation report's template and CSS)
and audit.md, with the class-balance chart and the galleries of duplicate pairs and label suspects."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np

from resnetlab import __version__
from resnetlab.evaluation.report import _card, _e, embedded_figure
from resnetlab.stats import pct
from resnetlab.utils.atomic import atomic_write_bytes, atomic_write_text

GALLERY_PAIRS = 24
GALLERY_SUSPECTS = 32


# --- figures -------------------------------------------------------------------------------------
def balance_png(balance: dict) -> bytes:
    from resnetlab.utils.figures import STYLE, plt, png_bytes

    classes = balance["classes"]
    splits = list(balance["counts"])
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(classes) * max(1, len(splits)) ** 0.5 + 2), 3.6))
        width = 0.8 / max(1, len(splits))
        x = np.arange(len(classes))
        for s, split in enumerate(splits):
            ax.bar(x + (s - (len(splits) - 1) / 2) * width, balance["counts"][split], width, label=split)
        ax.set_xticks(x, classes, rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
        ax.set_ylabel("images")
        ax.set_title("Images per class")
        if len(splits) > 1:
            ax.legend()
        return png_bytes(fig)


def _gallery_png(rows: list[tuple[list[np.ndarray], str]], title: str, columns: int) -> bytes:
    """Rows of (images, caption) laid out ``columns`` entries per line."""
    from resnetlab.utils.figures import plt, png_bytes

    per = max(len(images) for images, _ in rows)
    lines = (len(rows) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns * per, figsize=(columns * per * 1.0, lines * 1.35 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (images, caption) in enumerate(rows):
        line, col = divmod(r, columns)
        for k, image in enumerate(images):
            ax = axes[line][col * per + k]
            ax.imshow(image, interpolation="nearest")
        axes[line][col * per].set_title(caption, fontsize=7, loc="left")
    fig.suptitle(title, fontsize=11, fontweight="bold")
    fig.tight_layout()
    return png_bytes(fig, dpi=110)


def pairs_png(pairs: list[dict], thumbs: np.ndarray) -> bytes:
    rows = [([thumbs[p["a"]["index"]], thumbs[p["b"]["index"]]], _pair_caption(p)) for p in pairs[:GALLERY_PAIRS]]
    return _gallery_png(rows, "Duplicate pairs (left, right)", columns=4)


def suspects_png(suspects: list[dict], thumbs: np.ndarray) -> bytes:
    rows = [([thumbs[s["index"]]], f"{s['given'][:9]}→{s['suggested'][:9]}\np={s['self_confidence']:.2g}") for s in suspects[:GALLERY_SUSPECTS]]
    return _gallery_png(rows, "Likely label errors: given → suggested (p = probability of the given label)", columns=8)


def _pair_caption(p: dict) -> str:
    how = {"exact": "identical pixels", "phash": f"pHash {p['distance']:.0f} bits", "features": f"cosine {p['distance']:.3f}"}[p["kind"]]
    return f"{how}\n{p['a']['split']} | {p['b']['split']}"


# --- writing -------------------------------------------------------------------------------------
def write_report(audit: dict, pngs: dict[str, bytes], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in pngs.items():
        atomic_write_bytes(out / name, data)
    paths = {"json": out / "audit.json", "html": out / "audit.html", "md": out / "audit.md"}
    atomic_write_text(paths["json"], json.dumps(audit, indent=2) + "\n")
    atomic_write_text(paths["html"], render_html(audit, pngs))
    atomic_write_text(paths["md"], render_markdown(audit, sorted(pngs)))
    return paths


def _figure(pngs: dict[str, bytes], name: str, title: str, caption: str) -> str:
    if name not in pngs:
        return ""
    return embedded_figure(pngs[name], title, caption, wide=True)


def _table(head: list[str], rows: list[list], left: int = 1, cls: str = "") -> str:
    th = "".join(f'<th{" class=l" if i < left else ""}>{_e(h)}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td{" class=l" if i < left else ""}>{_e(v)}</td>' for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table{f" class={cls}" if cls else ""}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def render_html(audit: dict, pngs: dict[str, bytes]) -> str:
    dup, bal, odd, lab = audit["duplicates"], audit["balance"], audit["oddities"], audit["label_issues"]
    t = dup["thresholds"]
    cards = [
        _card("images", f"{audit['images']:,}", ", ".join(f"{k} {v:,}" for k, v in audit["images_per_split"].items())),
        _card("exact duplicates", f"{dup['pairs_by_kind']['exact']:,}", f"pairs; {dup['exact_groups']:,} groups"),
        _card("near duplicates", f"{dup['pairs_by_kind']['phash'] + dup['pairs_by_kind']['features']:,}", f"pairs; pHash ≤ {t['phash_max_hamming']} bits"),
        _card("imbalance", f"{bal['imbalance_ratio']:.2f}" if bal["imbalance_ratio"] else "n/a", "largest / smallest class (train)"),
        _card("odd images", f"{sum(odd[k]['count'] for k in ('constant', 'tiny', 'extreme_aspect', 'undecodable')):,}", "constant, tiny, extreme aspect, undecodable"),
        _card("label suspects", f"{lab.get('count', 0):,}" if "count" in lab else "n/a", f"CV accuracy {pct(lab['cv_accuracy'])}" if "cv_accuracy" in lab else lab.get("skipped", "")),
    ]
    body = [f'<div class="cards" style="margin-bottom:22px">{"".join(cards)}</div>']

    thr = (f"Exact: identical decoded pixels. Near: 64-bit DCT pHash within {t['phash_max_hamming']} bits (Hamming), "
           f"each image also hashed moved by up to {t['phash_shift_pixels']} px, and confirmed by a correlation of the grey "
           f"thumbnails ≥ {t['phash_min_correlation']} ({dup['phash_rejected_by_correlation']:,} pHash matches rejected by it); "
           f"images with pixel std below {t['min_std_for_hash']} are not hashed (see constant images).")
    if t.get("feature_min_cosine") is not None:
        thr += f" Features: cosine similarity of the model's penultimate features ≥ {t['feature_min_cosine']}."
    rows = [[k, v["exact"], v["phash"], v["features"]] for k, v in dup["pairs_by_split"].items()]
    other = "".join(f"<li>{_e(k)}: {v:,} images have a copy in another split</li>" for k, v in dup["with_copy_in_other_split"].items())
    body.append(f'<section id="duplicates"><h2>Duplicates</h2><p class="hint">{_e(thr)}</p>'
                f'<p>{dup["pairs_total"]:,} pairs in {dup["clusters"]:,} clusters ({dup["images_in_clusters"]:,} images; '
                f'{dup["redundant_images"]:,} could go, keeping one per cluster); {dup["pairs_with_different_labels"]:,} pairs carry '
                f'different labels.</p>'
                + (_table(["splits", "exact pairs", "pHash pairs", "feature pairs"], rows) if rows else "<p>No duplicates found.</p>")
                + (f"<ul>{other}</ul>" if other else "")
                + f'<div class="figs">{_figure(pngs, "duplicates.png", "Duplicate pairs", "Closest first, with the distance that matched.")}</div></section>')

    brows = [[c] + [bal["counts"][s][i] for s in bal["counts"]] for i, c in enumerate(bal["classes"])]
    body.append(f'<section id="balance"><h2>Class balance</h2><p class="hint">Imbalance ratio: largest over smallest class count '
                f'of the training split.</p>{_table(["class", *bal["counts"]], brows)}'
                f'<div class="figs">{_figure(pngs, "balance.png", "Images per class", "Counts per class and split.")}</div></section>')

    ot = odd["thresholds"]
    orows = [[kind.replace("_", " "), odd[kind]["count"], "; ".join(x["name"] + (f" ({x.get('why') or x.get('reason')})") for x in odd[kind]["items"][:6])]
             for kind in ("undecodable", "constant", "tiny", "extreme_aspect", "grayscale_in_rgb")]
    body.append(f'<section id="oddities"><h2>Odd images</h2><p class="hint">Constant: pixel std &lt; {ot["constant_max_std"]}; tiny: a side '
                f'&lt; {ot["tiny_min_side"]} px; extreme aspect: beyond {ot["max_aspect"]}:1. Undecodable files are named and skipped.</p>'
                + _table(["kind", "count", "examples (all in audit.json)"], orows, left=3, cls="kv") + "</section>")

    if "count" in lab:
        srows = [[s["name"], s["given"], s["suggested"], f"{s['self_confidence']:.3g}", f"{s['margin']:.3f}"] for s in lab["suspects"][:25]]
        body.append(f'<section id="labels"><h2>Likely label errors</h2><p class="hint">{_e(lab["method"])}. Classifier: {_e(lab["classifier"])}; '
                    f'its out-of-sample accuracy is {pct(lab["cv_accuracy"])}: the weaker it is, the more suspects are merely hard images.'
                    f'{" " + _e(lab["note"]) if lab.get("note") else ""}</p>'
                    f'<p>{lab["count"]:,} suspects ({pct(lab["fraction"])} of {audit["label_images"]:,} images).</p>'
                    + _table(["image", "given", "suggested", "p(given)", "margin"], srows)
                    + f'<div class="figs">{_figure(pngs, "label_suspects.png", "Top suspects", "Lowest probability of the given label first.")}</div></section>')
    else:
        body.append(f'<section id="labels"><h2>Likely label errors</h2><p>{_e(lab.get("skipped", ""))}</p></section>')

    template = Template(resources.files("resnetlab.evaluation").joinpath("templates/report.html").read_text(encoding="utf-8"))
    page = template.substitute(title=_e(f"Data audit of {audit['data']}"),
                               subtitle=_e(" · ".join([audit["data"]] + ([f"against {audit['against']}"] if audit.get("against") else []))),
                               body="".join(body), version=_e(__version__), created=_e(audit["created"]))
    return page.replace("<code>metrics.json</code>", "<code>audit.json</code>")  # the template serves the evaluation report too


def render_markdown(audit: dict, figure_names: list[str]) -> str:
    dup, bal, odd, lab = audit["duplicates"], audit["balance"], audit["oddities"], audit["label_issues"]
    t = dup["thresholds"]
    lines = [f"# Data audit of {audit['data']}", "",
             f"{audit['images']:,} images ({', '.join(f'{k} {v:,}' for k, v in audit['images_per_split'].items())})"
             + (f", against {audit['against']}" if audit.get("against") else "") + f". Command: `{audit['command']}`", "",
             "## Duplicates", "",
             f"Thresholds: exact = identical decoded pixels; near = pHash (64-bit DCT) Hamming ≤ {t['phash_max_hamming']} (±{t['phash_shift_pixels']} px), "
             f"grey correlation ≥ {t['phash_min_correlation']} ({dup['phash_rejected_by_correlation']} rejected)"
             + (f"; features cosine ≥ {t['feature_min_cosine']}" if t.get("feature_min_cosine") is not None else "") + ".", "",
             "| splits | exact pairs | pHash pairs | feature pairs |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['exact']} | {v['phash']} | {v['features']} |" for k, v in dup["pairs_by_split"].items()]
    lines += ["", f"{dup['clusters']} clusters, {dup['images_in_clusters']} images, {dup['redundant_images']} redundant.", "",
              "## Class balance", "", f"Imbalance ratio (train, largest/smallest): {bal['imbalance_ratio']}", "",
              "| class | " + " | ".join(bal["counts"]) + " |", "|---|" + "---:|" * len(bal["counts"])]
    lines += [f"| {c} | " + " | ".join(str(bal["counts"][s][i]) for s in bal["counts"]) + " |" for i, c in enumerate(bal["classes"])]
    lines += ["", "## Odd images", ""]
    lines += [f"- {k.replace('_', ' ')}: {odd[k]['count']}" for k in ("undecodable", "constant", "tiny", "extreme_aspect", "grayscale_in_rgb")]
    lines += ["", "## Likely label errors", ""]
    if "count" in lab:
        lines += [f"{lab['count']} suspects ({pct(lab['fraction'])}); {lab['classifier']}, CV accuracy {pct(lab['cv_accuracy'])}."
                  + (f" {lab['note']}" if lab.get("note") else ""), "",
                  "| image | given | suggested | p(given) |", "|---|---|---|---:|"]
        lines += [f"| {s['name']} | {s['given']} | {s['suggested']} | {s['self_confidence']:.3f} |" for s in lab["suspects"][:20]]
    else:
        lines.append(lab.get("skipped", ""))
    lines += ["", "## Figures", ""] + [f"![{n}]({n})" for n in figure_names]
    lines += ["", "Full report: [audit.html](audit.html); every number: [audit.json](audit.json).", ""]
    return "\n".join(lines)
