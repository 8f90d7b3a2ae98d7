"""``resnetlab finetune``: the train options plus a weights source and a strategy; calls ``resnetlab.finetune``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from resnetlab.commands import SOURCE_FORMAT_HELP, SOURCE_FORMATS
from resnetlab.errors import ConfigError

EPILOG = """\
sources (--from):
  runs/resnet18-cifar10                    a resnetlab run directory, model file or .pt checkpoint
  resnet50-11ad3fa6.pth | model.safetensors   a torchvision/timm ResNet state dict file
  resnet32-d509ac18.th | ckpt.pth          akamaster/pytorch_resnet_cifar10 or kuangliu/pytorch-cifar checkpoints
  akamaster:weights.pth                    a format named where the keys cannot show it (or --source-format)
  torchvision:resnet50.IMAGENET1K_V2       named weights (needs internet once; then cached)
  timm:resnet50.a1_in1k

examples:
  resnetlab finetune --from torchvision:resnet18.IMAGENET1K_V1 --data cifar10 --recipe recipes/finetune-cifar10-resnet18.yaml
  resnetlab finetune --from resnet18.pth --model resnet18 --data ./my-images --image-size 128 --strategy gradual
  resnetlab finetune --from runs/my-run --data ./other-images --strategy linear-probe --epochs 5
  resnetlab finetune --resume runs/resnet18-ft-20260101-120000
  torchrun --nproc_per_node=2 -m resnetlab finetune --from resnet18.pth --data cifar10 ...

