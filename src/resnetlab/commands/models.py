"""`resnetlab models [PATTERN]`: the model zoo with parameters and forward MACs."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the registered models with parameters and MACs",
        description=(
            "List every registered model with its family, input size, parameter count and forward "
            "cost for one image at that size. MACs are multiply-accumulates of convolutions and matrix "
            "products counted by torch.utils.flop_counter (FLOPs = 2 x MACs; BN, activations and "
            "pooling are not counted)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "pattern",
        nargs="?",
        default="*",
        metavar="PATTERN",
        help="shell pattern (resnet*) or substring (wrn) of model names",
    )
    parser.add_argument("--num-classes", type=int, default=10, help="classifier outputs used for the counts")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from resnetlab.errors import ConfigError
    from resnetlab.models.summary import model_table

    if args.num_classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {args.num_classes}")
    rows = model_table(args.pattern, num_classes=args.num_classes)
    if not rows:
        raise ConfigError(f"no model matches {args.pattern!r} (run 'resnetlab models' to see them all)")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _print_table(rows)
    return 0


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="resnetlab models", title_justify="left")
    table.add_column("model", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("input", no_wrap=True)
    table.add_column("params (M)", justify="right")
    table.add_column("MACs (G)", justify="right")
    for row in rows:
        _, height, width = row["input_size"]
        table.add_row(
            row["name"],
            row["family"],
            f"{height}x{width}",
            f"{row['params'] / 1e6:.2f}",
            f"{row['macs'] / 1e9:.3f}",
        )
    console = Console(width=100)
    console.print(table)
    console.print("MACs: one image at the model's input size; FLOPs = 2 x MACs.")
