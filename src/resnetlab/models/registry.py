"""One registry and one factory for every model (in the manner of timm's ``_registry``).

A model builder is registered with :func:`register_model`; :func:`create_model` builds it and
attaches a :class:`ModelMeta` as ``model.meta`` so every later stage (training, evaluation,
export, serving, fine-tuning) knows the input size, normalization and classifier name.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch.nn as nn

from resnetlab.errors import ConfigError
from resnetlab.imaging import INTERPOLATION

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelMeta:
    """What a model needs around it to be used correctly."""

    name: str
    num_classes: int
    input_size: tuple[int, int, int] = (3, 32, 32)  # (C, H, W) the architecture was designed for
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD
    classifier: str = "fc"  # attribute path of the final nn.Linear (timm's convention)
    options: dict = field(default_factory=dict)  # the **options create_model was called with
    classes: list[str] | None = None  # filled in once the model is trained on named classes
    interpolation: str = INTERPOLATION  # how every path resizes images to input_size (resnetlab.imaging)
    # Evaluation geometry (resnetlab.imaging.fit): shorter side to input_size / crop_pct, centre crop.
    crop_pct: float = 1.0
    # Probabilities are softmax(logits / temperature) (Guo et al. 2017 temperature scaling, fitted on
    # the validation split by resnetlab.evaluation.calibration); 1.0 means uncalibrated.
    temperature: float = 1.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelMeta":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("input_size", "mean", "std"):
            if key in known and known[key] is not None:
                known[key] = tuple(known[key])
        return cls(**known)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classifier: str
    family: str
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str | None = None,
    *,
    input_size: tuple[int, int, int] = (3, 32, 32),
    mean: tuple[float, float, float] = CIFAR10_MEAN,
    std: tuple[float, float, float] = CIFAR10_STD,
    classifier: str = "fc",
    family: str = "",
    description: str = "",
):
    """Decorator registering ``builder(num_classes=..., **options) -> nn.Module`` under ``name``."""

    def decorator(builder: Callable[..., nn.Module]):
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"model name {key!r} is already registered")
        _REGISTRY[key] = ModelEntry(
            name=key,
            builder=builder,
            input_size=tuple(input_size),
            mean=tuple(mean),
            std=tuple(std),
            classifier=classifier,
            family=family,
            description=description or (builder.__doc__ or "").strip().split("\n")[0],
        )
        return builder

    return decorator


def _ensure_builtin_models_registered() -> None:
    # Importing the package registers the built-in architectures (each module decorates its builders).
    import resnetlab.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    _ensure_builtin_models_registered()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_model_entry(name: str) -> ModelEntry:
    _ensure_builtin_models_registered()
    if name not in _REGISTRY:
        close = fnmatch.filter(_REGISTRY, f"*{name}*")[:8]
        hint = f" Similar: {', '.join(sorted(close))}." if close else ""
        raise ConfigError(f"unknown model {name!r} (see 'resnetlab models').{hint}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 10, **options) -> nn.Module:
    """Build a registered model and attach ``model.meta`` (a :class:`ModelMeta`)."""
    entry = get_model_entry(name)
    try:
        model = entry.builder(num_classes=num_classes, **options)
    except TypeError as exc:
        raise ConfigError(f"model {name!r} does not accept these options {sorted(options)}: {exc}") from exc
    model.meta = ModelMeta(
        name=name,
        num_classes=num_classes,
        input_size=entry.input_size,
        mean=entry.mean,
        std=entry.std,
        classifier=entry.classifier,
        options=dict(options),
    )
    # A builder may correct its entry's metadata for the options it was given
    # (e.g. resnet18 with cifar_stem=True takes 32x32 inputs, not 224x224).
    for key, value in getattr(model, "meta_overrides", {}).items():
        setattr(model.meta, key, value)
    return model
