"""``resnetlab calibrate``: fit temperature scaling on a validation split and store T with the model."""

from __future__ import annotations

import argparse

from resnetlab.commands import SOURCE_FORMAT_HELP, SOURCE_FORMATS

EPILOG = """\
examples:
  resnetlab calibrate runs/resnet20-he2016                      # the run's own validation split; T goes into its model.json
  resnetlab calibrate model.safetensors --data ./photos --split val
  resnetlab calibrate resnet32-d509ac18.th --data ./held-out --split all --output resnet32-calibrated.safetensors

Temperature scaling (Guo et al. 2017): one number T > 0 divides the logits, fitted by minimising the
negative log-likelihood on the split. Accuracy does not change; probabilities become honest. predict,
serve, evaluate and export (ONNX: T inside the graph) then use softmax(logits / T). Measure the effect
on another split with 'resnetlab evaluate': its report shows ECE, NLL and the reliability diagram
before and after.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="fit temperature scaling on a validation split and store T in the model's metadata",
        description="Fit the temperature T of MODEL on a split of DATA (minimum NLL) and store it in model.json.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="run directory or .safetensors model file (updated in place), or a .pt / "
                   "outside checkpoint (akamaster .th, ...; needs --output)")
    p.add_argument("--data", help="cifar10, cifar100, an archive or an image folder (default: the run's data when MODEL is in a run directory)")
    p.add_argument("--split", default="val", choices=["val", "test", "train", "all"],
                   help="the split T is fitted on; keep the test split for measuring (default: val)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write a calibrated copy as a resnetlab model file here instead of updating MODEL "
                   "(required for checkpoints, which cannot hold T) (default: update MODEL's model.json)")
    p.add_argument("--source-format", choices=SOURCE_FORMATS, help=SOURCE_FORMAT_HELP)
    p.add_argument("--batch-size", type=int, default=512, help="images per forward pass (default: 512)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--data-dir", help="where cifar10/cifar100 archives are found or downloaded (default: the run's, else the cache)")
    p.add_argument("--image-size", type=int, help="resize image-folder images to this square size (default: the run's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from resnetlab.errors import ConfigError
    from resnetlab.evaluation.calibration import calibrate_path

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be >= 1")
    result = calibrate_path(args.model, args.data, split=args.split, output=args.output, device=args.device,
                            batch_size=args.batch_size, data_dir=args.data_dir, image_size=args.image_size,
                            source_format=args.source_format)
    print(f"temperature T = {result['temperature']:.4f}, fitted on the {result['split']} split of {result['data']} "
          f"({result['num_samples']} images)")
    print(f"there: NLL {result['nll_before']:.4f} -> {result['nll_after']:.4f}, ECE {result['ece_before']:.2%} -> "
          f"{result['ece_after']:.2%}, accuracy {result['accuracy']:.2%} (unchanged)")
    print(f"wrote T into {result['path']} (model.json); measure it on another split with 'resnetlab evaluate'")
    return 0