Small images (32x32) with ImageNet weights: --adapt-stem (3x3 stride-1 first conv initialised from
the pretrained 7x7, no max-pool) or --resize 128 (upsizing on the device). Normalization always
follows the source weights (ImageNet mean/std for torchvision/timm files).
"""

def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        parents=[_train_options()],
        conflict_handler="resolve",
        help="fine-tune pretrained weights (torchvision, timm, or a resnetlab run) on new data",
        description="Fine-tune a pretrained ResNet on CIFAR-10/100 or an image folder. Writes the same run "
        "directory as 'train', plus finetune.json and finetune_keys.json.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Train options whose defaults differ here (FINETUNE_DEFAULTS in resnetlab.finetune.run).
    p.add_argument("--lr", type=float, help="base learning rate (default: recipe's, else 0.01, scaled with an adapted batch size)")
    p.add_argument("--batch-size", type=int, help="global batch size (default: recipe's, else 64, lowered for small datasets)")
    p.add_argument("--run-dir", help="run directory (default: runs/<model>-ft-<date>-<time>)")
    p.add_argument("--from", dest="source", metavar="SOURCE", help="pretrained weights (see 'sources' below)")
    p.add_argument("--source-format", choices=SOURCE_FORMATS, help=SOURCE_FORMAT_HELP)
    p.add_argument("--model", help="architecture to build (default: the source's, e.g. resnet50)")
    p.add_argument("--recipe", help="YAML recipe (see recipes/finetune-*.yaml); default: built-in fine-tuning defaults "
                   "(SGD nesterov lr 0.01, cosine, 1 warm-up epoch, 10 epochs, batch 64)")
    p.add_argument("--strategy", choices=["linear-probe", "full", "gradual"],
                   help="linear-probe: train the head only; full: everything; gradual: head first, then one more "
                   "stage from the top every --unfreeze-every epochs (default: full)")
    p.add_argument("--lr-head", type=float, help="learning rate of the new head (default: --lr)")
    p.add_argument("--lr-backbone", type=float, help="learning rate of the top backbone stage (default: --lr)")
    p.add_argument("--layer-decay", type=float, help="each stage below the top trains at this times the lr of the one above (e.g. 0.7)")
    p.add_argument("--unfreeze-every", type=int, help="gradual: epochs between unfreezing stages (default: 1)")
    p.add_argument("--freeze-bn", action="store_true", default=None, help="keep all BatchNorm statistics fixed (small data)")
    p.add_argument("--warmup", type=float, help="linear lr warm-up length in epochs (default: 1)")
    p.add_argument("--resize", type=int, metavar="N",
                   help="train at NxN: 32x32 data is upsized on the device (e.g. 128 or 224); the same as --image-size")
    p.add_argument("--adapt-stem", action="store_true", default=None,
                   help="3x3 stride-1 first conv, no max-pool, initialised from the pretrained 7x7 (for 32x32 data)")
    p.add_argument("--stem-init", choices=["resize", "center"],
                   help="--adapt-stem: shrink the 7x7 kernel by area resizing (keeps its response; default) or take its centre")
    p.add_argument("--reset-head", action="store_true", default=None, help="new classifier even when the source's has the right classes")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a fine-tuning RUN_DIR from its newest intact checkpoint")
    p.add_argument("--seeds", help=argparse.SUPPRESS)  # not offered: run finetune once per --seed
    p.set_defaults(run=run)


def _train_options() -> argparse.ArgumentParser:
    """The options of ``resnetlab train`` (one definition) as a parent parser; some are redefined below."""
    from resnetlab.commands import train

    class _Capture:  # stands in for the subparsers object train.add_parser expects
        def add_parser(self, name, help=None, **kwargs):
            self.parser = argparse.ArgumentParser(add_help=False, **kwargs)
            return self.parser

    capture = _Capture()
    train.add_parser(capture)
    return capture.parser


FLAG_KEYS = {
    "source": "finetune.source",
    "strategy": "finetune.strategy",
    "lr_head": "finetune.lr_head",
    "lr_backbone": "finetune.lr_backbone",
    "layer_decay": "finetune.layer_decay",
    "unfreeze_every": "finetune.unfreeze_every",
    "freeze_bn": "finetune.freeze_bn",
    "resize": "data.image_size",
    "adapt_stem": "finetune.adapt_stem",
    "stem_init": "finetune.stem_init",
    "reset_head": "finetune.reset_head",
    "warmup": "schedule.warmup",
}


def overrides_from_args(args: argparse.Namespace) -> dict:
    from resnetlab.commands.train import overrides_from_args as train_overrides

    overrides = {}
    for attr, key in FLAG_KEYS.items():
        if getattr(args, attr, None) is not None:
            overrides[key] = getattr(args, attr)
    if args.warmup is not None:
        overrides["schedule.unit"] = "epochs"
    overrides.update(train_overrides(args))  # includes --set, which wins
    return overrides


def run(args: argparse.Namespace) -> int:
    from resnetlab.commands.train import hooks_of
    from resnetlab.engine.signals import TrainingInterrupted
    from resnetlab.engine import distributed
    from resnetlab.finetune import build_config, finetune

    if not distributed.detect().is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 alone talks
    if args.seeds:
        raise ConfigError("--seeds is not offered by finetune: run it once per --seed")
    if args.source_format:
        if not args.source:
            raise ConfigError("--source-format names the format of --from SOURCE: give --from too")
        # FORMAT:PATH is how the sources take a named format; the run's config records it that way.
        args.source = f"{args.source_format}:{args.source}"
    overrides = overrides_from_args(args)
    try:
        if args.resume:
            if args.source or args.recipe:
                raise ConfigError("--resume continues a run with its own config: do not combine it with --from or --recipe")
            return _resume(Path(args.resume), overrides, hooks=hooks_of(args))
        config, options = build_config(args.recipe, overrides)
        finetune(config, options, hooks=hooks_of(args))
        return 0
    except TrainingInterrupted as exc:
        print(f"resnetlab: {exc}", file=sys.stderr)
        return exc.exit_code


def _resume(run_dir: Path, overrides: dict, hooks=None) -> int:
    from resnetlab.engine.resume import resume_config
    from resnetlab.finetune import resume

    if any(k.startswith("finetune.") for k in overrides):
        raise ConfigError("--resume: the fine-tuning options are fixed by the run (finetune.json); only train options can change")
    resume(run_dir, resume_config(run_dir, overrides), hooks=hooks)
    return 0
