"""The degradation experiment of He et al. 2016 (Sec. 4.2, Fig. 6): plain vs residual nets by depth.

"Deeper plain nets have higher training error" while deeper ResNets have lower: plain-D and
ResNet-D (identical layers and parameter counts, only the shortcut addition differs, see
``models/plain.py``) are trained with one budget and one set of seeds through the real engine,
logging per-layer gradient norms at a few steps. The result is a directory:

    OUT/recipe.yaml        the shared training config (every run = this + model, seed, run dir)
    OUT/runs/<model>/seed-<s>/   one engine run directory per (model, seed)
    OUT/degradation.png    training (dashed) and validation (bold) error curves, plain | ResNet
    OUT/grad_flow.png      gradient norm by layer depth, plain vs residual (log scale)
    OUT/results.md/.json   final errors, mean ± std and a 95% t-interval over seeds; the commands

Budgets: ``PRESETS["cpu"]`` (200 steps on a 1600-image subset: tens of minutes on an idle
2-core CPU, hours on a busy shared one) and
``PRESETS["full"]`` (the paper's 64k iterations of batch 128 on the 45k/5k split, for a GPU).
The learning-rate schedule has the paper's shape at any budget: divided by 10 at 50% and 75% of
training (32k and 48k of 64k iterations).
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from resnetlab.errors import ConfigError
from resnetlab.stats import pct, t_interval
from resnetlab.utils.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

KINDS = ("plain", "resnet")  # plain-D (no shortcuts) and ResNet-D (option A shortcuts)

PRESETS: dict[str, dict] = {
    # 200 steps of batch 32 on a 1600-image stratified subset. Smaller
    # batches buy more updates for the same compute; lr 0.05 (between the linear-scaling 0.025 of
    # Goyal et al. 2017 and the paper's 0.1) for fast early progress. Shows the early gap by depth,
    # not the paper's final error levels.
    "cpu": {"depths": [20, 56], "seeds": [1, 2], "epochs": 4, "steps": None, "limit_train": 1600, "val_size": 500,
            "batch_size": 32, "lr": 0.05},
    # He et al. 2016, Sec. 4.2: 64k iterations of mini-batch 128 on a 45k/5k train/val split.
    "full": {"depths": [20, 32, 44, 56], "seeds": [1, 2, 3], "epochs": None, "steps": 64000, "limit_train": None, "val_size": 5000,
             "batch_size": 128, "lr": 0.1},
}


@dataclass
class DegradationConfig:
    """Settings of one degradation experiment (see ``PRESETS`` for the two budgets)."""

    data: str = "cifar10"  # DATA spec (see CLI.md)
    depths: list[int] = field(default_factory=lambda: [20, 56])  # 6n+2 depths with plainD and resnetD registered
    seeds: list[int] = field(default_factory=lambda: [1, 2])
    epochs: int | None = 4  # budget in epochs ...
    steps: int | None = None  # ... or in optimizer steps (exactly one of the two)
    limit_train: int | None = 1600  # train on the first N images of a stratified shuffle (None: all)
    val_size: int | None = 500  # images held out of train for validation (same split for every seed)
    batch_size: int = 128  # the paper's mini-batch
    lr: float = 0.1  # the paper's initial learning rate (for batch 128)
    device: str = "auto"
    data_dir: str | None = None  # where cifar10/cifar100 archives are found or downloaded
    grad_steps: list[int] | None = None  # steps at which to log gradient norms (default: 0, 10%, 50%, last)
    preset: str | None = None  # the preset these settings started from, for the record

    def validate(self) -> None:
        from resnetlab.models import list_models

        if not self.depths:
            raise ConfigError("--depths: give at least one depth, e.g. 20,56")
        known = set(list_models())
        for depth in self.depths:
            missing = [f"{kind}{depth}" for kind in KINDS if f"{kind}{depth}" not in known]
            if missing:
                available = sorted(int(n[5:]) for n in known if n.startswith("plain") and f"resnet{n[5:]}" in known)
                raise ConfigError(f"--depths {depth}: no model {', '.join(missing)}; depths with both plain and ResNet "
                                  f"models: {', '.join(map(str, available))}")
        if len(set(self.depths)) != len(self.depths) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("--depths/--seeds: values must not repeat")
        if not self.seeds:
            raise ConfigError("--seeds: give at least one seed, e.g. 1,2")
        if (self.epochs is None) == (self.steps is None):
            raise ConfigError("give exactly one budget: --epochs N or --steps N")
        for name in ("epochs", "steps", "limit_train", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {value}: must be >= 1")
        if self.val_size is not None and self.val_size < 1:
            raise ConfigError(f"--val-size {self.val_size}: the experiment needs a validation split (>= 1 image)")
        if not self.lr > 0:
            raise ConfigError(f"--lr {self.lr}: must be > 0")
        if self.grad_steps is not None and any(s < 0 for s in self.grad_steps):
            raise ConfigError("--grad-steps: steps count from 0")

    def settings(self) -> dict:
        """The settings that decide the results (what a re-run into the same OUT must match)."""
        data = asdict(self)
        data.pop("preset")
        return data


def preset_config(name: str = "cpu", **overrides) -> DegradationConfig:
    """A preset's settings with ``overrides`` (keys of :class:`DegradationConfig`, None = keep the preset's)."""
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r}: expected one of {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    given = {k: v for k, v in overrides.items() if v is not None}
    if "epochs" in given or "steps" in given:  # an explicit budget replaces the preset's
        values["epochs"] = values["steps"] = None
    values.update(given)
    return DegradationConfig(preset=name, **values)


# --------------------------------------------------------------------------- the runs


def model_name(kind: str, depth: int) -> str:
    return f"{kind}{depth}"


def run_path(out_dir: Path, model: str, seed: int) -> Path:
    return out_dir / "runs" / model / f"seed-{seed}"


def budget_steps(cfg: DegradationConfig, steps_per_epoch: int) -> int:
    return cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch


def default_grad_steps(total_steps: int) -> list[int]:
    """Initialization, early (10%), the first lr drop (50%) and the last step."""
    return sorted({0, total_steps // 10, total_steps // 2, total_steps - 1})


def base_recipe(cfg: DegradationConfig, grad_steps: list[int]) -> dict:
    """The engine config shared by every run: He et al. 2016, Sec. 4.2, at the chosen budget."""
    unit, budget = ("epochs", cfg.epochs) if cfg.epochs is not None else ("steps", cfg.steps)
    recipe = {
        "data": {"spec": cfg.data, "data_dir": cfg.data_dir, "val_size": cfg.val_size, "limit_train": cfg.limit_train},
        # 4-pixel zero padding + random 32x32 crop + horizontal flip (Sec. 4.2).
        "augment": {"crop_padding": 4, "pad_mode": "zeros", "flip": True},
        "optim": {"name": "sgd", "lr": cfg.lr, "momentum": 0.9, "weight_decay": 0.0001},
        # lr / 10 at 32k and 48k of 64k iterations, i.e. at 50% and 75% of the budget.
        "schedule": {"name": "multistep", "unit": unit, "milestones": [budget * 0.5, budget * 0.75], "gamma": 0.1},
        "batch_size": cfg.batch_size,
        "device": cfg.device,
        "log_grad_norms": list(grad_steps),
    }
    if cfg.epochs is not None:
        recipe["epochs"] = cfg.epochs
    else:
        recipe["max_steps"] = cfg.steps
    return recipe


def experiment_command(cfg: DegradationConfig, out_dir: str | Path) -> str:
    """The command line that repeats this experiment, every setting spelled out."""
    args = ["resnetlab", "experiment", "degradation", "--preset", cfg.preset or "cpu",
            "--depths", ",".join(map(str, cfg.depths)), "--seeds", ",".join(map(str, cfg.seeds))]
    args += ["--epochs", str(cfg.epochs)] if cfg.epochs is not None else ["--steps", str(cfg.steps)]
    args += ["--limit-train", str(cfg.limit_train or 0), "--val-size", str(cfg.val_size), "--data", cfg.data]
    if cfg.data_dir:
        args += ["--data-dir", cfg.data_dir]
    args += ["--batch-size", str(cfg.batch_size), "--lr", f"{cfg.lr:g}", "--device", cfg.device]
    if cfg.grad_steps:
        args += ["--grad-steps", ",".join(map(str, cfg.grad_steps))]
    return shlex.join(args + ["--out", str(out_dir)])


def _check_same_experiment(out_dir: Path, cfg: DegradationConfig) -> None:
    saved = out_dir / "experiment.json"
    if not saved.is_file():
        return
    try:
        previous = json.loads(saved.read_text()).get("settings")
    except (OSError, json.JSONDecodeError):
        previous = None
    current = json.loads(json.dumps(cfg.settings()))  # lists, not tuples, as read back
    if previous is not None and previous != current:
        changed = sorted(k for k in current if previous.get(k) != current[k])
        raise ConfigError(f"--out {out_dir} holds an experiment with other settings ({', '.join(changed)} differ): "
                          "choose another --out, or repeat the same settings to continue it")


def run_degradation(cfg: DegradationConfig, out_dir: str | Path, *, splits=None, command: str | None = None) -> dict:
    """Train plainD and resnetD for every depth and seed, then write the figures and tables into ``out_dir``.

    Finished runs found in ``out_dir`` (same settings) are reused and interrupted ones resumed, so
    a long experiment can be continued by repeating its command. ``splits`` replaces loading
    ``cfg.data`` (tests). Returns the content of ``results.json``.
    """
    from resnetlab.config import build_config
    from resnetlab.engine import train
    from resnetlab.evaluation import evaluate_model
    from resnetlab.runs import RunDir

    cfg.validate()
    out_dir = Path(out_dir)
    _check_same_experiment(out_dir, cfg)
    command = command or experiment_command(cfg, out_dir)
    if splits is None:
        from resnetlab.data import load_splits

        splits = load_splits(cfg.data, data_dir=cfg.data_dir, val_size=cfg.val_size, limit_train=cfg.limit_train)
    if splits.val is None or len(splits.val) == 0:
        raise ConfigError(f"{cfg.data}: no validation images; the experiment needs --val-size >= 1")
    steps_per_epoch = len(splits.train) // cfg.batch_size  # the engine's training loader drops the last partial batch
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {len(splits.train)} training images")
    total = budget_steps(cfg, steps_per_epoch)
    grad_steps = sorted(set(cfg.grad_steps)) if cfg.grad_steps else default_grad_steps(total)
    if grad_steps[-1] >= total:
        raise ConfigError(f"--grad-steps {grad_steps[-1]}: training has only {total} steps (0..{total - 1})")

    out_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = out_dir / "recipe.yaml"
    header = (f"# Shared config of the degradation experiment (He et al. 2016, Sec. 4.2) written by:\n#   {command}\n"
              "# Each run: resnetlab train --recipe THIS --model MODEL --seed SEED --run-dir DIR\n")
    atomic_write_text(recipe_path, header + yaml.safe_dump(base_recipe(cfg, grad_steps), sort_keys=False))
    experiment = {"settings": cfg.settings(), "preset": cfg.preset, "command": command, "total_steps": total,
                  "steps_per_epoch": steps_per_epoch, "grad_steps": grad_steps}
    atomic_write_text(out_dir / "experiment.json", json.dumps(experiment, indent=1) + "\n")

    plan = [(depth, kind, seed) for depth in cfg.depths for kind in KINDS for seed in cfg.seeds]
    started = time.perf_counter()
    runs = []
    for index, (depth, kind, seed) in enumerate(plan, 1):
        model = model_name(kind, depth)
        path = run_path(out_dir, model, seed)
        train_command = f"resnetlab train --recipe {shlex.quote(str(recipe_path))} --model {model} --seed {seed} --run-dir {shlex.quote(str(path))}"
        if (path / "summary.json").is_file():
            log.info("[%d/%d] %s seed %d: finished earlier, reusing %s", index, len(plan), model, seed, path)
        else:
            resume = path if RunDir(path).config_path.is_file() else None
            log.info("[%d/%d] %s seed %d -> %s%s", index, len(plan), model, seed, path, " (resuming)" if resume else "")
            config = build_config(recipe_path, {"model.name": model, "seed": seed, "run_dir": str(path)})
            train(config, splits=splits, resume_from=resume, final_report=evaluate_model)
        runs.append(_run_record(RunDir(path), model, kind, depth, seed, train_command))

    results = summarize_runs(runs, cfg, experiment, time.perf_counter() - started)
    write_outputs(results, out_dir)
    return results


def _run_record(run, model: str, kind: str, depth: int, seed: int, train_command: str) -> dict:
    from resnetlab.evaluation.compare import read_grad_norms

    rows = run.read_metrics()
    if not rows:
        raise ConfigError(f"{run.path}: the run wrote no metrics (delete it and repeat the command)")
    summary = run.read_summary()
    last = rows[-1]
    return {
        "model": model, "kind": kind, "depth": depth, "seed": seed, "run_dir": str(run.path),
        "steps": last["step"], "epochs": last["epoch"], "train_time_s": summary.get("train_time_s"),
        "params": summary.get("params"),
        # Training error as in Fig. 6: on the augmented mini-batches of the last epoch.
        "final_train_error": 1.0 - last["train_acc"],
        "final_val_error": 1.0 - last["val_acc"],
        "best_val_error": 1.0 - max(r["val_acc"] for r in rows),
        "curve": [{"epoch": r["epoch"], "step": r["step"], "train_error": 1.0 - r["train_acc"], "val_error": 1.0 - r["val_acc"]}
                  for r in rows],
        "grad_norms": read_grad_norms(run.path / "grad_norms.jsonl"),  # the one reader of the engine's format
        "train_command": train_command,
    }


# --------------------------------------------------------------------------- results


METRICS = ("final_train_error", "final_val_error", "best_val_error")


def summarize_runs(runs: list[dict], cfg: DegradationConfig, experiment: dict, wall_s: float) -> dict:
    """Per model: each metric's mean, std and 95% t-interval over seeds (``resnetlab.stats.t_interval``)."""
    models = []
    for depth in cfg.depths:
        for kind in KINDS:
            members = [r for r in runs if r["kind"] == kind and r["depth"] == depth]
            entry = {"model": model_name(kind, depth), "kind": kind, "depth": depth, "params": members[0]["params"],
                     "seeds": [r["seed"] for r in members]}
            for key in METRICS:
                entry[key] = t_interval([r[key] for r in members])
            models.append(entry)
    return {
        "experiment": "degradation (He et al. 2016, Fig. 6)",
        "command": experiment["command"],
        "preset": cfg.preset,
        "settings": cfg.settings(),
        "total_steps": experiment["total_steps"],
        "steps_per_epoch": experiment["steps_per_epoch"],
        "grad_steps": experiment["grad_steps"],
        "wall_time_s": wall_s,  # of this invocation (reused runs cost nothing here)
        "train_time_s": sum(r["train_time_s"] or 0.0 for r in runs),
        "models": models,
        "gaps": depth_gaps(models),
        "runs": runs,
        "files": ["degradation.png", "grad_flow.png", "results.md", "results.json", "recipe.yaml"],
    }


