"""The baseline CNN of the tutorial: no residuals, the reference point in comparisons.

conv3x3(64)-ReLU-maxpool2, conv3x3(64)-ReLU-maxpool2, FC 4096->128, ReLU, FC 128->classes.
4096 = 64 x 8 x 8, so it takes 32x32 inputs only.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from resnetlab.models.base import ClassifierModel
from resnetlab.models.registry import register_model


class BaselineCNN(ClassifierModel):
    """Two conv/pool stages and a two-layer MLP; ``forward_features`` returns the 128-d hidden layer."""

    def __init__(self, num_classes: int = 10, width: int = 64, hidden: int = 128, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.hidden = nn.Linear(width * 8 * 8, hidden)
        self.num_features = hidden
        self.fc = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))  # (B, 64, 16, 16)
        x = self.pool(self.relu(self.conv2(x)))  # (B, 64, 8, 8)
        return self.relu(self.hidden(torch.flatten(x, 1)))  # (B, 128)


@register_model("cnn_baseline", family="cnn")
def cnn_baseline(num_classes: int = 10, **options) -> BaselineCNN:
    """Baseline CNN without residuals: 2x (conv3x3 64, ReLU, max-pool), FC 4096-128-classes."""
    return BaselineCNN(num_classes=num_classes, **options)
