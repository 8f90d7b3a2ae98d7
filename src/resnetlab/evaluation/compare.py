"""Compare training runs: a table of results with intervals and overlaid curves.

A run directory is the engine's (ARCHITECTURE.md): config.yaml, metrics.jsonl, summary.json,
optionally eval/metrics.json and grad_norms.jsonl. A multi-seed parent holds seeds.json and
seed-N/ run directories; it is shown as one row with mean ± std over seeds.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from resnetlab.errors import DataError  # noqa: E402
from resnetlab.evaluation.metrics import accuracy_ci_from_counts, nan_safe  # noqa: E402
from resnetlab.evaluation.significance import compare_pair, markdown_section as significance_markdown  # noqa: E402
from resnetlab.runs import RunDir  # noqa: E402
from resnetlab.stats import t_interval  # noqa: E402
from resnetlab.utils.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from resnetlab.utils.figures import STYLE, plt, png_bytes  # noqa: E402

NORM_LAYER = re.compile(r"(^|\.)(bn\d*|norm\d*|.*batchnorm.*|ln\d*|gn\d*)$", re.IGNORECASE)
SHORTCUT = re.compile(r"(shortcut|downsample|skip)", re.IGNORECASE)


@dataclass
class Run:
    """One run directory, or a multi-seed group of them (``seeds`` non-empty)."""

    path: Path
    name: str
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # metrics.jsonl
    eval: dict | None = None  # eval/metrics.json of the test split, when present
    grad_norms: list[dict] = field(default_factory=list)
    seeds: list["Run"] = field(default_factory=list)


# ----------------------------------------------------------------------------- reading
def read_grad_norms(path: str | Path) -> list[dict]:
    """Records of ``grad_norms.jsonl`` as ``{"step": s, "layers": [{"name", "depth", "grad_norm"}, ...]}``.

    The engine writes ``{"step": s, "grad_norms": {param_name: norm, ...}}``; the depth of a layer is its
    position among the weights of convolutions and linear layers on the main path (normalization
    layers, biases and projection shortcuts are left out), in the model's parameter order.
    """
    out = []
    path = Path(path)
    for record in RunDir(path.parent).read_jsonl(path.name):
        if not isinstance(record.get("grad_norms"), dict):
            continue
        layers = []
        for name, norm in record["grad_norms"].items():
            module, _, kind = name.rpartition(".")
            if kind != "weight" or NORM_LAYER.search(module) or SHORTCUT.search(module) or norm is None:
                continue
            layers.append({"name": module, "depth": len(layers), "grad_norm": float(norm)})
        if layers:
            out.append({"step": record.get("step"), "layers": layers})
    return out


def _seed_dirs(path: Path) -> list[Path]:
    def seed_number(p: Path) -> float:
        try:
            return int(p.name.split("-", 1)[1])
        except ValueError:
            return math.inf

    return sorted((p for p in path.glob("seed-*") if p.is_dir() and RunDir(p).is_run()), key=seed_number)


def read_run(path: str | Path) -> Run:
    """A run directory or a multi-seed parent (``seeds.json`` and/or ``seed-N/`` folders)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"run directory not found: {path}")
    seed_dirs = _seed_dirs(path)
    if seed_dirs and not (path / "summary.json").is_file():
        seeds = [read_run(p) for p in seed_dirs]
        group = Run(path=path, name=path.name, config=seeds[0].config, summary=RunDir(path).read_json("seeds.json") or {}, seeds=seeds)
        return group
    run = RunDir(path)
    if not run.is_run():
        raise DataError(f"{path} is not a run directory (no summary.json, metrics.jsonl or config.yaml; "
                        "a multi-seed run holds seed-N/ folders)")
    return Run(
        path=path,
        name=path.name,
        config=run.read_config(),
        summary=run.read_summary(),
        rows=run.read_metrics(),
        eval=run.read_eval(),
        grad_norms=read_grad_norms(path / "grad_norms.jsonl"),
    )


# ----------------------------------------------------------------------------- summarizing
def _val_count(run: Run) -> int | None:
    # The validation split's size is the resolved config's data.val_size (summary.json does not repeat it).
    value = (run.config.get("data") or {}).get("val_size") if isinstance(run.config.get("data"), dict) else None
    return int(value) if isinstance(value, (int, float)) and value >= 1 else None


def _acc_entry(value, count: int | None, ci: dict | None = None) -> dict | None:
    if value is None:
        return None
    entry = {"value": float(value), "low": None, "high": None, "n": count}
    if ci and ci.get("low") is not None:
        entry.update(low=ci["low"], high=ci["high"], n=ci.get("n", count))
    elif count:
        # The same percentile bootstrap the evaluation report uses, from the count alone.
        ci = accuracy_ci_from_counts(round(value * count), count)
        entry.update(low=ci["low"], high=ci["high"])
    return entry