def depth_gaps(models: list[dict]) -> list[dict]:
    """Deepest minus shallowest mean final training error, per kind (positive for plain nets = degradation)."""
    gaps = []
    for kind in KINDS:
        members = sorted((m for m in models if m["kind"] == kind), key=lambda m: m["depth"])
        if len(members) < 2:
            continue
        low, high = members[0], members[-1]
        gaps.append({"kind": kind, "shallow": low["model"], "deep": high["model"],
                     "train_error_diff": high["final_train_error"]["mean"] - low["final_train_error"]["mean"],
                     "val_error_diff": high["final_val_error"]["mean"] - low["final_val_error"]["mean"]})
    return gaps


def _cell(value: float | None) -> str:
    # Table cells: the % sign is in the column header, and "–" reads as "not measured".
    return pct(value, missing="–", sign="")


def _mean_std(entry: dict) -> str:
    if entry["std"] is None:
        return _cell(entry["mean"])
    return f"{_cell(entry['mean'])} ± {_cell(entry['std'])}"


def _interval(entry: dict) -> str:
    # An error rate lies in [0, 1]; with 2 seeds the t-interval (t = 12.7) often reaches past it.
    if entry["interval"] is None:
        return "–"
    low, high = entry["interval"]
    return f"[{_cell(max(low, 0.0))}, {_cell(min(high, 1.0))}]"


