"""Accuracy against wall-clock budget: ``resnetlab train --budget B --seed S`` for each budget and seed.

    python benchmarks/bench_budget.py --budgets 5m,10m,25m --seeds 0,1,2 \
        --data ../shared/data/cifar10-jpeg-train.tar.gz --out /tmp/bench-budget

Each run is a real CLI process timed from outside (wall from start to exit, everything included).
Writes OUT/budget.json (one row per run: budget, seed, plan, predicted and wall seconds, wall/budget,
validation accuracy with the recipe's TTA, peak RSS; then per budget mean, std and the 95% t interval)
and OUT/budget.png (accuracy against budget, with the intervals). Run it on a quiet machine: the
probe measures the machine as it is, so other jobs change the plan.

``--record`` also runs the record recipe once (airbench94_muon ported into the engine: widths
64/256/256, batch 2000 in one pass, 8 epochs, lr 1.66; the precision the budgeted runs use, bf16 where
native) and plots its single point beside the budgets, on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

from resnetlab.budget import parse_duration
from resnetlab.stats import t_interval
from resnetlab.utils.figures import png_bytes


def run_one(recipe: str, data: str, budget: str, seed: int, run_dir: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "resnetlab", "train", "--recipe", recipe, "--data", data, "--budget", budget,
                           "--seed", str(seed), "--run-dir", str(run_dir)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"budget": budget, "seed": seed, "error": done.stderr.strip().splitlines()[-1:]}
    summary = json.loads((run_dir / "summary.json").read_text())
    chosen = yaml.safe_load((run_dir / "config.yaml").read_text())["budget"]["chosen"]
    seconds = parse_duration(budget)
    return {"budget": budget, "budget_s": seconds, "seed": seed, "plan": chosen["plan"], "predicted_s": chosen["predicted_s"],
            "wall_s": round(wall, 1), "wall_over_budget": round(wall / seconds, 3), "accuracy": summary.get("test_acc"),
            "split": summary.get("test_split"), "stopped_early": summary.get("stopped_early"), "peak_rss_mb": summary.get("peak_rss_mb")}


# airbench94_muon's recipe in the engine (benchmarks/speed.md, "The record recipe"), at the budgeted
# runs' precision so that the plot compares recipes, not arithmetic.
RECORD_OVERRIDES = ["--epochs", "8", "--batch-size", "2000", "--set", "model.options.widths=[64,256,256]",
                    "--set", "micro_batch=null", "--set", "eval_batch_size=2000", "--set", "optim.lr=1.66"]


def run_record(recipe: str, data: str, seed: int, run_dir: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "resnetlab", "train", "--recipe", recipe, "--data", data, "--seed", str(seed),
                           "--run-dir", str(run_dir), *RECORD_OVERRIDES], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"seed": seed, "error": done.stderr.strip().splitlines()[-1:]}
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "overrides": " ".join(RECORD_OVERRIDES), "wall_s": round(wall, 1), "accuracy": summary.get("test_acc"),
            "split": summary.get("test_split"), "peak_rss_mb": summary.get("peak_rss_mb")}


def cpu_description() -> str:
    """``lscpu``'s model name and the flags that decide the plan table (bf16 or fp32 CPU)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {' '.join(shown)}"


def plot(rows: list[dict], per_budget: dict, record: dict | None = None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ok = [r for r in rows if r.get("accuracy") is not None]
    ax.scatter([r["budget_s"] / 60 for r in ok], [100 * r["accuracy"] for r in ok], s=12, color="#94a3b8", label="one seed")
    xs = [parse_duration(b) / 60 for b in per_budget]
    means = [100 * per_budget[b]["mean"] for b in per_budget]
    errors = [[100 * (per_budget[b]["mean"] - per_budget[b]["interval"][0]) if per_budget[b]["interval"] else 0 for b in per_budget],
              [100 * (per_budget[b]["interval"][1] - per_budget[b]["mean"]) if per_budget[b]["interval"] else 0 for b in per_budget]]
    ax.errorbar(xs, means, yerr=errors, fmt="o-", color="#2563eb", capsize=3, label="mean, 95% t interval")
    if record and record.get("accuracy") is not None:
        ax.scatter([record["wall_s"] / 60], [100 * record["accuracy"]], marker="*", s=120, color="#dc2626", zorder=3,
                   label="record recipe (airbench94_muon port), 8 epochs, one seed")
    ax.set_xlabel("budget; for the record, its wall time (minutes, everything included)")
    ax.set_ylabel("validation accuracy with TTA (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/fast.yaml")
    parser.add_argument("--data", required=True)
    parser.add_argument("--budgets", default="5m,10m,25m")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", required=True)
    parser.add_argument("--merge", help="an earlier budget.json from this machine: its runs join this run's table and plot")
    parser.add_argument("--record", action="store_true", help="also run the record recipe once (seed 0) for its point")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    new_budgets = [b for b in args.budgets.split(",") if b]  # "" with --record: the record point only
    rows, budgets = [], list(new_budgets)
    record = None
    if args.merge:  # budgets measured in an earlier session on the same kind of machine
        earlier = json.loads(Path(args.merge).read_text())
        rows = [r for r in earlier["rows"] if r["budget"] not in new_budgets]
        record = earlier.get("record")
        budgets = sorted({r["budget"] for r in rows} | set(budgets), key=parse_duration)
    for budget in new_budgets:
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_one(args.recipe, args.data, budget, seed, out / f"run-{budget}-seed{seed}")
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.record:
        measured = run_record(args.recipe, args.data, 0, out / "run-record-seed0")
        print(json.dumps({"record": measured}), flush=True)
        if measured.get("accuracy") is not None or record is None:  # a failed run keeps a merged good point
            record = measured
    per_budget = {}
    for budget in budgets:
        accs = [r["accuracy"] for r in rows if r["budget"] == budget and r.get("accuracy") is not None]
        walls = [r["wall_over_budget"] for r in rows if r["budget"] == budget and "wall_over_budget" in r]
        if accs:
            per_budget[budget] = {**t_interval(accs), "max_wall_over_budget": max(walls)}
    result = {"machine": cpu_description(), "recipe": args.recipe, "rows": rows, "per_budget": per_budget, "record": record}
    (out / "budget.json").write_text(json.dumps(result, indent=2) + "\n")
    if per_budget or (record and record.get("accuracy") is not None):
        (out / "budget.png").write_bytes(plot(rows, per_budget, record))
    for budget, stats in per_budget.items():
        interval = stats["interval"] or [stats["mean"]] * 2
        print(f"{budget}: {100 * stats['mean']:.2f}% (95% CI {100 * interval[0]:.2f}-{100 * interval[1]:.2f}, n={stats['n']}), "
              f"worst wall/budget {stats['max_wall_over_budget']:.3f}")
    if record and record.get("accuracy") is not None:
        print(f"record recipe: {100 * record['accuracy']:.2f}% in {record['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