def _single_row(run: Run) -> dict:
    s, last = run.summary, (run.rows[-1] if run.rows else {})
    val = s.get("best_val_acc")
    if val is None and run.rows:
        vals = [r.get("val_acc") for r in run.rows if r.get("val_acc") is not None]
        val = max(vals) if vals else None
    test, test_ci, test_n = s.get("test_acc"), None, None
    if run.eval:
        test = run.eval.get("accuracy", test)
        test_ci, test_n = run.eval.get("accuracy_ci"), run.eval.get("num_samples")
    config_model = run.config.get("model") if isinstance(run.config.get("model"), dict) else {}
    config_data = run.config.get("data") if isinstance(run.config.get("data"), dict) else {}
    return {
        "name": run.name,
        "path": str(run.path),
        "model": s.get("model") or config_model.get("name"),
        "params": s.get("params"),
        "recipe": Path(str(s.get("recipe") or run.config.get("recipe") or "")).stem or None,
        "data": s.get("data") or config_data.get("spec"),
        "epochs": s.get("epochs", last.get("epoch")),
        "steps": s.get("steps", last.get("step")),
        "train_time_s": s.get("train_time_s", last.get("elapsed_s")),
        "seeds": [s.get("seed", run.config.get("seed"))],
        "val_acc": _acc_entry(val, _val_count(run)),
        "test_acc": _acc_entry(test, test_n, test_ci),
        "final_train_loss": last.get("train_loss"),
    }


def _mean_std(values: list[float]) -> dict | None:
    summary = t_interval(values)
    if not summary["n"]:
        return None
    # value/low/high are the table's columns, shared with single runs' bootstrap entries.
    low, high = summary["interval"] or (None, None)
    return {**summary, "value": summary["mean"], "low": low, "high": high}


def summarize_run(run: Run) -> dict:
    """One table row: single runs carry bootstrap intervals, seed groups mean ± std and a t-interval."""
    if not run.seeds:
        return _single_row(run)
    rows = [_single_row(r) for r in run.seeds]
    first = rows[0]
    times = [r["train_time_s"] for r in rows if r["train_time_s"] is not None]
    return {
        **{k: first[k] for k in ("model", "params", "recipe", "data", "epochs", "steps")},
        "name": run.name,
        "path": str(run.path),
        "train_time_s": float(np.mean(times)) if times else None,
        "seeds": [r["seeds"][0] for r in rows],
        "val_acc": _mean_std([r["val_acc"]["value"] for r in rows if r["val_acc"]]),
        "test_acc": _mean_std([r["test_acc"]["value"] for r in rows if r["test_acc"]]),
        "final_train_loss": _mean_std([r["final_train_loss"] for r in rows if r["final_train_loss"] is not None]),
        "per_seed": rows,
    }


# ----------------------------------------------------------------------------- formatting
def format_acc(entry: dict | None) -> str:
    if not entry:
        return "-"
    if "mean" in entry:  # a seed group
        return f"{100 * entry['mean']:.2f} ± {100 * (entry['std'] or 0):.2f}% (n={entry['n']})"
    text = f"{100 * entry['value']:.2f}%"
    if entry.get("low") is not None:
        text += f" [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"
    return text


