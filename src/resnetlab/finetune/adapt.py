"""Build the model to fine-tune: the registered architecture, the source's weights, a new head and,
for 32x32 images, optionally a new stem.

Every tensor of the target model is accounted for in a :class:`KeyReport`: *loaded* from the
source (bit-identical), *adapted* (the stem conv resized), or *new* (the classifier for the new
class count); every source tensor left unused is *dropped*. Anything else -- a missing backbone
key, a shape that differs -- means the source is another architecture and is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from resnetlab.errors import CheckpointError, ConfigError
from resnetlab.finetune.sources import SourceWeights, describe_layout
from resnetlab.models.registry import create_model

STEM_KEY = "conv1.weight"  # torchvision-style ResNets: the first conv
STEM_INITS = ("resize", "center")


@dataclass
class KeyReport:
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        def names(keys: list[str]) -> str:
            shown = ", ".join(keys[:4]) + (f", ... (+{len(keys) - 4})" if len(keys) > 4 else "")
            return f" [{shown}]" if keys else ""

        return (
            f"loaded {len(self.loaded)} tensors; adapted {len(self.adapted)}{names(self.adapted)}; "
            f"new {len(self.new)}{names(self.new)}; dropped {len(self.dropped)}{names(self.dropped)}"
        )


def build_model(
    source: SourceWeights,
    num_classes: int,
    *,
    model_name: str | None = None,
    classes: list[str] | None = None,
    adapt_stem: bool = False,
    stem_init: str = "resize",
    reset_head: bool = False,
) -> tuple[nn.Module, KeyReport]:
    """The model ``model_name`` (default: the source's architecture) holding the source's weights.

    The classifier (``meta.classifier``) is kept only when it already has ``num_classes`` outputs
    for the same classes and ``reset_head`` is False; otherwise it is new. ``adapt_stem`` builds the
    model with the CIFAR stem (3x3 stride-1 conv, no max-pool) and initialises that conv from the
    source's 7x7 one (:func:`resize_stem_kernel`).
    """
    name = model_name or source.architecture
    if name is None:
        raise ConfigError(
            f"--model: the architecture of {source.origin} ({describe_layout(source.state_dict)}) is not one resnetlab "
            "recognises; name the model to build with --model"
        )
    if source.architecture and model_name and _base(model_name) != _base(source.architecture):
        raise CheckpointError(
            f"--from {source.origin} holds {source.architecture} weights ({describe_layout(source.state_dict)}) "
            f"but --model is {model_name}; use --model {source.architecture} or a source of {model_name} weights"
        )
    if stem_init not in STEM_INITS:
        raise ConfigError(f"--stem-init {stem_init!r}: expected one of {', '.join(STEM_INITS)}")

    # The source's own options (e.g. cifar_stem, shortcut type) describe its architecture: keep them.
    same_family = source.architecture is None or _base(name) == _base(source.architecture)
    options = dict(source.options) if same_family else {}
    if name.endswith("_cifar"):
        options.pop("cifar_stem", None)  # those builders set it themselves
    elif adapt_stem:
        options["cifar_stem"] = True
    model = create_model(name, num_classes=num_classes, **options)
    target = model.state_dict()
    head = model.meta.classifier
    head_keys = {k for k in target if k.startswith(f"{head}.")}
    source_head_keys = {k for k in source.state_dict if k.startswith(f"{source.classifier}.")}

    keep_head = not reset_head and source.num_classes == num_classes and (
        not classes or not source.classes or list(source.classes) == list(classes)
    )
    report = KeyReport()
    state: dict[str, torch.Tensor] = {}
    missing, mismatched = [], []
    for key, value in target.items():
        found = source.state_dict.get(key)
        if key in head_keys and not keep_head:
            report.new.append(key)
        elif found is None:
            if key.endswith("num_batches_tracked"):  # older checkpoints omit this counter
                report.new.append(key)
            else:
                missing.append(key)
        elif tuple(found.shape) == tuple(value.shape):
            state[key] = found.to(dtype=value.dtype)
            report.loaded.append(key)
        elif key == STEM_KEY and adapt_stem and found.ndim == 4 and found.shape[:2] == value.shape[:2]:
            state[key] = resize_stem_kernel(found, value.shape[-1], method=stem_init).to(dtype=value.dtype)
            report.adapted.append(key)
        else:
            mismatched.append(f"{key} {tuple(found.shape)} vs {tuple(value.shape)}")
    unexpected = [k for k in source.state_dict if k not in target and k not in source_head_keys]
    if missing or mismatched or unexpected:
        raise CheckpointError(_mismatch_message(source, name, missing, mismatched, unexpected, adapt_stem))
    report.dropped = sorted(k for k in source.state_dict if k not in state and (k in source_head_keys or k not in target))

    full = dict(target)
    full.update(state)
    model.load_state_dict(full, strict=True)
    model.meta.mean = tuple(source.mean)  # normalize as the weights were trained
    model.meta.std = tuple(source.std)
    model.meta.classes = list(classes) if classes else None
    return model, report


def resize_stem_kernel(weight: torch.Tensor, size: int, method: str = "resize") -> torch.Tensor:
    """A (O, I, k, k) conv kernel -> (O, I, size, size) for the CIFAR stem.

    ``resize`` (default): split the k x k kernel into size x size equal areas and give each new tap
    the total weight falling in its area (pixels on a border are shared in proportion). Each
    filter's sum -- its response to a flat patch -- is kept exactly, so the pretrained ``bn1`` that
    follows sees activations of the scale it was trained on, and the filter keeps its coarse shape
    (edge/colour-blob detectors stay edge/colour-blob detectors). The 32x32 analogue of resizing a
    patch-embedding kernel for a new patch size (Beyer et al. 2023, FlexiViT).
    ``center``: the central size x size window, as is -- keeps the finest-scale taps, drops the rest.
    """
    k = weight.shape[-1]
    if size > k:
        raise ConfigError(f"cannot shrink a {k}x{k} stem kernel to {size}x{size}")
    if method == "center":
        start = (k - size) // 2
        return weight[..., start : start + size, start : start + size].clone()
    # A[i, j]: the part of source pixel [j, j+1) inside target cell [i*k/size, (i+1)*k/size).
    # Every column sums to 1, so the total weight is conserved.
    edges = torch.arange(size + 1, dtype=torch.float64) * k / size
    pixels = torch.arange(k, dtype=torch.float64)
    low = torch.maximum(edges[:-1, None], pixels[None, :])
    high = torch.minimum(edges[1:, None], pixels[None, :] + 1)
    area = (high - low).clamp(min=0)  # (size, k)
    resized = torch.einsum("ij,oajl,kl->oaik", area, weight.double(), area)  # (O, I, size, size)
    return resized.to(weight.dtype)


def _base(name: str) -> str:
    """resnet18_cifar and resnet18 share weights (same names, only the stem differs)."""
    return name.removesuffix("_cifar")


def _mismatch_message(source, name, missing, mismatched, unexpected, adapt_stem) -> str:
    def few(items):
        return ", ".join(items[:4]) + (f" ... (+{len(items) - 4})" if len(items) > 4 else "")

    held = source.architecture or describe_layout(source.state_dict)
    parts = [f"--from {source.origin} ({held}) does not fit --model {name}:"]
    if missing:
        parts.append(f"{len(missing)} keys missing from the source [{few(missing)}]")
    if mismatched:
        parts.append(f"{len(mismatched)} shapes differ [{few(mismatched)}]")
    if unexpected:
        parts.append(f"{len(unexpected)} source keys the model lacks [{few(unexpected)}]")
    if any(m.startswith(STEM_KEY) for m in mismatched) and not adapt_stem:
        parts.append("(for 32x32 images from ImageNet weights, add --adapt-stem)")
    return " ".join(parts)
