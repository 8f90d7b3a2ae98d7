"""Wide Residual Networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

WRN-d-k: a 3x3 stem with 16 filters, then three stages of (d-4)/6 pre-activation basic blocks
with 16k, 32k and 64k channels (Table 1), final BN-ReLU, global average pooling and FC. Dropout
between the two convs of each block (sec. 2.4; the paper uses 0.3 on CIFAR) is the ``dropout``
option, off by default. WRN-28-10 has 36.5M parameters, WRN-16-8 11.0M.
"""

from __future__ import annotations

from resnetlab.models.preact import PreActBlock, PreActResNet
from resnetlab.models.registry import register_model


def wide_resnet(depth: int, width: int, num_classes: int = 10, dropout: float = 0.0, **options) -> PreActResNet:
    """WRN-depth-width (depth = 6n + 4)."""
    n = (depth - 4) // 6
    stages = [(16 * width, n, 1), (32 * width, n, 2), (64 * width, n, 2)]
    return PreActResNet(PreActBlock, stages, stem_width=16, num_classes=num_classes, dropout=dropout, **options)


@register_model("wrn16_8", family="wide-resnet")
def wrn16_8(num_classes: int = 10, **options) -> PreActResNet:
    """Wide ResNet WRN-16-8 (Zagoruyko & Komodakis 2016): 2 wide blocks per stage, 128/256/512 channels."""
    return wide_resnet(16, 8, num_classes=num_classes, **options)


@register_model("wrn28_10", family="wide-resnet")
def wrn28_10(num_classes: int = 10, **options) -> PreActResNet:
    """Wide ResNet WRN-28-10 (Zagoruyko & Komodakis 2016): 4 wide blocks per stage, 160/320/640 channels."""
    return wide_resnet(28, 10, num_classes=num_classes, **options)
