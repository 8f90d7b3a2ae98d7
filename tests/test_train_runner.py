"""Subprocess entry point for the engine tests (not a test module: it defines no tests).

``python tests/test_train_runner.py train ...`` registers a tiny test model ``tiny_test_net``
(a few conv channels, optional dropout, optional BatchNorm) and then runs the real resnetlab CLI.
Registration happens only when run as a script, so the registry seen by other tests is untouched.
"""

from __future__ import annotations

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


if __name__ == "__main__":
    _register_tiny_model()
    from resnetlab.cli import main

    raise SystemExit(main(sys.argv[1:]))
