"""CIFAR ResNets of He et al. 2016, section 4.2 ("Deep Residual Learning for Image Recognition").

6n+2 weighted layers: a 3x3 conv with 16 filters, three stages of n basic blocks (2n layers each)
on 32x32, 16x16 and 8x8 maps with 16, 32 and 64 filters (stride-2 convs subsample), then global
average pooling and a fully connected layer. n = 3, 5, 7, 9, 18, 200 gives ResNet-20 ... ResNet-1202
with 0.27M ... 19.4M parameters (the paper's Table 6).

Shortcuts: option A (default, the paper's CIFAR choice) is the identity, zero-padded where the
channels grow; option B is a 1x1 projection + BN where the shape changes. ``shortcut=None`` drops
shortcuts altogether: the "plain" networks of Fig. 6 (see ``plain.py``).

``shortcut_pad`` says where option A's zero channels go: "end" (default, as fb.resnet.torch) or
"split" (half on each side, as akamaster/pytorch_resnet_cifar10, whose checkpoints need it; see
:class:`~resnetlab.models.blocks.PadShortcut`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from resnetlab.errors import ConfigError
from resnetlab.models.base import ClassifierModel, init_conv_kaiming
from resnetlab.models.blocks import PAD_MODES, BasicBlock, PadShortcut, conv3x3, projection, zero_init_last_bn
from resnetlab.models.registry import register_model

STAGE_WIDTHS = (16, 32, 64)
SHORTCUTS = ("A", "B", None)


def make_shortcut(kind: str | None, in_planes: int, planes: int, stride: int, pad: str = "end") -> nn.Module | None:
    """The shortcut of a block whose shape changes (``None``: the identity is enough)."""
    if stride == 1 and in_planes == planes:
        return None
    if kind == "A":
        return PadShortcut(planes, stride, pad)
    if kind == "B":
        return projection(in_planes, planes, stride)
    return None  # plain network: no shortcut at all


class CifarResNet(ClassifierModel):
    """ResNet-(6n+2) for 32x32 images; ``shortcut`` is "A", "B" or None (plain network);
    ``shortcut_pad`` ("end" or "split") places option A's zero channels."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        shortcut: str | None = "A",
        zero_init_residual: bool = False,
        in_chans: int = 3,
        shortcut_pad: str = "end",
    ):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ConfigError(f"option shortcut={shortcut!r} is not one of 'A', 'B' or None")
        if shortcut_pad not in PAD_MODES:
            raise ConfigError(f"option shortcut_pad={shortcut_pad!r} is not one of {', '.join(map(repr, PAD_MODES))}")
        self.shortcut = shortcut
        residual = shortcut is not None
        self.conv1 = conv3x3(in_chans, STAGE_WIDTHS[0])  # (B, 16, 32, 32)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = STAGE_WIDTHS[0]
        stages = []
        for index, planes in enumerate(STAGE_WIDTHS):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if index > 0 and block_index == 0 else 1
                downsample = make_shortcut(shortcut, in_planes, planes, stride, shortcut_pad)
                blocks.append(BasicBlock(in_planes, planes, stride, downsample, residual=residual))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages  # (B, 16, 32, 32), (B, 32, 16, 16), (B, 64, 8, 8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        init_conv_kaiming(self)
        if zero_init_residual:
            zero_init_last_bn(self)

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))  # (B, 64, H/4, W/4); forward_features pools it


def _register(depth: int) -> None:
    n = (depth - 2) // 6

    def builder(num_classes: int = 10, **options) -> CifarResNet:
        return CifarResNet(n, num_classes=num_classes, **options)

    builder.__doc__ = f"ResNet-{depth} for CIFAR (He et al. 2016, sec. 4.2): n={n} basic blocks per stage."
    register_model(f"resnet{depth}", family="resnet-cifar")(builder)


DEPTHS = (20, 32, 44, 56, 110, 1202)
for _depth in DEPTHS:
    _register(_depth)
