"""`resnetlab export MODEL --format onnx|torchscript`: a file for other runtimes, checked against PyTorch."""

from __future__ import annotations

import argparse

from resnetlab.inference.export import DEFAULT_ATOL, DEFAULT_OPSET, FORMATS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained model to ONNX or TorchScript (parity-checked)",
        description="Write the model as ONNX (input 'images' float32 (batch, 3, H, W) normalized with the model's "
                    "mean/std, output 'logits', dynamic batch; metadata in metadata_props and FILE.json) or "
                    "TorchScript (metadata in the archive's extra files). The export is run on a random batch "
                    "and compared with PyTorch; nothing is written if the difference exceeds the tolerance.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="run directory, model file (.safetensors) or checkpoint (.pt)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--output", "-o", metavar="FILE",
                        help="output file (default: RUN/model.onnx or RUN/model.torchscript.pt, or beside the model file)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help="allowed max abs difference to PyTorch, per unit of the largest logit (at least 1)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from resnetlab.inference.export import export_model

    result = export_model(args.model, args.format, args.output, opset=args.opset, atol=args.atol)
    print(f"wrote {result.path} ({result.format}, exporter {result.exporter})")
    if result.sidecar:
        print(f"wrote {result.sidecar} (metadata)")
    print(f"parity vs PyTorch on a random batch: max abs diff {result.max_abs_diff:.3g} (tolerance {result.tolerance:.3g})")
    return 0
