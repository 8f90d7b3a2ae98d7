"""`resnetlab predict MODEL IMAGES...`: top-k classes for image files, folders and globs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resnetlab.commands import SOURCE_FORMAT_HELP, SOURCE_FORMATS
from resnetlab.errors import ConfigError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify image files, folders or globs with a trained model",
        description="Print the top-k classes of each image (any size or mode; resized and normalized "
                    "as the model was trained). Unreadable files are reported and skipped; the exit "
                    "code is non-zero only when no image could be read.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="run directory, model file (.safetensors), checkpoint (.pt), exported .onnx, "
                        "or an outside checkpoint (akamaster .th, kuangliu, torchvision/timm ResNet state dict)")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--top-k", type=int, default=5, help="how many classes to show per image")
    parser.add_argument("--output", "-o", metavar="FILE", help="also write the results to FILE.json or FILE.csv")
    parser.add_argument("--batch-size", type=int, default=64, help="images decoded and run together")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--source-format", choices=SOURCE_FORMATS, help=SOURCE_FORMAT_HELP)
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average the probabilities over the views of evaluate --tta "
                             "(flipped and shifted: 6 passes per image; photo models, crop_pct < 1: flipped centre "
                             "and corner crops of the resized picture, 10 passes); --output .json names them")
    parser.add_argument("--quiet", "-q", action="store_true", help="do not print the table (errors still go to stderr)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from resnetlab.inference.batch import predict_files, write_results
    from resnetlab.inference.predictor import Predictor

    if args.output:
        from resnetlab.models.files import model_source_files
        from resnetlab.utils.atomic import check_output_path

        check_output_path(args.output, model_source_files(args.model), example="predictions.json")
        if Path(args.output).suffix.lower() not in (".json", ".csv"):
            raise ConfigError(f"--output {args.output}: use a .json or .csv file name")
    predictor = Predictor.load(args.model, device=args.device, source_format=args.source_format)

    def report(result) -> None:
        print(f"resnetlab: skipped {result.error}", file=sys.stderr)

    results = predict_files(predictor, args.images, top_k=args.top_k, batch_size=args.batch_size, on_error=report, tta=args.tta)
    if args.tta:
        views = predictor.tta_view_names
        print(f"TTA: probabilities averaged over {len(views)} views: {', '.join(views)}", file=sys.stderr)
    if not args.quiet:
        print_table(results, args.top_k)
    if args.output:
        path = write_results(results, args.output, predictor, args.top_k, tta=args.tta)
        print(f"wrote {path}", file=sys.stderr)
    readable = sum(r.error is None for r in results)
    failed = len(results) - readable
    if failed:
        print(f"resnetlab: {failed} of {len(results)} input(s) could not be read", file=sys.stderr)
    return 0 if readable else 1


def print_table(results, top_k: int) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title=None, show_lines=False, header_style="bold")
    table.add_column("image", overflow="fold")
    for i in range(1, top_k + 1):
        table.add_column(f"#{i}")
    for r in results:
        if r.error is not None:
            message = r.error[len(r.path) + 2:] if r.error.startswith(r.path + ": ") else r.error
            table.add_row(Text(r.path), f"[red]error: {escape(message)}[/red]", *[""] * (top_k - 1))
            continue
        cells = [f"{escape(name)} [dim]{p:.1%}[/dim]" for name, p in r.top_k]
        table.add_row(Text(r.path), *(cells + [""] * (top_k - len(cells))))
    Console(soft_wrap=False).print(table)
