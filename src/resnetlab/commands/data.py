"""``resnetlab data info DATA``: counts per class and split, image size, mean/std, sample grid;
``resnetlab data audit DATA``: duplicates, class balance, odd images, likely label errors."""

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
                      help="resize images to SIZE x SIZE (shorter side, then centre crop); default: the images' own size when all share "
                      "one, else the median shorter side (at most 224), with the size distribution printed")
    info.add_argument("--val-size", type=int, default=None,
                      help="validation images carved from train when the data has no val/ (default: 5000 for CIFAR, else 10%%)")
    info.add_argument("--seed", type=int, default=0, help="seed of the validation split and the sample grid")
    info.add_argument("--skip-bad", action="store_true", help="skip unreadable/corrupt files with a counted warning instead of failing")
    info.add_argument("--out", default=None, help="folder for info.json and samples.png (default: runs/data-info/<dataset name>)")
    info.add_argument("--per-class", type=int, default=8, help="sample images per class in samples.png")
    info.set_defaults(run=run_info)
    _add_audit_parser(sub)
    parser.set_defaults(run=lambda args: (parser.print_help(), 2)[1])


def run_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from resnetlab.data import load_splits
    from resnetlab.data.info import data_info, size_distribution, size_lines

    console = Console()
    sizes = size_distribution(args.data)
    image_size = args.image_size
    if image_size is None and sizes is not None and sizes["distinct_sizes"] > 1:
        # Mixed sizes (photos): report them, and take the statistics below at a size that suits them.
        image_size = sizes["suggested_size"]
        for line in size_lines(sizes):
            console.print(line, highlight=False, soft_wrap=True)
        console.print(f"counts and mean/std below at {image_size}x{image_size} (shorter side resized, centre crop; "
                      "the median shorter side, at most 224): pass --image-size to choose", highlight=False, soft_wrap=True)
    splits = load_splits(args.data, data_dir=args.data_dir, image_size=image_size,
                         val_size=args.val_size, seed=args.seed, skip_bad=args.skip_bad)
    out = Path(args.out) if args.out else Path("runs") / "data-info" / (splits.name or "data")
    info = data_info(splits, out, per_class=args.per_class, sizes=sizes)
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


WEAK_CLASSIFIER = 0.8  # cross-validated accuracy below which the label-suspect count is not a label-error estimate


def _add_audit_parser(sub) -> None:
    from resnetlab.audit.duplicates import FEATURE_MIN_COSINE, MIN_CORRELATION, PHASH_MAX_DISTANCE

    audit = sub.add_parser(
        "audit",
        help="duplicates (within and across splits), class balance, odd images, likely label errors",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Audit DATA: exact duplicates (identical decoded pixels) and near duplicates (64-bit DCT perceptual "
            "hash within --phash-distance bits, confirmed by a grey-thumbnail correlation >= --min-correlation; with --model also penultimate features with cosine >= --min-cosine) "
            "within and across splits (and against OTHER), class counts per split, odd images (constant, tiny, "
            "extreme aspect, grey stored as RGB, undecodable: named, not fatal), and likely label errors "
            "(confident learning on cross-validated logistic-regression probabilities). Writes audit.json, "
            "audit.html, audit.md and PNGs to --out."
        ),
    )
    audit.add_argument("data", metavar="DATA", help="cifar10, cifar100, an image folder, or an archive of one")
    audit.add_argument("--against", metavar="OTHER", default=None, help="a second dataset to look for copies of DATA's images in")
    audit.add_argument("--out", default=None, help="output folder (default: runs/data-audit/<dataset name>)")
    audit.add_argument("--model", metavar="MODEL", default=None,
                       help="run directory or model file whose penultimate features also find near copies and feed the label check")
    audit.add_argument("--source-format", default=None, help="format of an outside MODEL checkpoint (akamaster, kuangliu, torchvision, timm)")
    audit.add_argument("--phash-distance", type=int, default=PHASH_MAX_DISTANCE, help="near duplicate: pHash Hamming distance at most this (bits of 64)")
    audit.add_argument("--min-correlation", type=float, default=MIN_CORRELATION,
                       help="a pHash match counts when the grey thumbnails also correlate at least this much (Pearson, best over 1-px moves)")
    audit.add_argument("--min-cosine", type=float, default=FEATURE_MIN_COSINE, help="near duplicate (with --model): feature cosine similarity at least this")
    audit.add_argument("--folds", type=int, default=5, help="cross-validation folds of the label-error check")
    audit.add_argument("--no-label-errors", dest="label_errors", action="store_false", help="skip the label-error check")
    audit.add_argument("--seed", type=int, default=0, help="seed of the folds and the PCA")
    audit.add_argument("--data-dir", default=None, help="cache folder for cifar10/cifar100 downloads (default: $RESNETLAB_CACHE or ~/.cache/resnetlab)")
    audit.set_defaults(run=run_audit)


