"""The report's figures, drawn with matplotlib's Agg backend and returned as PNG bytes.

Each function takes plain numbers (the metrics dict, numpy arrays) and returns ``bytes``, so the
caller decides where the PNG goes (an atomic file write, a base64 data URI).
"""

from __future__ import annotations

import numpy as np

from resnetlab.evaluation.metrics import roc_pr_curves
from resnetlab.utils.figures import STYLE, plt, png_bytes

DPI = 120
BLUE, ORANGE, GREEN, RED, GREY = "#2563eb", "#f59e0b", "#10b981", "#dc2626", "#6b7280"
MANY_CLASSES = 12  # above this, per-class labels/legends would be unreadable: plots switch layout


def _class_colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def confusion_matrix_png(metrics: dict, classes: list[str]) -> bytes:
    """Row-normalized colours (recall per true class) annotated with counts."""
    cm = np.asarray(metrics["confusion_matrix"])
    norm = np.asarray(metrics["confusion_matrix_normalized"])
    n = len(classes)
    size = min(max(5.0, 0.55 * n + 2.0), 22.0)
    with plt.rc_context(STYLE | {"axes.grid": False}):
        fig, ax = plt.subplots(figsize=(size + 1.2, size))
        image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
        ticks = np.arange(n)
        labelsize = 9 if n <= 20 else max(4, int(160 / n))
        ax.set_xticks(ticks, classes, rotation=45 if n <= 40 else 90, ha="right" if n <= 40 else "center", fontsize=labelsize)
        ax.set_yticks(ticks, classes, fontsize=labelsize)
        if n <= 25:
            for t in range(n):
                for p in range(n):
                    if cm[t, p] == 0 and t != p:
                        continue
                    dark = norm[t, p] > 0.55
                    text = f"{cm[t, p]}\n{norm[t, p]:.0%}" if n <= MANY_CLASSES else f"{cm[t, p]}"
                    ax.text(p, t, text, ha="center", va="center", fontsize=8 if n <= MANY_CLASSES else 6,
                            color="white" if dark else "#1f2937")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"Confusion matrix (accuracy {metrics['accuracy']:.2%}, n = {metrics['num_samples']})")
        return png_bytes(fig, dpi=DPI)


def _mean_curve(curves: dict, keys: list, grid: np.ndarray) -> np.ndarray:
    return np.mean([np.interp(grid, *curves[k]) for k in keys], axis=0)


def _class_curves(ax, curves: dict, metrics: dict, classes: list[str], colors, score: str) -> bool:
    """One curve per class (labelled with its ``score`` when there are few classes, faint grey lines
    otherwise) and the dashed micro average; returns whether the classes were few enough to label."""
    few = len(classes) <= MANY_CLASSES
    for c in [k for k in curves if k != "micro"]:
        x, y = curves[c]
        if few:
            ax.plot(x, y, lw=1.3, color=colors[c], label=f"{classes[c]} ({metrics['per_class'][c][score]:.3f})")
        else:
            ax.plot(x, y, lw=0.6, color=GREY, alpha=0.35)
    if "micro" in curves:
        ax.plot(*curves["micro"], lw=2.4, ls="--", color="black", label=f"micro average ({metrics['micro'][score]:.3f})")
    return few


def roc_png(probs: np.ndarray, labels: np.ndarray, metrics: dict, classes: list[str]) -> bytes:
    """One-vs-rest ROC per class with micro and macro averages (AUC in the legend)."""
    curves = roc_pr_curves(probs, labels, len(classes))["roc"]
    per_class = [k for k in curves if k != "micro"]
    colors = _class_colors(len(classes))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 6.5))
        few = _class_curves(ax, curves, metrics, classes, colors, "auc")
        if per_class:
            grid = np.linspace(0, 1, 201)
            ax.plot(grid, _mean_curve(curves, per_class, grid), lw=2.4, ls=":", color=RED,
                    label=f"macro average ({metrics['macro']['auc']:.3f})")
        ax.plot([0, 1], [0, 1], color=GREY, lw=1, ls="-", alpha=0.6, label="chance")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate", ylabel="true positive rate")
        ax.set_title("ROC, one class vs rest (AUC)")
        ax.legend(loc="lower right", fontsize=8 if few else 9)
        return png_bytes(fig, dpi=DPI)