def markdown(results: dict) -> str:
    s = results["settings"]
    budget = f"{s['epochs']} epochs" if s["epochs"] is not None else f"{s['steps']} steps"
    data = f"{s['data']}" + (f", first {s['limit_train']} training images" if s["limit_train"] else "")
    lines = [
        "# Degradation experiment (He et al. 2016, Fig. 6)", "",
        f"Plain and residual networks of equal depth and parameter count, trained with one budget: {budget} "
        f"({results['total_steps']} steps of batch {s['batch_size']}), lr {s['lr']} divided by 10 at 50% and 75%, "
        f"data {data}, {s['val_size']} validation images, seeds {', '.join(map(str, s['seeds']))}. "
        f"Training time {results['train_time_s'] / 60:.1f} min (sum over the {len(results['runs'])} runs; device "
        f"{s['device']}).", "",
        "Errors in %, mean ± std over seeds, with the 95% t-interval of the mean (needs ≥ 2 seeds; clipped to [0, 100]; "
        "with 2 seeds it is wide: t(0.975, 1) = 12.7). Training error is "
        "measured on the augmented mini-batches of the last epoch, as in the paper; validation error after the last epoch.", "",
        "| model | depth | shortcuts | params | seeds | train error | 95% CI | val error | 95% CI | best val error |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results["models"]:
        shortcut = "none (plain)" if m["kind"] == "plain" else "identity (A)"
        params = f"{m['params'] / 1e6:.2f}M" if m["params"] else "–"
        lines.append(f"| {m['model']} | {m['depth']} | {shortcut} | {params} | {len(m['seeds'])} | "
                     f"{_mean_std(m['final_train_error'])} | {_interval(m['final_train_error'])} | "
                     f"{_mean_std(m['final_val_error'])} | {_interval(m['final_val_error'])} | {_mean_std(m['best_val_error'])} |")
    if results["gaps"]:
        lines += ["", "Deeper minus shallower, mean final training error (positive: the deeper net trains worse):", ""]
        for g in results["gaps"]:
            lines.append(f"- {g['deep']} − {g['shallow']}: {100 * g['train_error_diff']:+.2f} points training error, "
                         f"{100 * g['val_error_diff']:+.2f} points validation error")
    lines += ["", "![degradation](degradation.png)", "", "![gradient flow](grad_flow.png)", "", "## Commands", "",
              "The experiment:", "", "```bash", results["command"], "```", "",
              "Each run on its own (the shared settings are in `recipe.yaml`):", "", "```bash"]
    lines += [r["train_command"] for r in results["runs"]]
    lines += ["```", "", "Per-seed results:", "", "| model | seed | steps | train error | val error | time | run |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for r in results["runs"]:
        lines.append(f"| {r['model']} | {r['seed']} | {r['steps']} | {_cell(r['final_train_error'])} | "
                     f"{_cell(r['final_val_error'])} | {r['train_time_s'] or 0:.0f}s | `{r['run_dir']}` |")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out_dir: Path) -> None:
    """degradation.png, grad_flow.png, results.md and results.json (each written atomically)."""
    from resnetlab.experiments.figures import degradation_png, grad_flow_png

    atomic_write_bytes(out_dir / "degradation.png", degradation_png(results))
    atomic_write_bytes(out_dir / "grad_flow.png", grad_flow_png(results))
    atomic_write_text(out_dir / "results.md", markdown(results))
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1) + "\n")
