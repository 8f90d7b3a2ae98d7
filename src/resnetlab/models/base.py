"""The interface every resnetlab model shares (in the manner of timm's models).

A model is ``forward_head(forward_features(x))``: ``forward_features`` returns pooled features
(B, F) and ``forward_head`` maps them to logits with the classifier named by ``classifier_name``
(the same attribute path the registry records as ``meta.classifier``). Fine-tuning swaps heads with
``reset_classifier``; feature extraction calls ``forward_features``.

Models whose features are a global pool of a spatial map split once more:
``forward_features(x) = flatten(global_pool(forward_feature_map(x)))`` with ``global_pool_name`` naming
the pooling module. The class activation maps of :mod:`resnetlab.evaluation.explain` use that split, so a
CAM is computed from the very tensor the logits are (no hooks, no second forward path to drift apart).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class ClassifierModel(nn.Module):
    """Base class: subclasses set ``num_features`` and ``classifier_name`` and define ``forward_features``."""

    classifier_name: str = "fc"
    num_features: int = 0
    global_pool_name: str = "avgpool"  # used only by models that define forward_feature_map

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial feature map (B, C, h, w), before global pooling (models that have one)."""
        raise NotImplementedError(f"{type(self).__name__} has no spatial feature map before its head")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.get_submodule(self.global_pool_name)(self.forward_feature_map(x)), 1)  # (B, C)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.get_classifier()(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised ``nn.Linear`` with ``num_classes`` outputs."""
        old = self.get_classifier()
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        parent_path, _, attr = self.classifier_name.rpartition(".")
        parent = self.get_submodule(parent_path) if parent_path else self
        setattr(parent, attr, new)
        meta = getattr(self, "meta", None)
        if meta is not None:
            meta.num_classes = num_classes


def init_conv_kaiming(model: nn.Module) -> None:
    """He et al. 2015 ("Delving deep into rectifiers") normal init for convs; BN to identity.

    fan_out mode, as in the authors' reference reproduction (fb.resnet.torch) and torchvision;
    this is the init He et al. 2016 cite ("we initialize the weights as in [13]").
    """
    for module in model.modules():
        if getattr(module, "weight", None) is not None and module.weight.is_meta:
            continue  # shapes only (FLOP counting): random init on "meta" is slow and pointless
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
