"""Residual blocks of He et al. 2016 ("Deep Residual Learning for Image Recognition").

A block computes ``y = relu(F(x) + shortcut(x))`` (Fig. 2 of the paper). Attribute names follow
torchvision (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``conv3``, ``bn3``, ``downsample``) so its
ImageNet checkpoints load unchanged. ``downsample`` is the shortcut when the shape changes
(``None`` means the identity). The same :class:`BasicBlock` with ``residual=False`` is the
"plain" block of the paper's Fig. 6: identical layers, only the addition is missing.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias: projection shortcuts and bottleneck reductions."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


PAD_MODES = ("end", "split")


class PadShortcut(nn.Module):
    """Shortcut option A (He et al. 2016, sec. 3.3 and 4.2): identity with zero-padded channels.

    Subsamples by taking every ``stride``-th pixel and adds zero channels; it has no parameters,
    which is why the CIFAR ResNets and their plain counterparts have equal parameter counts.
    The paper does not say where the zeros go, and implementations differ: ``pad="end"`` appends
    them after the input channels (fb.resnet.torch, resnetlab's default); ``pad="split"`` puts half
    before and half after (akamaster/pytorch_resnet_cifar10). Weights trained one way predict at
    chance the other way, and a strict state-dict load cannot tell them apart (no parameters here).
    """

    def __init__(self, out_planes: int, stride: int, pad: str = "end"):
        super().__init__()
        if pad not in PAD_MODES:
            raise ValueError(f"PadShortcut pad={pad!r}: expected one of {', '.join(PAD_MODES)}")
        self.out_planes = out_planes
        self.stride = stride
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, H/s, W/s)
        extra = self.out_planes - x.shape[1]
        before = extra // 2 if self.pad == "split" else 0
        return F.pad(x, (0, 0, 0, 0, before, extra - before))  # (B, C_out, H/s, W/s)

    def extra_repr(self) -> str:
        return f"out_planes={self.out_planes}, stride={self.stride}, pad={self.pad!r}"


def projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Shortcut option B: 1x1 convolution + BN (``downsample.0`` / ``downsample.1`` as in torchvision)."""
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions: F(x) = BN(conv(ReLU(BN(conv(x))))); y = ReLU(F(x) + shortcut(x))."""

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
    ):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual  # False: a "plain" block (no shortcut at all)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # F(x), first layer
        out = self.bn2(self.conv2(out))  # F(x), second layer (no ReLU before the addition)
        if self.residual:
            shortcut = x if self.downsample is None else self.downsample(x)
            out = out + shortcut  # y = F(x) + shortcut(x)
        return self.relu(out)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) (He et al. 2016, Fig. 5 right); stride on the 3x3 as in torchvision."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


def zero_init_last_bn(model: nn.Module) -> None:
    """Set the last BN's gamma of every residual block to 0, so each block starts as the identity
    (Goyal et al. 2017, "Accurate, Large Minibatch SGD", sec. 5.1)."""
    for module in model.modules():
        # a plain block (no shortcut) would output zeros forever, so it keeps its gamma
        if isinstance(module, (BasicBlock, Bottleneck)) and getattr(module, "residual", True):
            nn.init.zeros_(module.last_bn().weight)
