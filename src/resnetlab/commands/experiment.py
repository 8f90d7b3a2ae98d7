"""``resnetlab experiment degradation``: plain vs residual networks by depth (He et al. 2016, Fig. 6)."""

from __future__ import annotations

import argparse
import sys

from resnetlab.errors import ConfigError

EPILOG = """\
examples:
  resnetlab experiment degradation --data ../shared/data/cifar10-jpeg-train.tar.gz --out runs/degradation-cpu
  resnetlab experiment degradation --preset full --data cifar10 --device cuda --out runs/degradation-full
  resnetlab experiment degradation --depths 20,32,44,56 --seeds 1,2,3 --epochs 20 --limit-train 20000

presets (explicit options win):
  cpu   depths 20,56, seeds 1,2, 4 epochs of batch 32 (200 steps) on the first 1600 training images,
        500 for validation, lr 0.05
  full  depths 20,32,44,56, seeds 1,2,3, 64000 steps of batch 128 at lr 0.1 (He et al. 2016),
        all of train minus 5000 for validation

Writes OUT/degradation.png, OUT/grad_flow.png, OUT/results.md, OUT/results.json, OUT/recipe.yaml and one
run directory per model and seed under OUT/runs/. Repeating the command continues an interrupted experiment.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="reproduce a paper's experiment with the real engine (degradation: plain vs ResNet by depth)",
        description="Experiments that train several runs and summarize them in figures and tables.",
    )
    sub = p.add_subparsers(title="experiments", metavar="EXPERIMENT")
    d = sub.add_parser(
        "degradation",
        help="plain vs residual networks at several depths (He et al. 2016, Fig. 6)",
        description="Train plainD and resnetD for each depth and seed with one budget, logging gradient norms; "
        "write training/validation error curves, gradient norm by depth and a table of final errors with 95% intervals.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--preset", default="cpu", choices=("cpu", "full"), help="budget preset (default: cpu)")
    d.add_argument("--depths", help="comma-separated 6n+2 depths with plain and ResNet models (preset cpu: 20,56)")
    d.add_argument("--seeds", help="comma-separated seeds, the same for every model (preset cpu: 1,2)")
    budget = d.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="budget in epochs (preset cpu: 4)")
    budget.add_argument("--steps", type=int, help="budget in optimizer steps (preset full: 64000)")
    d.add_argument("--limit-train", type=int, help="train on the first N images of a stratified shuffle; 0 = all (preset cpu: 1600)")
    d.add_argument("--val-size", type=int, help="validation images held out of train (preset cpu: 500, full: 5000)")
    d.add_argument("--data", default="cifar10", help="cifar10, an archive or an image folder (default: cifar10)")
    d.add_argument("--data-dir", help="where cifar10/cifar100 archives are found or downloaded")
    d.add_argument("--out", default="runs/degradation", help="output directory (default: runs/degradation)")
    d.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    d.add_argument("--batch-size", type=int, help="mini-batch size (preset cpu: 32, full: 128, the paper's)")
    d.add_argument("--lr", type=float, help="initial learning rate (preset cpu: 0.05, full: 0.1, the paper's)")
    d.add_argument("--grad-steps", help="comma-separated steps at which to log gradient norms (default: 0, 10%%, 50%%, last)")
    d.set_defaults(run=run_degradation_command)
    p.set_defaults(run=lambda args: (p.print_help(), 2)[1])


def _ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"{option} {text!r}: expected comma-separated integers") from exc
    if not values:
        raise ConfigError(f"{option} {text!r}: give at least one value")
    return values


def run_degradation_command(args: argparse.Namespace) -> int:
    from resnetlab.engine.signals import TrainingInterrupted
    from resnetlab.experiments.degradation import preset_config, run_degradation

    cfg = preset_config(
        args.preset, depths=_ints(args.depths, "--depths"), seeds=_ints(args.seeds, "--seeds"), epochs=args.epochs,
        steps=args.steps, val_size=args.val_size, data=args.data, data_dir=args.data_dir, device=args.device,
        batch_size=args.batch_size, lr=args.lr, grad_steps=_ints(args.grad_steps, "--grad-steps"),
    )
    if args.limit_train is not None:
        cfg.limit_train = args.limit_train or None  # 0: the whole training split
    try:
        results = run_degradation(cfg, args.out)
    except TrainingInterrupted as exc:
        print(f"resnetlab: {exc}; repeat the command to continue the experiment", file=sys.stderr)
        return exc.exit_code
    print(open_table(results))
    print(f"wrote {', '.join(results['files'])} to {args.out}")
    return 0


def open_table(results: dict) -> str:
    """The results table of results.md (its first lines up to the figures)."""
    from resnetlab.experiments.degradation import markdown

    text = markdown(results)
    return text.split("![degradation]")[0].rstrip()
