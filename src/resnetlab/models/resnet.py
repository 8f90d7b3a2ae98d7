"""ImageNet ResNets (He et al. 2016, Table 1): ResNet-18/34 (basic) and 50/101/152 (bottleneck).

Module names and shapes equal torchvision's ``resnet18`` ... ``resnet152`` (the "v1.5" variant,
stride on the bottleneck's 3x3), so their state dicts load with ``strict=True``.

``cifar_stem=True`` replaces the 7x7 stride-2 conv and the max-pool by a 3x3 stride-1 conv, the
usual CIFAR ResNet-18 recipe for 32x32 inputs; the registered ``resnet18_cifar``,
``resnet34_cifar`` and ``resnet50_cifar`` are that option with CIFAR metadata (32x32 input).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from resnetlab.models.base import ClassifierModel, init_conv_kaiming
from resnetlab.models.blocks import BasicBlock, Bottleneck, projection, zero_init_last_bn
from resnetlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, register_model

LAYERS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(ClassifierModel):
    """ResNet with four stages of 64/128/256/512 (x expansion) channels; torchvision-compatible names."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        cifar_stem: bool = False,
        zero_init_residual: bool = False,
        in_chans: int = 3,
    ):
        super().__init__()
        self.cifar_stem = cifar_stem
        if cifar_stem:  # 32x32 inputs: keep the resolution, as CIFAR ResNet-18 recipes do
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.in_planes = 64
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        init_conv_kaiming(self)
        if zero_init_residual:
            zero_init_last_bn(self)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * block.expansion
        # projection shortcut (option B) wherever the shape changes, as in the paper's ImageNet nets
        downsample = projection(self.in_planes, out_planes, stride) if stride != 1 or self.in_planes != out_planes else None
        layers = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = out_planes
        layers += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4); H with cifar_stem
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512*e, H/32, W/32); pooled by forward_features


def _register(depth: int) -> None:
    block, layers = LAYERS[depth]

    def imagenet_builder(num_classes: int = 1000, **options) -> ResNet:
        model = ResNet(block, layers, num_classes=num_classes, **options)
        if model.cifar_stem:
            model.meta_overrides = {"input_size": (3, 32, 32)}
        return model

    imagenet_builder.__doc__ = f"ResNet-{depth} for ImageNet (He et al. 2016, Table 1), torchvision-compatible."
    register_model(f"resnet{depth}", input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, family="resnet")(
        imagenet_builder
    )


def _register_cifar(depth: int) -> None:
    block, layers = LAYERS[depth]

    def cifar_builder(num_classes: int = 10, **options) -> ResNet:
        return ResNet(block, layers, num_classes=num_classes, cifar_stem=True, **options)

    cifar_builder.__doc__ = f"ResNet-{depth} with the CIFAR stem (3x3 stride-1 conv, no max-pool) for 32x32 images."
    register_model(f"resnet{depth}_cifar", family="resnet")(cifar_builder)


for _depth in LAYERS:
    _register(_depth)
for _depth in (18, 34, 50):
    _register_cifar(_depth)