def run_audit(args) -> int:
    from resnetlab.audit import AuditOptions, audit_data

    options = AuditOptions(phash_distance=args.phash_distance, min_correlation=args.min_correlation, min_cosine=args.min_cosine, model=args.model,
                           source_format=args.source_format, label_errors=args.label_errors, folds=args.folds,
                           seed=args.seed, data_dir=args.data_dir)
    out = Path(args.out) if args.out else Path("runs") / "data-audit" / (Path(str(args.data)).name.split(".")[0] or "data")
    audit = audit_data(args.data, out, against=args.against, options=options)
    dup, odd, lab = audit["duplicates"], audit["oddities"], audit["label_issues"]
    print(f"{audit['data']}: {audit['images']:,} images ({', '.join(f'{k} {v:,}' for k, v in audit['images_per_split'].items())})")
    print(f"duplicates: {dup['pairs_by_kind']['exact']:,} exact pairs ({dup['exact_groups']:,} groups), "
          f"{dup['pairs_by_kind']['phash']:,} pHash pairs (Hamming <= {dup['thresholds']['phash_max_hamming']} of 64 bits, "
          f"correlation >= {dup['thresholds']['phash_min_correlation']}; {dup['phash_rejected_by_correlation']:,} rejected by it)"
          + (f", {dup['pairs_by_kind']['features']:,} feature pairs (cosine >= {dup['thresholds']['feature_min_cosine']})" if audit["model"] else "")
          + f"; {dup['clusters']:,} clusters")
    if dup["pairs_with_different_labels"]:
        print(f"  {dup['pairs_with_different_labels']:,} pairs carry different labels (the same picture filed under two classes?)")
    for key, count in dup["pairs_by_split"].items():
        print(f"  {key}: {sum(count.values()):,} pairs")
    for split, count in dup["with_copy_in_other_split"].items():
        print(f"  {split}: {count:,} images have a copy in another split")
    print(f"class balance: imbalance ratio {audit['balance']['imbalance_ratio']} (largest/smallest, train)")
    print("odd images: " + ", ".join(f"{k.replace('_', ' ')} {odd[k]['count']:,}" for k in ("undecodable", "constant", "tiny", "extreme_aspect", "grayscale_in_rgb")))
    if "count" in lab:
        print(f"label suspects: {lab['count']:,} ({lab['fraction']:.2%}); {lab['classifier']}, CV accuracy {lab['cv_accuracy']:.2%}")
        if lab["cv_accuracy"] < WEAK_CLASSIFIER:  # confident learning is only as good as its probabilities
            print(f"  the classifier is weak ({lab['cv_accuracy']:.0%} out-of-sample): most suspects are hard images, not "
                  "wrong labels; rank them, do not count them (--model gives better features)")
    else:
        print(lab["skipped"])
    print(f"wrote {audit['paths']['html']}, audit.json and audit.md in {audit['timing_s']['total']:.1f} s")
    return 0
