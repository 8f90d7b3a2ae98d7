"""``resnetlab lr-find``: a learning-rate range test; writes lr_find.json and lr_find.png, suggests the rates."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from resnetlab.commands import SOURCE_FORMAT_HELP, SOURCE_FORMATS, data_spec
from resnetlab.errors import ConfigError

EPILOG = """\
examples:
  resnetlab lr-find --model resnet20 --data cifar10 --limit-train 5000
  resnetlab lr-find --from resnet18.pth --model resnet18 --data ./my-photos --image-size 160
  resnetlab lr-find --from runs/my-run --data ./other-images --strategy linear-probe --out lr-probe

The sweep trains a throw-away copy of the model for up to --steps steps with the lr growing
exponentially from --start-lr to --end-lr, and stops once the smoothed loss passes --diverge times
its minimum. Suggested lr: a tenth of the lr at the smoothed loss's minimum ("min/10"; the lr of
steepest descent is printed beside it). With --from the head gets the suggestion and the backbone a
tenth of it (use them as --lr-head and --lr-backbone); from scratch one lr serves both.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "lr-find",
        help="learning-rate range test: a plot and suggested rates (head and backbone)",
        description="Smith's learning-rate range test on DATA with the batch size, augmentation and optimizer "
        "training would use. Writes OUT/lr_find.json (every step's lr and loss, the suggestion) and "
        "OUT/lr_find.png; no weights are saved.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="model name (default: the recipe's, else resnet20; with --from: the source's)")
    p.add_argument("--data", help="cifar10, cifar100, an archive, or an image folder (default: the recipe's)")
    p.add_argument("--from", dest="source", metavar="SOURCE", help="pretrained weights, as in 'resnetlab finetune --from'")
    p.add_argument("--source-format", choices=SOURCE_FORMATS, help=SOURCE_FORMAT_HELP)
    p.add_argument("--strategy", choices=["linear-probe", "full", "gradual"],
                   help="with --from: which parameters train during the sweep (default: full)")
    p.add_argument("--recipe", help="YAML recipe: its optimizer, batch size and augmentation are used")
    p.add_argument("--out", help="output folder (default: runs/<model>-lr-find-<date>-<time>)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the recipe's, adapted to small data as in train)")
    p.add_argument("--image-size", type=int, help="resize image-folder images to this square size")
    p.add_argument("--limit-train", type=int, help="sweep on the first N images of a stratified shuffle")
    p.add_argument("--data-dir", help="where cifar10/cifar100 archives are found or downloaded")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    p.add_argument("--start-lr", type=float, default=1e-6, help="first lr of the sweep (default: 1e-6)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last lr of the sweep (default: 10)")
    p.add_argument("--steps", type=int, default=200, help="steps of the sweep if it does not diverge first (default: 200)")
    p.add_argument("--smoothing", type=float, default=0.98, help="exponential smoothing of the loss, 0 for none (default: 0.98)")
    p.add_argument("--diverge", type=float, default=4.0, help="stop when the smoothed loss passes this times its minimum (default: 4)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key, as in train")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from resnetlab.data.splits import load_splits_for
    from resnetlab.engine.lr_range import RangeTestOptions, plot, range_test
    from resnetlab.runs import default_run_dir
    from resnetlab.utils.atomic import atomic_write_bytes, atomic_write_text
    from resnetlab.utils.device import resolve_device

    options = RangeTestOptions(args.start_lr, args.end_lr, args.steps, args.smoothing, args.diverge)
    options.validate()  # before any data loads
    if args.strategy and not args.source:
        raise ConfigError("--strategy chooses what a pretrained model trains: give --from too")
    if args.source_format and not args.source:
        raise ConfigError("--source-format names the format of --from SOURCE: give --from too")
    config, finetune_options = _build_config(args)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: exists and is not a folder")
    splits = load_splits_for(config.data)
    model, groups = _model(config, finetune_options, splits)
    strategy = finetune_options.strategy if finetune_options is not None else None
    result = range_test(config, model, splits, options, param_groups=groups, device=resolve_device(config.device), finetuning=strategy)
    out = Path(args.out) if args.out else default_run_dir(f"{model.meta.name}-lr-find")
    atomic_write_text(out / "lr_find.json", json.dumps(result, indent=2) + "\n")
    atomic_write_bytes(out / "lr_find.png", plot(result))
    s = result["suggestion"]
    print(f"lr-find: {result['steps_run']} steps, {result['stopped']}")
    backbone = "frozen" if s["backbone_lr"] is None else f"{s['backbone_lr']:.3g}"
    steepest = "n/a" if s["lr_steepest"] is None else f"{s['lr_steepest']:.3g}"
    print(f"suggested lr {s['lr']:.3g} ({s['method']}; lowest smoothed loss at {s['lr_min_loss']:.3g}, steepest descent at {steepest}); "
          f"head {s['head_lr']:.3g}, backbone {backbone} ({s['backbone_rule']})")
    print(f"wrote {out / 'lr_find.json'} and {out / 'lr_find.png'}")
    return 0


def _build_config(args: argparse.Namespace):
    """(TrainConfig, FinetuneOptions or None) from the recipe and flags, as train/finetune build them."""
    from resnetlab.config import parse_set

    flags = {
        "model.name": args.model,
        "data.spec": data_spec(args.data),
        "batch_size": args.batch_size,
        "data.image_size": args.image_size,
        "data.limit_train": args.limit_train,
        "data.data_dir": args.data_dir,
        "device": args.device,
        "seed": args.seed,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides.update(parse_set(args.set))
    if args.source:
        from resnetlab.finetune import build_config

        source = f"{args.source_format}:{args.source}" if args.source_format else args.source
        overrides["finetune.source"] = source
        if args.strategy:
            overrides["finetune.strategy"] = args.strategy
        return build_config(args.recipe, overrides)
    from resnetlab.config import build_config, check_model

    config = build_config(args.recipe, overrides)
    check_model(config)
    return config, None


def _model(config, finetune_options, splits):
    """(model, param groups or None): the pretrained model prepared as finetune does, or a fresh one as train does."""
    if finetune_options is not None:
        from resnetlab.finetune.run import prepare_pretrained

        prepared = prepare_pretrained(config, finetune_options, splits)
        return prepared.model, prepared.schedule.groups
    import torch

    from resnetlab.models import create_model

    torch.manual_seed(config.seed)  # the initial weights, as train seeds them: a sweep is a function of its seed
    model = create_model(config.model.name, num_classes=splits.train.num_classes, **config.model.options)
    # As the trainer does: a model from scratch is normalized with the training data's statistics.
    model.meta.mean = tuple(float(v) for v in splits.train.mean)
    model.meta.std = tuple(float(v) for v in splits.train.std)
    return model, None
