"""`resnetlab serve MODEL`: a local web page and JSON API for predictions."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model: a web page to drop images on, and POST /predict",
        description="Start a web server: GET / is a page where you drop or pick an image and see the top-k "
                    "classes; POST /predict takes multipart image file(s) and returns JSON; GET /health; "
                    "GET /report shows the model's evaluation report when RUN/eval/report.html exists.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="run directory, model file (.safetensors), checkpoint (.pt) or exported .onnx")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (keep 127.0.0.1 unless you mean to share it)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body accepted (413 above)")
    parser.add_argument("--top-k", type=int, default=5, help="classes returned per image unless ?top_k= says otherwise")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.set_defaults(run=run)


def run(args) -> int:
    from resnetlab.serve.server import serve

    serve(args.model, host=args.host, port=args.port, device=args.device, max_upload_mb=args.max_upload_mb,
          top_k=args.top_k)
    return 0
