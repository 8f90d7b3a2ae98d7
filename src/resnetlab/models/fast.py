"""Networks of the CIFAR-10 speed records.

``resnet9``: the DAWNBench residual network of D. Page (2018, "How to train your ResNet", part 4
final network): prep conv 64; layer1 conv 128 + max-pool + residual of two convs; layer2 conv 256 +
max-pool; layer3 conv 512 + max-pool + residual; global max-pool; bias-free FC whose output is
multiplied by 0.125 (Page's fix for overconfident logits at the start of training).

``fastnet94``: in the manner of K. Jordan's airbench (2024, "94% on CIFAR-10 in 3.29 seconds"):
a frozen 2x2 patch-whitening conv initialised from the data, then three conv groups
[conv, max-pool, BN, GELU, conv, BN, GELU] of 64/256/256 channels, global max-pool and a
bias-free linear head scaled by 1/9. Convs start as identities (Dirac init) on their first
input-channel filters; BN has no learnable scale by default.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from resnetlab.models.base import ClassifierModel, init_conv_kaiming
from resnetlab.models.blocks import conv3x3
from resnetlab.models.registry import register_model

# ---------------------------------------------------------------------------------------------
# ResNet-9 (Page 2018)


class ConvBN(nn.Sequential):
    """conv3x3 (no bias) -> BN -> ReLU."""

    def __init__(self, in_planes: int, planes: int):
        super().__init__()
        self.conv = conv3x3(in_planes, planes)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)


class Residual(nn.Module):
    """y = x + res2(res1(x)) (Page's residual branch; no activation after the sum)."""

    def __init__(self, planes: int):
        super().__init__()
        self.res1 = ConvBN(planes, planes)
        self.res2 = ConvBN(planes, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


class ResNet9(ClassifierModel):
    """Page's DAWNBench ResNet-9 (6.5M parameters); ``head_scale`` multiplies the logits."""

    global_pool_name = "pool"  # global max pooling: Grad-CAM explains it, CAM needs an average

    def __init__(self, num_classes: int = 10, head_scale: float = 0.125, in_chans: int = 3):
        super().__init__()
        self.prep = ConvBN(in_chans, 64)  # (B, 64, 32, 32)
        self.layer1 = nn.Sequential(ConvBN(64, 128), nn.MaxPool2d(2), Residual(128))  # (B, 128, 16, 16)
        self.layer2 = nn.Sequential(ConvBN(128, 256), nn.MaxPool2d(2))  # (B, 256, 8, 8)
        self.layer3 = nn.Sequential(ConvBN(256, 512), nn.MaxPool2d(2), Residual(512))  # (B, 512, 4, 4)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.num_features = 512
        self.fc = nn.Linear(512, num_classes, bias=False)
        self.head_scale = head_scale
        init_conv_kaiming(self)

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.prep(x))))  # (B, 512, 4, 4); max-pooled by forward_features

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features) * self.head_scale


@register_model("resnet9", family="fast")
def resnet9(num_classes: int = 10, **options) -> ResNet9:
    """ResNet-9 of Page's DAWNBench CIFAR-10 record (2018): 94% in minutes."""
    return ResNet9(num_classes=num_classes, **options)


# ---------------------------------------------------------------------------------------------
# fastnet94 (airbench-style)


class ConvGroup(nn.Module):
    """conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU (pooling before BN halves its cost)."""

    def __init__(self, in_planes: int, planes: int, bn_momentum: float, bn_scale: bool):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = _batchnorm(planes, bn_momentum, bn_scale)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = _batchnorm(planes, bn_momentum, bn_scale)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return self.act(self.bn2(self.conv2(x)))


def _batchnorm(planes: int, momentum: float, scale: bool) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(planes, momentum=momentum)
    bn.weight.requires_grad_(scale)  # scale=False: gamma stays 1, only the shift (beta) learns
    return bn