def _fmt_time(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    return f"{seconds:.0f}s" if seconds < 120 else (f"{seconds / 60:.1f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h")


def _fmt_params(params) -> str:
    if not isinstance(params, (int, float)):
        return "-"
    return f"{params / 1e6:.2f}M" if params >= 1e5 else f"{params / 1e3:.1f}k"


TABLE_COLUMNS = ("run", "model", "params", "recipe", "epochs", "time", "val acc", "test acc")


def table_rows(rows: list[dict]) -> list[list[str]]:
    return [[r["name"], str(r["model"] or "-"), _fmt_params(r["params"]), str(r["recipe"] or "-"),
             str(r["epochs"] if r["epochs"] is not None else "-"), _fmt_time(r["train_time_s"]),
             format_acc(r["val_acc"]), format_acc(r["test_acc"])] for r in rows]


def text_table(rows: list[dict]) -> str:
    cells = [list(TABLE_COLUMNS)] + table_rows(rows)
    widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * 4 + "---:|" * 4]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table_rows(rows)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def _series(run: Run, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(epochs, values, std or None) of a metric; seed groups give the mean over seeds per epoch."""
    members = run.seeds or [run]
    per_epoch: dict[float, list[float]] = {}
    for member in members:
        for row in member.rows:
            if row.get(key) is not None and row.get("epoch") is not None:
                per_epoch.setdefault(float(row["epoch"]), []).append(float(row[key]))
    epochs = np.array(sorted(per_epoch))
    values = np.array([np.mean(per_epoch[e]) for e in epochs])
    std = np.array([np.std(per_epoch[e]) for e in epochs]) if run.seeds else None
    return epochs, values, std


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def curves_png(runs: list[Run]) -> bytes:
    """Train loss and validation accuracy against epoch, one colour per run (bands: ±1 std over seeds)."""
    colors = _colors(len(runs))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6))
        for run, color in zip(runs, colors):
            label = run.name + (f" ({len(run.seeds)} seeds)" if run.seeds else "")
            for ax, key in zip(axes, ("train_loss", "val_acc")):
                epochs, values, std = _series(run, key)
                if not len(epochs):
                    continue
                scale = 100.0 if key == "val_acc" else 1.0
                ax.plot(epochs, values * scale, color=color, lw=1.8, marker="o" if len(epochs) < 15 else None, ms=3, label=label)
                if std is not None:
                    ax.fill_between(epochs, (values - std) * scale, (values + std) * scale, color=color, alpha=0.18, lw=0)
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set(title="Training loss", xlabel="epoch", ylabel="cross-entropy")
        axes[1].set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy (%)")
        handles, labels = axes[0].get_legend_handles_labels()
        if not handles:
            handles, labels = axes[1].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, -0.02), ncols=min(4, max(1, len(labels))), frameon=False)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        return png_bytes(fig, dpi=120)


def error_curves_png(runs: list[Run]) -> bytes:
    """Training error (solid) and validation error (dashed) in %, as in He et al. 2016, Fig. 6."""
    colors = _colors(len(runs))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 5))
        for run, color in zip(runs, colors):
            for key, style, suffix in (("train_acc", "-", "train"), ("val_acc", "--", "val")):
                epochs, values, _ = _series(run, key)
                if len(epochs):
                    ax.plot(epochs, 100 * (1 - values), ls=style, color=color, lw=1.6, label=f"{run.name} {suffix}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title="Error: training (solid) and validation (dashed)", xlabel="epoch", ylabel="error (%)")
        if ax.get_legend_handles_labels()[0]:  # runs without per-epoch metrics (imported models) draw no curve
            ax.legend(fontsize=8, ncols=2)
        return png_bytes(fig, dpi=120)


def grad_norms_png(runs: list[Run]) -> bytes | None:
    """Gradient norm against depth (log scale) at the first logged step and averaged over all logged steps."""
    members = [(run, run.seeds[0] if run.seeds else run) for run in runs]
    members = [(run, m) for run, m in members if m.grad_norms]
    if not members:
        return None
    colors = _colors(len(runs))
    color_of = {run.name: c for run, c in zip(runs, colors)}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6), sharey=True)
        for run, member in members:
            records = member.grad_norms
            first = records[0]
            depth = [layer["depth"] for layer in first["layers"]]
            label = run.name + (f" ({member.name})" if run.seeds else "")
            axes[0].plot(depth, [layer["grad_norm"] for layer in first["layers"]], color=color_of[run.name], lw=1.6, marker=".",
                         label=label)
            by_depth: dict[int, list[float]] = {}
            for record in records:
                for layer in record["layers"]:
                    by_depth.setdefault(layer["depth"], []).append(layer["grad_norm"])
            depths = sorted(by_depth)
            axes[1].plot(depths, [np.mean(by_depth[d]) for d in depths], color=color_of[run.name], lw=1.6, marker=".",
                         label=f"{label}, {len(records)} steps")
            axes[0].set_title("Gradient norm by depth, first logged step")
        axes[1].set_title("Gradient norm by depth, mean over logged steps")
        for ax in axes:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("layer depth (input → output)")
            ax.legend(fontsize=8)
        axes[0].set_ylabel("L2 norm of the weight gradient")
        fig.tight_layout()
        return png_bytes(fig, dpi=120)


# ----------------------------------------------------------------------------- entry point
def compare_runs(paths: list[str | Path], out_dir: str | Path | None = None, *, command: str | None = None) -> dict:
    """Read runs, write compare.json, compare.md and curve PNGs into ``out_dir`` (when given); return the table."""
    if not paths:
        raise DataError("compare: give at least one run directory")
    runs = [read_run(p) for p in paths]
    names = [r.name for r in runs]
    for i, run in enumerate(runs):  # same folder names under different parents: disambiguate
        if names.count(run.name) > 1:
            run.name = f"{run.path.parent.name}/{run.name}"
    rows = [summarize_run(run) for run in runs]
    # Each run against the first (the baseline), paired on the same images: McNemar, bootstrap, seeds.
    significance = [compare_pair(run, runs[0]) for run in runs[1:]]
    result = {
        "runs": rows,
        "significance": significance,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "command": command or shlex.join(sys.argv),
        "table": text_table(rows),
        "files": [],
    }
    if out_dir is None:
        return nan_safe(result)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = {"curves.png": curves_png(runs), "error_curves.png": error_curves_png(runs)}
    grad = grad_norms_png(runs)
    if grad is not None:
        pngs["grad_norms.png"] = grad
    for name, data in pngs.items():
        atomic_write_bytes(out_dir / name, data)
    result["files"] = sorted([*pngs, "compare.md", "compare.json"])
    md = [
        "# Run comparison", "",
        f"Command: `{result['command']}`", "",
        markdown_table(rows), "",
        "Accuracies: single runs show the value with its 95% bootstrap interval in brackets (when the split size is known); "
        "multi-seed runs show mean ± std over seeds (n = seeds) and carry a 95% t-interval in compare.json.", "",
        *significance_markdown(significance),
    ]
    md += [f"![{name}]({name})" for name in pngs]
    atomic_write_text(out_dir / "compare.md", "\n".join(md) + "\n")
    result = nan_safe(result)
    atomic_write_text(out_dir / "compare.json", json.dumps(result, indent=1, allow_nan=False) + "\n")
    return result
