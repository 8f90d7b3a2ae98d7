"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks").

Each block is BN-ReLU-conv (Fig. 4(e)): nothing follows the addition, so the shortcut path is a
clean identity from any block to any later one (eq. 4). Where the shape changes, the shortcut is a
1x1 projection of the pre-activated input. The network ends with BN-ReLU before pooling, since
the last block's output is not normalized.

``preact_resnet18``: basic blocks, 64-512 channels, 3x3 stride-1 stem (the CIFAR ResNet-18 recipe).
``preact_resnet164``: bottleneck blocks on 16/32/64 (x4) channels, 18 per stage (9n+2 = 164), 1.7M params.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from resnetlab.models.base import ClassifierModel, init_conv_kaiming
from resnetlab.models.blocks import conv1x1, conv3x3
from resnetlab.models.registry import register_model


class PreActBlock(nn.Module):
    """y = x + conv(ReLU(BN(conv(ReLU(BN(x)))))); ``dropout`` between the convs (used by Wide ResNets)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        changes = stride != 1 or in_planes != planes
        self.shortcut = conv1x1(in_planes, planes, stride) if changes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut  # nothing after the addition: an identity path


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3 (stride), BN-ReLU-1x1 (x4), plus shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        out_planes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv3 = conv1x1(planes, out_planes)
        self.relu = nn.ReLU(inplace=True)
        changes = stride != 1 or in_planes != out_planes
        self.shortcut = conv1x1(in_planes, out_planes, stride) if changes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.dropout(self.relu(self.bn3(out))))
        return out + shortcut


class PreActResNet(ClassifierModel):
    """3x3 stem, stages of pre-activation blocks, final BN-ReLU, global average pooling, FC.

    ``stages`` lists (planes, blocks, stride); ``dropout`` goes inside every block.
    ``final_norm=False`` drops the final BN-ReLU and pools the raw sum of the last block, as
    kuangliu/pytorch-cifar's PreActResNet does (its checkpoints need it to give their own logits).
    """

    def __init__(
        self,
        block: type[PreActBlock] | type[PreActBottleneck],
        stages: list[tuple[int, int, int]],
        stem_width: int,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_chans: int = 3,
        final_norm: bool = True,
    ):
        super().__init__()
        self.conv1 = conv3x3(in_chans, stem_width)
        in_planes = stem_width
        layers = []
        for planes, blocks, stride in stages:
            stage = []
            for index in range(blocks):
                stage.append(block(in_planes, planes, stride if index == 0 else 1, dropout=dropout))
                in_planes = planes * block.expansion
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        # the last block's sum is not normalized yet (He et al. 2016b, Fig. 4(e) ends in BN-ReLU)
        self.bn = nn.BatchNorm2d(in_planes) if final_norm else nn.Identity()
        self.relu = nn.ReLU(inplace=True) if final_norm else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        init_conv_kaiming(self)

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.conv1(x))  # (B, C, H/8, W/8) for three stride-2 stages
        return self.relu(self.bn(x))  # pooled by forward_features


@register_model("preact_resnet18", family="preact-resnet")
def preact_resnet18(num_classes: int = 10, **options) -> PreActResNet:
    """Pre-activation ResNet-18 (He et al. 2016b) with the CIFAR stem: basic blocks, 64-512 channels."""
    stages = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
    return PreActResNet(PreActBlock, stages, stem_width=64, num_classes=num_classes, **options)


@register_model("preact_resnet164", family="preact-resnet")
def preact_resnet164(num_classes: int = 10, **options) -> PreActResNet:
    """Pre-activation ResNet-164 for CIFAR (He et al. 2016b, Table 3): 18 bottlenecks per stage, 1.7M params."""
    stages = [(16, 18, 1), (32, 18, 2), (64, 18, 2)]
    return PreActResNet(PreActBottleneck, stages, stem_width=16, num_classes=num_classes, **options)
