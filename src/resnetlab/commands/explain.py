"""`resnetlab explain MODEL IMAGES...`: CAM / Grad-CAM heatmap overlays for image files, folders and globs."""

from __future__ import annotations

import argparse
import sys

from resnetlab.commands import SOURCE_FORMAT_HELP, SOURCE_FORMATS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="heatmaps of where the model looks (CAM, Grad-CAM), as overlay PNGs",
        description="Write one overlay PNG per image (the heatmap of the explained class, blended onto the image "
                    "as the model sees it) and explanations.json (per image: predicted class, probability, method, "
                    "file). Images are read and resized as by 'resnetlab predict'. Unreadable files are reported "
                    "and skipped; the exit code is non-zero only when no image could be read.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="run directory, model file (.safetensors), checkpoint (.pt), "
                        "or an outside checkpoint (akamaster .th, kuangliu, torchvision/timm ResNet state dict)")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--out", "-o", default="explanations", metavar="DIR", help="folder for the overlays and explanations.json")
    parser.add_argument("--method", choices=("cam", "gradcam"), default=None,
                        help="cam: exact class activation map (global-average-pool + linear models); gradcam: any model "
                             "(None: cam where the model allows it, else gradcam)")
    parser.add_argument("--class", dest="class_name", metavar="NAME", default=None,
                        help="explain this class for every image (None: each image's predicted class)")
    parser.add_argument("--layer", default=None, metavar="MODULE",
                        help="gradcam: the module whose output is explained, e.g. layer2 (None: the last feature map)")
    parser.add_argument("--batch-size", type=int, default=32, help="images decoded and explained together")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--source-format", choices=SOURCE_FORMATS, help=SOURCE_FORMAT_HELP)
    parser.set_defaults(run=run)


def run(args) -> int:
    from resnetlab.evaluation.explain import explain_files

    def report(entry) -> None:
        print(f"resnetlab: skipped {entry['error']}", file=sys.stderr)

    summary = explain_files(args.model, args.images, args.out, method=args.method, class_name=args.class_name,
                            layer=args.layer, device=args.device, source_format=args.source_format,
                            batch_size=args.batch_size, on_error=report)
    done = [e for e in summary["images"] if "file" in e]
    for e in done:
        print(f"{e['path']}: {e['predicted']} ({e['probability']:.1%}) -> {args.out}/{e['file']}")
    failed = len(summary["images"]) - len(done)
    if failed:
        print(f"resnetlab: {failed} of {len(summary['images'])} input(s) could not be read", file=sys.stderr)
    if done:
        print(f"wrote {len(done)} {summary['method']} overlay(s) and explanations.json to {args.out}", file=sys.stderr)
    return 0 if done else 1
