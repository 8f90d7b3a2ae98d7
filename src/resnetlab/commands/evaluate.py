"""``resnetlab evaluate``: the full evaluation report of a trained model on a data split."""

from __future__ import annotations

import argparse
import shlex
import sys

from resnetlab.commands import SOURCE_FORMAT_HELP, SOURCE_FORMATS

EPILOG = """\
examples:
  resnetlab evaluate runs/resnet20-he2016 --split test
  resnetlab evaluate runs/resnet20-he2016/model.safetensors --data cifar10 --tta
  resnetlab evaluate model.onnx --data ./my-images --split val --out eval-onnx
  resnetlab evaluate resnet32-d509ac18.th --data ./photos      # akamaster's weights on every image of a <class>/ folder
  resnetlab evaluate runs/resnet20-he2016 --corruptions --severities 1,3,5 --baseline runs/cnn-baseline

With --corruptions the report also gets a "Robustness to corruptions" section: accuracy under the 15
CIFAR-10-C corruptions (Hendrycks & Dietterich 2019) x 5 severities, generated on the fly, seeded, plus
corruptions.json and corruptions.png; mCE and relative mCE need --baseline.

Writes metrics.json (every number), PNG plots, report.html (self-contained) and report.md.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model: accuracy with CI, per-class metrics, confusion matrix, ROC/PR, calibration, HTML report",
        description="Evaluate MODEL (a run directory, a .safetensors model file, a .pt checkpoint or an .onnx export) "
        "on a split of DATA and write a report directory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="run directory, .safetensors model file, .pt checkpoint, .onnx file, or an "
                   "outside checkpoint (akamaster .th, kuangliu, torchvision/timm ResNet state dict; FORMAT:PATH names its format)")
    p.add_argument("--data", help="cifar10, cifar100, an archive or an image folder (default: the run's data when MODEL is in a run directory)")
    p.add_argument("--split", choices=["test", "val", "train", "all"],
                   help="which split to evaluate; all: every image (default: test, or all for a folder that is not the "
                   "model's training data and has no val/ or test/ folder)")
    p.add_argument("--source-format", choices=SOURCE_FORMATS, help=SOURCE_FORMAT_HELP)
    p.add_argument("--out", help="report directory (default: RUN_DIR/eval-SPLIT for runs, else ./eval-NAME)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average softmax over flips and 2-px shifts, or for a photo model (crop_pct < 1) over flipped centre and corner crops (default: off)")
    p.add_argument("--batch-size", type=int, default=512, help="images per forward pass (default: 512)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--data-dir", help="where cifar10/cifar100 archives are found or downloaded (default: the run's, else the cache)")
    p.add_argument("--image-size", type=int, help="resize image-folder images to this square size (default: the run's)")
    g = p.add_argument_group("robustness (CIFAR-10-C corruptions)")
    g.add_argument("--corruptions", action="store_true", help="also evaluate under the 15 CIFAR-10-C corruptions at 5 "
                   "severities; writes corruptions.json, corruptions.png and a report section (default: off)")
    g.add_argument("--corruption-types", metavar="A,B,...", help="only these corruption types, comma-separated (default: all 15: "
                   "gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, "
                   "fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression)")
    g.add_argument("--severities", metavar="1,3,5", help="severities to evaluate, from 1 to 5 (default: 1,2,3,4,5)")
    g.add_argument("--corruption-limit", type=int, metavar="N",
                   help="images per type and severity, a stratified seeded subset of the split; 0: all (default: 1000)")
    g.add_argument("--baseline", metavar="MODEL", help="baseline model for the mean corruption error (mCE and relative mCE, "
                   "as the paper's AlexNet); any MODEL form (default: none, report the unnormalised CE)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from resnetlab.evaluation.runner import evaluate_path, summary_lines

    check_options(args)
    metrics, out_dir = evaluate_path(
        args.model, args.data, split=args.split, out_dir=args.out, tta=args.tta, batch_size=args.batch_size,
        device=args.device, data_dir=args.data_dir, image_size=args.image_size, source_format=args.source_format,
        corruptions=corruption_options(args),
        command="resnetlab " + shlex.join(sys.argv[1:]) if sys.argv and "resnetlab" in sys.argv[0] else None,
    )
    for line in summary_lines(metrics, out_dir):
        print(line)
    return 0


def corruption_options(args: argparse.Namespace) -> dict | None:
    """The --corruptions options as evaluate_path's ``corruptions`` dict (None without the flag);
    checked here so a bad type name or severity fails before any model or data is loaded."""
    from resnetlab.errors import ConfigError
    from resnetlab.evaluation.corruptions import parse_severities, parse_types

    from resnetlab.evaluation.robustness import DEFAULT_LIMIT

    given = [name for name, value in (("--corruption-types", args.corruption_types), ("--severities", args.severities),
                                      ("--corruption-limit", args.corruption_limit), ("--baseline", args.baseline))
             if value is not None]
    if not args.corruptions:
        if given:
            raise ConfigError(f"{given[0]} needs --corruptions")
        return None
    limit = DEFAULT_LIMIT if args.corruption_limit is None else args.corruption_limit
    if limit < 0:
        raise ConfigError(f"--corruption-limit {limit}: must be >= 0 (0: every image)")
    return {"types": parse_types(args.corruption_types), "severities": parse_severities(args.severities),
            "limit": limit or None, "baseline": args.baseline}


def check_options(args: argparse.Namespace) -> None:
    """Before any work: a batch size that can run, and a report directory that destroys nothing."""
    from pathlib import Path

    from resnetlab.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be >= 1")
    corruption_options(args)
    if args.out is None:
        return  # the default (RUN/eval-SPLIT or ./eval-NAME) is never a model's file
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; the report is a directory (give a new or existing folder)")
    from resnetlab.evaluation.evaluate import OUTPUT_FILES
    from resnetlab.evaluation.report import FIGURES
    from resnetlab.models.files import model_source_files
    from resnetlab.utils.atomic import check_output_path

    protected = model_source_files(args.model)
    for name in (*OUTPUT_FILES, "predictions.csv", *(figure[0] for figure in FIGURES)):
        check_output_path(out / name, protected, label=f"--out {out} (the report writes {out / name})")
