"""Plain counterparts of the CIFAR ResNets (He et al. 2016, Fig. 6 left).

Exactly the layers of ``resnet20`` ... ``resnet110`` (same :class:`BasicBlock`), but the blocks
compute y = relu(F(x)) without the shortcut. Option-A shortcuts have no parameters, so each plain
net has the same parameter count as its ResNet: any difference in training is the addition's.
"""

from __future__ import annotations

from resnetlab.models.registry import register_model
from resnetlab.models.resnet_cifar import CifarResNet

DEPTHS = (20, 32, 44, 56, 110)


def _register(depth: int) -> None:
    n = (depth - 2) // 6

    def builder(num_classes: int = 10, **options) -> CifarResNet:
        return CifarResNet(n, num_classes=num_classes, shortcut=None, **options)

    builder.__doc__ = f"Plain-{depth} for CIFAR: ResNet-{depth}'s layers without shortcuts (He et al. 2016, Fig. 6)."
    register_model(f"plain{depth}", family="plain-cifar")(builder)


for _depth in DEPTHS:
    _register(_depth)
