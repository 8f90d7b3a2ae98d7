"""``resnetlab compare``: a table of runs with intervals, and overlaid training curves."""

from __future__ import annotations

import argparse
import shlex
import sys

EPILOG = """\
examples:
  resnetlab compare runs/plain20 runs/resnet20
  resnetlab compare runs/resnet20-seeds runs/resnet56-seeds --out compare-depth

A multi-seed run (trained with --seeds, holding seed-N/ folders) is one row: mean ± std over seeds.
Each run is then tested against the first on the same test images (their eval/predictions.csv):
McNemar's exact test, a paired bootstrap 95% interval of the accuracy difference and, for multi-seed
runs, a t-interval over the shared seeds, summed up in one sentence ("A beats B (+1.20 points, ...)").
Writes compare.md, compare.json, curves.png, error_curves.png and, when the runs logged gradient
norms (train --log-grad-norms), grad_norms.png.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare runs: table of accuracy with intervals, overlaid training curves",
        description="Compare run directories (or multi-seed parents): model, params, recipe, epochs, time, "
        "validation/test accuracy with intervals; overlaid curves.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories or multi-seed parents")
    p.add_argument("--out", default="compare", help="output directory for compare.md/json and plots (default: ./compare)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from resnetlab.evaluation.compare import compare_runs

    result = compare_runs(args.runs, args.out, command="resnetlab " + shlex.join(sys.argv[1:]) if "resnetlab" in sys.argv[0] else None)
    print(result["table"])
    for pair in result.get("significance") or []:  # one sentence per run against the first
        print(pair["sentence"] + (f" [{pair['note']}]" if pair.get("note") else ""))
    print(f"wrote {', '.join(result['files'])} to {args.out}")
    return 0