def pr_png(probs: np.ndarray, labels: np.ndarray, metrics: dict, classes: list[str]) -> bytes:
    """Precision-recall per class with the micro average (average precision in the legend)."""
    curves = roc_pr_curves(probs, labels, len(classes))["pr"]
    colors = _class_colors(len(classes))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 6.5))
        few = _class_curves(ax, curves, metrics, classes, colors, "average_precision")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.03), xlabel="recall", ylabel="precision")
        macro = metrics["macro"]["average_precision"]
        ax.set_title("Precision-recall, one class vs rest (AP)" + (f"; macro AP {macro:.3f}" if macro is not None else ""))
        ax.legend(loc="lower left", fontsize=8 if few else 9)
        return png_bytes(fig, dpi=DPI)


def reliability_png(metrics: dict) -> bytes:
    """Reliability diagram (Guo et al. 2017, Fig. 1): accuracy per confidence bin against the diagonal."""
    cal = metrics["calibration"]
    bins = cal["bins"]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 6))
        width = bins[0]["high"] - bins[0]["low"]
        centers = np.array([(b["low"] + b["high"]) / 2 for b in bins])
        acc = np.array([b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bins])
        conf = np.array([b["confidence"] if b["confidence"] is not None else 0.0 for b in bins])
        filled = np.array([b["count"] > 0 for b in bins])
        ax.bar(centers[filled], acc[filled], width=width * 0.95, color=BLUE, edgecolor="white", label="accuracy in bin")
        gap_low = np.minimum(acc, conf)[filled]
        ax.bar(centers[filled], np.abs(conf - acc)[filled], bottom=gap_low, width=width * 0.95, color=RED, alpha=0.3,
               edgecolor=RED, hatch="//", label="gap to confidence")
        for x, b in zip(centers, bins):
            if b["count"]:
                ax.text(x, 0.01, str(b["count"]), ha="center", va="bottom", fontsize=7, color="white", rotation=90)
        ax.plot([0, 1], [0, 1], ls="--", color=GREY, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy")
        ax.set_title(f"Reliability diagram (ECE {cal['ece']:.2%}, {cal['n_bins']} bins; counts in bars)")
        ax.legend(loc="upper left")
        return png_bytes(fig, dpi=DPI)


def confidence_png(metrics: dict) -> bytes:
    """Histogram of top-1 confidence for right and wrong predictions."""
    hist = metrics["calibration"]["confidence_histogram"]
    edges = np.asarray(hist["edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    right, wrong = np.asarray(hist["correct"]), np.asarray(hist["wrong"])
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.bar(centers, right, width=width * 0.95, color=GREEN, label=f"correct ({right.sum()})")
        ax.bar(centers, wrong, width=width * 0.95, bottom=right, color=RED, label=f"wrong ({wrong.sum()})")
        mean_conf = metrics["calibration"]["mean_confidence"]
        if mean_conf is not None:
            ax.axvline(mean_conf, color="black", ls="--", lw=1.2, label=f"mean confidence {mean_conf:.1%}")
            ax.axvline(metrics["accuracy"], color=BLUE, ls=":", lw=1.6, label=f"accuracy {metrics['accuracy']:.1%}")
        ax.set(xlim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="images")
        ax.set_title("Confidence histogram")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, frameon=False)
        return png_bytes(fig, dpi=DPI)


def per_class_png(metrics: dict) -> bytes:
    """Precision, recall and F1 per class: grouped bars (few classes) or sorted F1 bars (many)."""
    rows = metrics["per_class"]
    names = [r["class"] for r in rows]
    with plt.rc_context(STYLE):
        if len(rows) <= 20:
            fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * len(rows) + 2), 4.8))
            x = np.arange(len(rows))
            for i, (key, color) in enumerate([("precision", BLUE), ("recall", ORANGE), ("f1", GREEN)]):
                ax.bar(x + (i - 1) * 0.27, [r[key] for r in rows], width=0.27, color=color, label=key if key != "f1" else "F1")
            ax.set_xticks(x, names, rotation=30, ha="right")
            ax.set(ylim=(0, 1.0), ylabel="score")
            ax.axhline(metrics["accuracy"], color=GREY, ls="--", lw=1, label=f"accuracy {metrics['accuracy']:.1%}")
            ax.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.01), frameon=False)
            ax.set_title("Per-class precision, recall and F1", pad=28)
        else:
            order = sorted(rows, key=lambda r: r["f1"])
            fig, ax = plt.subplots(figsize=(7, max(6.0, 0.16 * len(rows) + 1.5)))
            y = np.arange(len(order))
            ax.barh(y, [r["f1"] for r in order], color=GREEN, height=0.8, label="F1")
            ax.plot([r["precision"] for r in order], y, "|", color=BLUE, ms=6, label="precision")
            ax.plot([r["recall"] for r in order], y, "|", color=ORANGE, ms=6, label="recall")
            ax.set_yticks(y, [r["class"] for r in order], fontsize=max(4, int(600 / len(rows))))
            ax.set(xlim=(0, 1.02), xlabel="score", ylim=(-1, len(order)))
            ax.legend(loc="lower right")
            ax.set_title("Per-class precision, recall and F1")
        return png_bytes(fig, dpi=DPI)


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """Resize to side x side: nearest when enlarging (keeps pixels visible), bilinear when shrinking."""
    from PIL import Image

    pil = Image.fromarray(image)
    resample = Image.NEAREST if max(image.shape[:2]) <= side else Image.BILINEAR
    return np.asarray(pil.resize((side, side), resample))


