"""``resnetlab train``: parse options into a TrainConfig and call ``resnetlab.engine.train``."""

from __future__ import annotations

import argparse
import logging
import sys

from resnetlab.commands import data_spec
from resnetlab.errors import ConfigError

EPILOG = """\
examples:
  resnetlab train --recipe recipes/resnet20-he2016.yaml --data cifar10
  resnetlab train --model resnet20 --data cifar10 --epochs 3 --set optim.lr=0.05 --set augment.flip=false
  resnetlab train --recipe recipes/cnn-baseline.yaml --data ./my-images --seeds 1,2,3
  resnetlab train --resume runs/resnet20-20260101-120000
  torchrun --nproc_per_node=2 -m resnetlab train --recipe recipes/resnet20-he2016.yaml --data cifar10

Multi-node: torchrun --nnodes=N --node_rank=R --nproc_per_node=K --rdzv_backend=c10d
  --rdzv_endpoint=HOST:PORT -m resnetlab train ...   (--batch-size is the global batch)

SIGTERM/SIGINT save a checkpoint at the next step and exit 143/130; continue with --resume.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model and write a run directory",
        description="Train a model on CIFAR-10/100 or an image folder. Options override the recipe; "
        "the resolved config is written to RUN_DIR/config.yaml.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="model name (see 'resnetlab models'); default: the recipe's, else resnet20")
    p.add_argument("--data", help="cifar10, cifar100, an archive, or an image folder; default: the recipe's, else cifar10")
    p.add_argument("--recipe", help="YAML recipe file (see recipes/); default: built-in defaults")
    p.add_argument("--epochs", type=int, help="train for N epochs (replaces the recipe's max_steps)")
    p.add_argument("--max-steps", type=int, help="train for N optimizer steps instead of epochs")
    p.add_argument("--budget", metavar="DURATION",
                   help="finish the whole run, final evaluation included, within this wall time (90s, 10m, 1h30m): "
                   "a short probe on this machine picks the epochs (and for recipes with a plan table, the width and sizes)")
    p.add_argument("--batch-size", type=int, help="global batch size (default: recipe's, else 128, lowered for small datasets: see small_data in README)")
    p.add_argument("--micro-batch", type=int,
                   help="images per forward/backward pass; the batch's gradients add up to one step (default: one pass)")
    p.add_argument("--lr", type=float, help="base learning rate (default: recipe's, else 0.1, scaled with an adapted batch size)")
    p.add_argument("--run-dir", help="run directory (default: runs/<model>-<date>-<time>)")
    p.add_argument("--name", help="run name used for the default run directory")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    p.add_argument("--seeds", help="comma-separated seeds: run each into RUN_DIR/seed-N and write seeds.json")
    p.add_argument("--limit-train", type=int, help="train on the first N images of a stratified shuffle")
    p.add_argument("--val-size", type=int, help="validation images held out of train (default: 5000 for CIFAR, else 10%%)")
    p.add_argument("--data-dir", help="where cifar10/cifar100 archives are found or downloaded")
    p.add_argument("--image-size", type=int, help="resize image-folder images to this square size")
    p.add_argument("--skip-bad", action="store_true", default=None, help="skip unreadable images instead of failing")
    photo = p.add_argument_group("photos (image folders; docs/data.md)")
    photo.add_argument("--data-mode", metavar="auto|memory|stream",
                       help="memory: decode each photo once at a capped size; stream: read files in DataLoader workers; "
                       "auto (default): the photo path when the recipe sets augment.rrc_scale, memory or stream by size")
    photo.add_argument("--crop-pct", type=float, help="evaluation centre crop share recorded in the model (photos: 0.875)")
    photo.add_argument("--color-jitter", type=float, metavar="S", help="photo path: ColorJitter strength (e.g. 0.4)")
    photo.add_argument("--random-erasing", type=float, metavar="P", help="photo path: RandomErasing probability (e.g. 0.25)")
    photo.add_argument("--mixup", type=float, metavar="ALPHA", help="photo path: MixUp Beta alpha (e.g. 0.2; 0 off)")
    photo.add_argument("--cutmix", type=float, metavar="ALPHA", help="photo path: CutMix Beta alpha (e.g. 1.0; 0 off)")
    policy = photo.add_mutually_exclusive_group()
    policy.add_argument("--randaugment", dest="augment_policy", action="store_const", const="randaugment",
                        help="RandAugment per image")
    policy.add_argument("--trivialaugment", dest="augment_policy", action="store_const", const="trivialaugment",
                        help="TrivialAugmentWide per image")
    p.add_argument("--tta", action="store_true", default=None, help="test-time augmentation in the final evaluation")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    p.add_argument("--eval-every", type=int, help="validate every N epochs, and after the last (default: 1)")
    p.add_argument("--early-stop", type=int, metavar="PATIENCE",
                   help="stop when val_acc has not improved for PATIENCE evaluations; the final model is the best epoch's "
                   "(early_stop.metric/min_delta via --set)")
    p.add_argument("--log-grad-norms", help="comma-separated steps at which to record per-layer grad norms (grad_norms.jsonl)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest intact checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, YAML-typed (e.g. --set optim.nesterov=true); repeatable")
    p.set_defaults(run=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Explicit flags as dotted config overrides; ``--set`` comes last and wins."""
    from resnetlab.config import parse_set

    flags = {
        "model.name": args.model,
        "data.spec": data_spec(args.data),
        "batch_size": args.batch_size,
        "micro_batch": args.micro_batch,
        "optim.lr": args.lr,
        "run_dir": args.run_dir,
        "name": args.name,
        "device": args.device,
        "seed": args.seed,
        "data.limit_train": args.limit_train,
        "data.data_dir": args.data_dir,
        "data.image_size": args.image_size,
        "data.skip_bad": args.skip_bad,
        "data.mode": getattr(args, "data_mode", None),
        "data.crop_pct": getattr(args, "crop_pct", None),
        "augment.color_jitter": getattr(args, "color_jitter", None),
        "augment.random_erasing": getattr(args, "random_erasing", None),
        "augment.mixup": getattr(args, "mixup", None),
        "augment.cutmix": getattr(args, "cutmix", None),
        "augment.policy": getattr(args, "augment_policy", None),
        "tta": args.tta,
        "threads": args.threads,
        "eval_every": args.eval_every,
        "early_stop.patience": args.early_stop,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.val_size is not None:
        overrides["data.val_size"] = args.val_size
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
        overrides["max_steps"] = None  # an explicit --epochs replaces a recipe's step budget
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.log_grad_norms:
        overrides["log_grad_norms"] = _int_list(args.log_grad_norms, "--log-grad-norms")
    if args.budget is not None:
        from resnetlab.budget import parse_duration

        if args.epochs is not None or args.max_steps is not None:
            raise ConfigError("--budget chooses the number of epochs: do not combine it with --epochs or --max-steps")
        if args.resume:
            raise ConfigError("--resume continues the run's recorded plan: drop --budget")
        overrides["budget.seconds"] = parse_duration(args.budget)
    overrides.update(parse_set(args.set))
    return overrides


def run(args: argparse.Namespace) -> int:
    from resnetlab.config import build_config
    from resnetlab.engine import distributed
    from resnetlab.engine.signals import TrainingInterrupted

    if not distributed.detect().is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 alone talks
    overrides = overrides_from_args(args)
    try:
        if args.resume:
            if args.seeds or args.recipe:
                raise ConfigError("--resume continues a run with its own config.yaml: do not combine it with --recipe or --seeds")
            from resnetlab.engine.resume import resume_config

            return _train(resume_config(args.resume, overrides), resume_from=args.resume, hooks=hooks_of(args))
        config = build_config(args.recipe, overrides)
        if config.budget.seconds is not None:
            return _train_budgeted(args, config)
        if args.seeds:
            from resnetlab.engine.seeds import train_seeds

            report = train_seeds(config, _int_list(args.seeds, "--seeds"), train_fn=_train_with_report)
            final = report["final_acc"]
            print(f"seeds {report['seeds']}: {report['metric']} mean {final['mean']} std {final['std']} "
                  f"95% CI {final['interval']}")
            return 0
        return _train(config, hooks=hooks_of(args))
    except TrainingInterrupted as exc:
        print(f"resnetlab: {exc}", file=sys.stderr)
        return exc.exit_code


def _train_budgeted(args: argparse.Namespace, config) -> int:
    from resnetlab.budget.run import train_within_budget

    if args.seeds:
        raise ConfigError("--budget plans one run: give --seeds without it, or run each seed with its own --budget")
    train_within_budget(config, config.budget.seconds, _train_with_report, final_report=_final_report(config))
    return 0


def _train(config, resume_from=None, hooks=None) -> int:
    _train_with_report(config, resume_from=resume_from, hooks=hooks)
    return 0


def hooks_of(args: argparse.Namespace):
    """``engine.TrainHooks`` given to ``cli.main(argv, hooks=...)`` (tests' stops and faults; the CLI passes none)."""
    return getattr(args, "hooks", None)


def _train_with_report(config, **options):
    """``engine.train`` with the evaluation report as its final evaluation (the engine cannot import it)."""
    from resnetlab.engine import train

    return train(config, final_report=_final_report(config), **options)


def _final_report(config):
    """``evaluate_model`` when the config asks for the report (imported only then: matplotlib & co. cost ~1 s).

    Given the validation split by the engine, it fits temperature scaling first (issue 24), so the
    report shows the test split before and after."""
    if not config.eval_report:
        return None
    from resnetlab.evaluation import evaluate_model

    return evaluate_model


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"{option} {text!r}: expected comma-separated integers") from exc