class FastNet(ClassifierModel):
    """airbench-style fast CIFAR network. Parameters:

    - ``widths``: channels of the three conv groups (64, 256, 256).
    - ``whiten_width``: 2x2 patch-whitening channels; 24 = 12 eigenvectors of the 3x2x2 patch
      covariance and their negatives (after GELU both signs of each direction survive).
    - ``bn_momentum``: PyTorch convention (weight of the new batch); 0.4 keeps 60% of the running
      statistics per step, fast enough for runs of a few hundred steps.
    - ``bn_scale``: learn BN's gamma (False: shift only, as in airbench).
    - ``identity_init``: Dirac-initialise each conv's first ``in_channels`` filters so every group
      starts close to passing its input through.
    - ``head_scale``: logits multiplier (1/9), keeps the initial softmax soft.
    """

    global_pool_name = "pool"  # global max pooling: Grad-CAM explains it, CAM needs an average

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 256, 256),
        whiten_width: int = 24,
        bn_momentum: float = 0.4,
        bn_scale: bool = False,
        identity_init: bool = True,
        head_scale: float = 1 / 9,
        in_chans: int = 3,
    ):
        super().__init__()
        self.whiten = nn.Conv2d(in_chans, whiten_width, kernel_size=2, padding=0, bias=True)  # (B, 24, 31, 31)
        self.act = nn.GELU()
        self.layer1 = ConvGroup(whiten_width, widths[0], bn_momentum, bn_scale)  # (B, 64, 15, 15)
        self.layer2 = ConvGroup(widths[0], widths[1], bn_momentum, bn_scale)  # (B, 256, 7, 7)
        self.layer3 = ConvGroup(widths[1], widths[2], bn_momentum, bn_scale)  # (B, 256, 3, 3)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.num_features = widths[2]
        self.fc = nn.Linear(widths[2], num_classes, bias=False)
        self.head_scale = head_scale
        if identity_init:
            for group in (self.layer1, self.layer2, self.layer3):
                for conv in (group.conv1, group.conv2):
                    with torch.no_grad():
                        nn.init.dirac_(conv.weight[: conv.in_channels])

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        return self.layer3(self.layer2(self.layer1(x)))  # (B, 256, 3, 3); max-pooled by forward_features

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features) * self.head_scale

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4, freeze: bool = True) -> None:
        """Set the 2x2 first conv to whiten the patches of ``images`` (normalized float, NCHW).

        With C the covariance of the flattened 2x2 patches and C = V diag(l) V^T, filter i is
        v_i / sqrt(l_i + eps), so the filter responses are decorrelated with unit variance
        (ZCA without the rotation back); the second half of the filters are their negatives.
        ``freeze`` stops the weights training (the bias still learns).
        """
        weight = self.whiten.weight
        out_channels, in_chans, kh, kw = weight.shape
        dim = in_chans * kh * kw
        total = torch.zeros(dim, dtype=torch.float64)
        outer = torch.zeros(dim, dim, dtype=torch.float64)
        count = 0
        for chunk in images.split(256):  # bounded memory: ~1,000 patches per image
            chunk = chunk.to(weight.device, torch.float32)
            windows = chunk.unfold(2, kh, 1).unfold(3, kw, 1)  # view (n, C, H', W', kh, kw)
            # (C, kh, kw) order, as the conv weight flattens
            patches = windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, dim).double()  # (n*H'*W', 12)
            total += patches.sum(dim=0).cpu()
            outer += (patches.T @ patches).cpu()
            count += len(patches)
        mean = total / count
        covariance = outer / count - torch.outer(mean, mean)  # (12, 12)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # columns are eigenvectors
        filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]  # (12, 12)
        filters = filters.reshape(-1, in_chans, kh, kw)
        filters = torch.cat([filters, -filters])[:out_channels]
        weight.copy_(filters.to(weight.dtype))
        self.whiten.bias.zero_()
        weight.requires_grad_(not freeze)

    def init_from_data(self, images: torch.Tensor) -> None:
        """Engine hook: called once with training images (normalized float NCHW) before training."""
        self.init_whitening(images)


@register_model("fastnet94", family="fast")
def fastnet94(num_classes: int = 10, **options) -> FastNet:
    """airbench-style fast CIFAR net: 2x2 whitening conv, 3 conv groups (64/256/256), GELU, max-pool."""
    return FastNet(num_classes=num_classes, **options)