def wrong_images_png(images: np.ndarray, true: list[str], pred: list[str], confidence: np.ndarray, columns: int = 6,
                     heatmaps: np.ndarray | None = None, heatmap_method: str | None = None) -> bytes:
    """A grid of images (uint8 N, H, W, 3) labelled with true and predicted class and confidence.

    ``heatmaps`` (N, H, W) in [0, 1]: each tile gets its overlay (``resnetlab.evaluation.explain``) on the
    right. The grid is one mosaic image in one axes with text on top: dozens of small axes would make
    matplotlib's layout cost seconds.
    """
    count = len(images)
    if count == 0:
        with plt.rc_context(STYLE | {"axes.grid": False}):
            fig, ax = plt.subplots(figsize=(6, 1.5))
            ax.axis("off")
            ax.text(0.5, 0.5, "No wrong predictions.", ha="center", va="center", fontsize=13)
            return png_bytes(fig, dpi=DPI)
    if heatmaps is not None:
        columns = min(columns, 4)  # two pictures per tile
    cols = min(columns, count)
    rows = int(np.ceil(count / cols))
    side, cell_w, label_h, header = 136, 184, 44, 40  # pixels at DPI
    if heatmaps is not None:
        from resnetlab.evaluation.explain import overlay

        side, cell_w = 120, 2 * 120 + 40
    cell_h = side + label_h + 12
    width, height = cols * cell_w, rows * cell_h + header
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    for i in range(count):
        r, c = divmod(i, cols)
        pictures = [_fit(images[i], side)]
        if heatmaps is not None:
            pictures.append(overlay(pictures[0], heatmaps[i]))
        x0 = c * cell_w + (cell_w - side * len(pictures) - 4 * (len(pictures) - 1)) // 2
        y0 = header + r * cell_h + label_h
        for k, picture in enumerate(pictures):
            canvas[y0: y0 + side, x0 + k * (side + 4): x0 + k * (side + 4) + side] = picture
        ax.text(c * cell_w + cell_w / 2, y0 - 4, f"true: {true[i]}\npred: {pred[i]} ({confidence[i]:.0%})",
                ha="center", va="bottom", fontsize=8.5, color="#991b1b")
    ax.imshow(canvas, interpolation="nearest", extent=(0, width, height, 0))
    title = "Most confidently wrong predictions"
    if heatmaps is not None:
        title += f" (right: {'CAM' if heatmap_method == 'cam' else 'Grad-CAM'} of the predicted class)"
    ax.text(width / 2, header / 2, title, ha="center", va="center", fontsize=12, fontweight="bold")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    return png_bytes(fig, dpi=DPI, tight=False, facecolor="white")
