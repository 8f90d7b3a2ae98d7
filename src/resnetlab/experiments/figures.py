"""Figures of the degradation experiment, drawn from its ``results`` dict (see ``degradation.py``).

``degradation_png``: error against iterations in the manner of He et al. 2016, Fig. 6, whose
caption reads "Dashed lines denote training error, and bold lines denote testing error";
left plain nets, right ResNets, one colour per depth (the same in both panels).
``grad_flow_png``: the L2 norm of each layer's weight gradient against the layer's depth
(input -> output, log scale) at the first and last logged steps, plain vs residual.
"""

from __future__ import annotations

import numpy as np

from resnetlab.utils.figures import STYLE, plt, png_bytes

# The paper's convention (Fig. 4 and 6): thin dashed = training error, bold solid = held-out error.
TRAIN_LINE = {"ls": "--", "lw": 1.3}
VAL_LINE = {"ls": "-", "lw": 2.4}
KIND_TITLES = {"plain": "Plain networks", "resnet": "ResNets"}
KIND_COLORS = {"plain": "#d62728", "resnet": "#1f77b4"}


def _depth_colors(depths: list[int]) -> dict[int, tuple]:
    cmap = plt.get_cmap("tab10")
    order = [1, 2, 0, 4, 3, 5, 6, 7, 8, 9]  # orange, green, blue, purple, red ... (red/blue also mean plain/resnet below)
    return {d: cmap(order[i % len(order)]) for i, d in enumerate(sorted(depths))}


def _mean_curve(runs: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over seeds of a per-epoch error, in %, on the epochs all seeds reached."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for point in run["curve"]:
            by_step.setdefault(point["step"], []).append(100.0 * point[key])
    steps = np.array([s for s in sorted(by_step) if len(by_step[s]) == len(runs)])
    values = [np.array(by_step[s]) for s in steps]
    return steps, np.array([v.mean() for v in values]), np.array([v.min() for v in values]), np.array([v.max() for v in values])


def degradation_png(results: dict) -> bytes:
    """Two panels (plain | ResNet): per depth, mean training error (dashed) and validation error (bold)."""
    depths = sorted({m["depth"] for m in results["models"]})
    colors = _depth_colors(depths)
    n_seeds = len(results["settings"]["seeds"])
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, kind in zip(axes, ("plain", "resnet")):
            for depth in depths:
                runs = [r for r in results["runs"] if r["kind"] == kind and r["depth"] == depth]
                label = f"{kind}-{depth}" if kind == "plain" else f"ResNet-{depth}"
                for key, style, suffix in (("train_error", TRAIN_LINE, "train"), ("val_error", VAL_LINE, "val")):
                    steps, mean, low, high = _mean_curve(runs, key)
                    ax.plot(steps, mean, color=colors[depth], marker="o" if len(steps) < 12 else None, ms=3,
                            label=f"{label} {suffix}", **style)
                    if n_seeds > 1:
                        ax.fill_between(steps, low, high, color=colors[depth], alpha=0.10, lw=0)
            ax.set_title(KIND_TITLES[kind])
            ax.set_xlabel("iterations (optimizer steps)")
            ax.legend(fontsize=8, ncols=2)
        axes[0].set_ylabel("error (%)")
        seeds = f"mean of {n_seeds} seeds, band: min–max" if n_seeds > 1 else "1 seed"
        fig.suptitle(f"Training error (dashed) and validation error (bold); {seeds}", fontsize=10)
        fig.tight_layout()
        return png_bytes(fig, dpi=100)


def _layer_norms(run: dict, which: int) -> tuple[int, np.ndarray] | None:
    """(step, grad norms by depth) of a run's first (0) or last (-1) grad-norm record."""
    if not run["grad_norms"]:
        return None
    record = run["grad_norms"][which]
    return record["step"], np.array([layer["grad_norm"] for layer in record["layers"]])


def grad_flow_png(results: dict) -> bytes:
    """Rows: first and last logged step; columns: depths; lines: plain vs ResNet (geometric mean over seeds)."""
    depths = sorted({m["depth"] for m in results["models"]})
    steps = results["grad_steps"]
    rows = [0, -1] if len(steps) > 1 else [0]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(rows), len(depths), figsize=(4.6 * len(depths) + 0.6, 3.3 * len(rows)), squeeze=False)
        for r, which in enumerate(rows):
            for c, depth in enumerate(depths):
                ax = axes[r][c]
                for kind in ("plain", "resnet"):
                    curves = [_layer_norms(run, which) for run in results["runs"] if run["kind"] == kind and run["depth"] == depth]
                    curves = [cv for cv in curves if cv is not None and len(cv[1])]
                    if not curves:
                        continue
                    layers = np.arange(1, len(curves[0][1]) + 1)
                    for _, norms in curves:  # each seed, faint
                        ax.plot(layers, norms, color=KIND_COLORS[kind], lw=0.8, alpha=0.3)
                    stacked = np.stack([norms for _, norms in curves])
                    geo = np.exp(np.log(np.clip(stacked, 1e-30, None)).mean(axis=0))
                    name = f"plain-{depth}" if kind == "plain" else f"ResNet-{depth}"
                    ax.plot(layers, geo, color=KIND_COLORS[kind], lw=2, marker=".", ms=4, label=name)
                ax.set_yscale("log")
                ax.set_title(f"depth {depth}, step {steps[which]}")
                ax.legend(fontsize=8)
                if r == len(rows) - 1:
                    ax.set_xlabel("layer (1 = first conv, last = fc)")
                if c == 0:
                    ax.set_ylabel("‖∂loss/∂W‖₂")
        fig.suptitle("Gradient norm of each layer's weights (thin: single seeds, bold: geometric mean)", fontsize=10)
        fig.tight_layout()
        return png_bytes(fig, dpi=100)
