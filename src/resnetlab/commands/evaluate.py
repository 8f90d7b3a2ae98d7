"""``resnetlab evaluate``: the full evaluation report of a trained model on a data split."""

from __future__ import annotations

import argparse
import shlex
import sys

EPILOG = """\
examples:
  resnetlab evaluate runs/resnet20-he2016 --split test
  resnetlab evaluate runs/resnet20-he2016/model.safetensors --data cifar10 --tta
  resnetlab evaluate model.onnx --data ./my-images --split val --out eval-onnx

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
    p.add_argument("model", metavar="MODEL", help="run directory, .safetensors model file, .pt checkpoint or .onnx file")
    p.add_argument("--data", help="cifar10, cifar100, an archive or an image folder (default: the run's data when MODEL is in a run directory)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"], help="which split to evaluate (default: test)")
    p.add_argument("--out", help="report directory (default: RUN_DIR/eval-SPLIT for runs, else ./eval-NAME)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average softmax over flips and 2-px shifts (default: off)")
    p.add_argument("--batch-size", type=int, default=512, help="images per forward pass (default: 512)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--data-dir", help="where cifar10/cifar100 archives are found or downloaded (default: the run's, else the cache)")
    p.add_argument("--image-size", type=int, help="resize image-folder images to this square size (default: the run's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from resnetlab.evaluation.runner import evaluate_path, summary_lines

    metrics, out_dir = evaluate_path(
        args.model, args.data, split=args.split, out_dir=args.out, tta=args.tta, batch_size=args.batch_size,
        device=args.device, data_dir=args.data_dir, image_size=args.image_size,
        command="resnetlab " + shlex.join(sys.argv[1:]) if sys.argv and "resnetlab" in sys.argv[0] else None,
    )
    for line in summary_lines(metrics, out_dir):
        print(line)
    return 0
