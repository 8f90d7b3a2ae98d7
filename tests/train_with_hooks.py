"""Subprocess entry point for the engine tests (not a test module: it defines no tests).

    python tests/train_with_hooks.py [--stop-after-steps N] [--nan-at-step N] [--sleep-per-step S]
        [--save-delay S] [--skip-rng-restore torch,numpy] -- train --data ... (any resnetlab command line)

runs the real resnetlab CLI (``cli.main``, the same path as ``python -m resnetlab``) with
``engine.TrainHooks`` built from the options (helpers.debug_hooks), so signal and torchrun tests get
a real process with deterministic stops and faults that no config file or environment can switch
on. It also registers a tiny test model ``tiny_test_net`` (a few conv channels, optional dropout,
optional BatchNorm); registration happens only when run as a script, so the registry seen by other
tests is untouched. Without ``--`` every argument goes to resnetlab.
"""

from __future__ import annotations

import argparse
import sys


def _register_tiny_model() -> None:
    import torch
    import torch.nn as nn

    from resnetlab.models.base import ClassifierModel
    from resnetlab.models.registry import register_model

    class TinyNet(ClassifierModel):
        def __init__(self, num_classes=10, width=8, dropout=0.0, bn=False):
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(width) if bn else nn.Identity()
            self.drop = nn.Dropout(dropout)
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.num_features = width * 4
            self.fc = nn.Linear(self.num_features, num_classes)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn(self.conv(x)))  # (B, W, H/2, W/2)
            return self.drop(torch.flatten(self.pool(x), 1))  # (B, 4W)

    @register_model("tiny_test_net", family="test")
    def tiny_test_net(num_classes: int = 10, **options):
        return TinyNet(num_classes=num_classes, **options)


def _hooks(argv: list[str]):
    from helpers import debug_hooks  # tests/ is sys.path[0] when this file runs as a script

    parser = argparse.ArgumentParser(prog="train_with_hooks.py")
    parser.add_argument("--stop-after-steps", type=int)
    parser.add_argument("--nan-at-step", type=int)
    parser.add_argument("--sleep-per-step", type=float, default=0.0)
    parser.add_argument("--save-delay", type=float, default=0.0)
    parser.add_argument("--skip-rng-restore", default="")
    args = parser.parse_args(argv)
    return debug_hooks(stop_after_steps=args.stop_after_steps, nan_at_step=args.nan_at_step, sleep_per_step=args.sleep_per_step,
                       save_delay_s=args.save_delay, skip_rng_restore=[s for s in args.skip_rng_restore.split(",") if s])


if __name__ == "__main__":
    argv = sys.argv[1:]
    hook_argv, resnetlab_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else ([], argv)
    hooks = _hooks(hook_argv)
    _register_tiny_model()
    from resnetlab.cli import main

    raise SystemExit(main(resnetlab_argv, hooks=hooks))
