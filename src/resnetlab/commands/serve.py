"""`resnetlab serve MODEL`: a local web page and JSON API for predictions."""

from __future__ import annotations

import argparse

from resnetlab.commands import SOURCE_FORMAT_HELP, SOURCE_FORMATS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model: a web page to drop images on, and POST /predict",
        description="Start a web server: GET / is a page where you drop or pick an image and see the top-k "
                    "classes; POST /predict takes multipart image file(s) and returns JSON; GET /health; "
                    "GET /report shows the model's evaluation report when RUN/eval/report.html exists (RUN being the run "
                    "directory MODEL is, or is a file of), with only the files that report links to.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="run directory, model file (.safetensors), checkpoint (.pt), exported .onnx, "
                        "or an outside checkpoint (akamaster .th, kuangliu, torchvision/timm ResNet state dict)")
    parser.add_argument("--source-format", choices=SOURCE_FORMATS, help=SOURCE_FORMAT_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (keep 127.0.0.1 unless you mean to share it)")
    parser.add_argument("--allowed-host", action="append", metavar="NAME",
                        help="with a non-loopback --host: a host name clients may use in the URL (repeatable). IP addresses, "
                             "localhost and this machine's name are always accepted; other Host headers get 400, which "
                             "stops DNS-rebinding pages. '*' accepts any name")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body accepted (413 above)")
    parser.add_argument("--decode-budget-mb", type=float, default=512.0,
                        help="decoded pixels this server holds at once (a 49-megapixel picture takes ~200 MB); "
                             "an upload that finds no room within 10 s gets 503 with Retry-After")
    parser.add_argument("--top-k", type=int, default=5, help="classes returned per image unless ?top_k= says otherwise")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation (the views of evaluate --tta: flips and shifts, or for a photo model flipped "
                             "centre and corner crops; the answer names them) by default; "
                             "a request's ?tta=0 or ?tta=1 overrides it")
    parser.set_defaults(run=run)


def run(args) -> int:
    from resnetlab.serve.server import serve

    # FORMAT:PATH is how every loader takes a named format (resnetlab.models.importers.split_format_prefix).
    model = f"{args.source_format}:{args.model}" if args.source_format else args.model
    serve(model, host=args.host, port=args.port, device=args.device, max_upload_mb=args.max_upload_mb,
          top_k=args.top_k, allowed_hosts=args.allowed_host, decode_budget_mb=args.decode_budget_mb, tta=args.tta)
    return 0
