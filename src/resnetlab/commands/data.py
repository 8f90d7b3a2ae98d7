"""``resnetlab data info DATA``: counts per class and split, image size, mean/std, sample grid."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect a dataset",
        description="Inspect a dataset (DATA: cifar10, cifar100, an image folder or a .tar/.tar.gz/.tgz/.zip of one).",
    )
    sub = parser.add_subparsers(title="data commands", metavar="SUBCOMMAND")
    info = sub.add_parser(
        "info",
        help="counts per class, image size, mean/std and a PNG grid of samples",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Load DATA the way training does (same splits, same decoding: any image mode becomes RGB, "
            "alpha is dropped, 16-bit is scaled to 8-bit) and print counts per class per split, the "
            "image size and the per-channel mean/std of the training split; write info.json and "
            "samples.png to --out."
        ),
    )
    info.add_argument("data", metavar="DATA", help="cifar10, cifar100, an image folder, or an archive of one")
    info.add_argument("--data-dir", default=None,
                      help="cache folder for downloads and decoded images (default: $RESNETLAB_CACHE or ~/.cache/resnetlab)")
    info.add_argument("--image-size", type=int, default=None,
                      help="resize images to SIZE x SIZE (shorter side, then centre crop); default: the images' own size when all share one")
    info.add_argument("--val-size", type=int, default=None,
                      help="validation images carved from train when the data has no val/ (default: 5000 for CIFAR, else 10%%)")
    info.add_argument("--seed", type=int, default=0, help="seed of the validation split and the sample grid")
    info.add_argument("--skip-bad", action="store_true", help="skip unreadable/corrupt files with a counted warning instead of failing")
    info.add_argument("--out", default=None, help="folder for info.json and samples.png (default: runs/data-info/<dataset name>)")
    info.add_argument("--per-class", type=int, default=8, help="sample images per class in samples.png")
    info.set_defaults(run=run_info)
    parser.set_defaults(run=lambda args: (parser.print_help(), 2)[1])


def run_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from resnetlab.data import load_splits
    from resnetlab.data.info import data_info

    splits = load_splits(args.data, data_dir=args.data_dir, image_size=args.image_size,
                         val_size=args.val_size, seed=args.seed, skip_bad=args.skip_bad)
    out = Path(args.out) if args.out else Path("runs") / "data-info" / (splits.name or "data")
    info = data_info(splits, out, per_class=args.per_class)

    console = Console()
    names = list(info["counts"])
    table = Table(title=f"{info['name']}: {len(info['classes'])} classes, {info['image_size'][0]}x{info['image_size'][1]} images")
    table.add_column("class")
    for name in names:
        table.add_column(name, justify="right")
    for i, cls in enumerate(info["classes"]):
        table.add_row(cls, *(f"{info['counts'][n][i]:,}" for n in names))
    table.add_section()
    table.add_row("total", *(f"{info['totals'][n]:,}" for n in names), style="bold")
    console.print(table)
    fmt = lambda values: ", ".join(f"{v:.4f}" for v in values)  # noqa: E731
    console.print(f"source: {info['source']}")
    console.print(f"mean (R, G, B) of train: {fmt(info['mean'])}")
    console.print(f"std  (R, G, B) of train: {fmt(info['std'])}")
    console.print(f"wrote {out / 'info.json'} and {info['samples_png']}")
    return 0
