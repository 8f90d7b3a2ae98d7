"""Where pretrained weights come from: ``--from SOURCE`` resolved into a :class:`SourceWeights`.

A SOURCE is one of
- a resnetlab run directory, model file (``.safetensors`` + ``.json``) or training checkpoint (``.pt``);
- a torchvision or timm ResNet ``state_dict`` file (``.pth``/``.pt``/``.bin``, read with
  ``torch.load(weights_only=True)`` so no pickled code can run) or a plain ``.safetensors`` file;
- named weights ``torchvision:resnet50.IMAGENET1K_V2`` or ``timm:resnet50.a1_in1k``, fetched through
  those libraries' own APIs (their caches make a second use offline);
- a checkpoint of akamaster/pytorch_resnet_cifar10 (``.th``) or kuangliu/pytorch-cifar, recognised
  by :mod:`resnetlab.models.importers` (which also refuses what cannot be imported exactly);
  ``FORMAT:PATH`` (e.g. ``akamaster:weights.pth``) names the format where the keys cannot show it.

torchvision and timm ResNets share module names (conv1, bn1, layer1..4, fc), and resnetlab's
ImageNet ResNets use the same names, so their state dicts map key for key.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from resnetlab.errors import CheckpointError, ConfigError, strip_unsafe_advice
from resnetlab.models.importers import (  # noqa: F401 - re-exported: the state-dict rules live there, once
    KEY_PREFIXES,
    RESNET_LAYOUTS,
    WRAPPER_KEYS,
    Imported,
    check_not_variant,
    describe_layout,
    infer_resnet_architecture,
    read_weights_file,
    recognise,
    split_format_prefix,
    stem_kernel as _stem_kernel,
    unwrap_state_dict,
)
from resnetlab.models.importers import TORCH_SUFFIXES as STATE_DICT_SUFFIXES
from resnetlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelMeta

log = logging.getLogger(__name__)


@dataclass
class SourceWeights:
    """Pretrained weights plus what is known about how they were trained."""

    state_dict: dict[str, torch.Tensor]
    origin: str  # what the user passed, for messages and the run's record
    kind: str  # resnetlab | torchvision | timm | state-dict
    architecture: str | None = None  # registered resnetlab name (known or inferred from the keys)
    options: dict = field(default_factory=dict)  # create_model options of a resnetlab source
    classifier: str = "fc"  # attribute path of the source's classifier
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    normalization_note: str = ""  # where mean/std came from
    input_size: tuple[int, int, int] | None = None
    classes: list[str] | None = None

    def describe(self) -> dict:
        """A JSON-able record of the source (no tensors)."""
        return {
            "from": self.origin,
            "kind": self.kind,
            "architecture": self.architecture,
            "options": self.options,
            "mean": list(self.mean),
            "std": list(self.std),
            "normalization": self.normalization_note,
            "input_size": list(self.input_size) if self.input_size else None,
            "num_classes": self.num_classes,
        }

    @property
    def num_classes(self) -> int | None:
        weight = self.state_dict.get(f"{self.classifier}.weight")
        return int(weight.shape[0]) if weight is not None else None


# --------------------------------------------------------------------------- entry point


def load_source(source: str | Path) -> SourceWeights:
    """Resolve ``--from SOURCE`` (see the module docstring) into weights on the CPU."""
    source_format, text = split_format_prefix(source)
    if source_format in ("torchvision", "timm") and not Path(text).expanduser().exists():
        return fetch_named(source_format, text)
    path = Path(text).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"--from {text}: no such file or directory (expected a run directory, a model/state-dict file, "
            "or named weights like torchvision:resnet50.IMAGENET1K_V2 or timm:resnet50.a1_in1k)"
        )
    if path.is_dir() and not (path / "model.safetensors").exists() and (path / "checkpoints" / "best.pt").is_file():
        return _from_torch_file(path / "checkpoints" / "best.pt")  # a run stopped before writing its model file
    if source_format is None and (path.is_dir() or _has_resnetlab_sidecar(path)):
        return _from_resnetlab_model(path)
    if path.suffix == ".safetensors":
        return _from_state(_read_safetensors(path), path, source_format)
    if path.suffix in STATE_DICT_SUFFIXES or source_format:
        return _from_torch_file(path, source_format)
    raise CheckpointError(
        f"--from {text}: unrecognised file type {path.suffix!r} (expected .pth/.pt/.bin/.ckpt/.th, .safetensors, or a run directory)"
    )


# --------------------------------------------------------------------------- named weights


def fetch_named(library: str, name: str) -> SourceWeights:
    """``torchvision:<model>.<WEIGHTS>`` or ``timm:<model>.<tag>``, through the library's own loader."""
    origin = f"{library}:{name}"
    if library == "torchvision":
        return _fetch_torchvision(origin, name)
    return _fetch_timm(origin, name)


def _fetch_torchvision(origin: str, name: str) -> SourceWeights:
    import torchvision.models as tvm

    arch, _, tag = name.partition(".")
    try:
        enum = tvm.get_model_weights(arch)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"--from {origin}: torchvision has no model {arch!r}") from exc
    tag = tag or "DEFAULT"
    if tag not in enum.__members__:
        raise ConfigError(f"--from {origin}: torchvision {arch} has no weights {tag!r}; known: {', '.join(enum.__members__)}")
    weights = enum[tag]
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError offline, HTTPError, hash mismatch: all mean "could not fetch"
        raise CheckpointError(
            f"--from {origin}: could not fetch the weights ({_first_line(exc)}). Without internet, download "
            f"{weights.url} on another machine and pass the file: --from path/to/{Path(weights.url).name}"
        ) from exc
    transform = weights.transforms()
    crop = int(transform.crop_size[0])
    source = _finish(
        dict(state),
        origin=origin,
        kind="torchvision",
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        note=f"{origin} preprocessing (torchvision weights metadata)",
    )
    source.input_size = (3, crop, crop)
    source.classes = list(weights.meta.get("categories") or []) or None
    return source


def _fetch_timm(origin: str, name: str) -> SourceWeights:
    try:
        import timm
    except ImportError as exc:
        raise CheckpointError(
            f"--from {origin}: timm is not installed (pip install timm), or pass a downloaded state-dict file "
            "with --from path/to/model.safetensors"
        ) from exc
    try:
        model = timm.create_model(name, pretrained=True)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"--from {origin}: timm has no model {name!r}") from exc
        raise _timm_fetch_error(origin, name, exc) from exc
    except Exception as exc:  # huggingface_hub errors offline, HTTP errors, missing files
        raise _timm_fetch_error(origin, name, exc) from exc
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    source = _finish(
        model.state_dict(),
        origin=origin,
        kind="timm",
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        note=f"{origin} pretrained_cfg (timm)",
        classifier=cfg.get("classifier", "fc"),
    )
    if cfg.get("input_size"):
        source.input_size = tuple(cfg["input_size"])
    return source


def _timm_fetch_error(origin: str, name: str, exc: Exception) -> CheckpointError:
    hub = f"https://huggingface.co/timm/{name}" if "." in name else "the Hugging Face hub (timm/<model>.<tag>)"
    return CheckpointError(
        f"--from {origin}: could not fetch the weights ({_first_line(exc)}). Without internet, download "
        f"model.safetensors from {hub} on another machine and pass the file: --from path/to/model.safetensors"
    )


# --------------------------------------------------------------------------- files


def _has_resnetlab_sidecar(path: Path) -> bool:
    if path.suffix not in (".safetensors", ".json"):
        return False
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return False
    try:
        return json.loads(sidecar.read_text()).get("format") == "resnetlab-model"
    except (OSError, ValueError, AttributeError):
        return False


def _from_resnetlab_model(path: Path) -> SourceWeights:
    from resnetlab.models.files import read_model_info, resolve_model_path

    from resnetlab.models.metadata import validate_meta

    weights_path = resolve_model_path(path)
    meta = validate_meta(read_model_info(weights_path).get("meta"), weights_path.with_suffix(".json"))
    return _resnetlab_source(_read_safetensors(weights_path), meta, str(path))


def _resnetlab_source(state: dict, meta: ModelMeta, origin: str) -> SourceWeights:
    return SourceWeights(
        state_dict=state,
        origin=origin,
        kind="resnetlab",
        architecture=meta.name,
        options=dict(meta.options),
        classifier=meta.classifier,
        mean=tuple(meta.mean),
        std=tuple(meta.std),
        normalization_note=f"the mean/std {origin} was trained with (model metadata)",
        input_size=tuple(meta.input_size),
        classes=list(meta.classes) if meta.classes else None,
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own types for truncated or corrupt headers
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({_first_line(exc)})") from exc


def _from_torch_file(path: Path, source_format: str | None = None) -> SourceWeights:
    from resnetlab.models.files import CHECKPOINT_KIND

    payload = read_weights_file(path)  # weights_only=True: no pickled code runs
    if isinstance(payload, dict) and payload.get("kind") == CHECKPOINT_KIND:
        if not isinstance(payload.get("model"), dict) or not isinstance(payload.get("meta"), dict):
            raise CheckpointError(f"{path}: resnetlab checkpoint without 'model' and 'meta' entries")
        from resnetlab.models.metadata import validate_meta

        return _resnetlab_source(dict(payload["model"]), validate_meta(payload["meta"], path), str(path))
    return _from_state(payload, path, source_format)


def _from_state(payload, path: Path, source_format: str | None) -> SourceWeights:
    """An outside file: an importer's format when one is recognised or named (or its refusal), else
    a torchvision-style state dict whose architecture is inferred from its keys."""
    imported = recognise(payload, str(path), source_format)
    if imported is not None and (source_format or imported.format not in ("torchvision", "timm")):
        log.info("%s", imported.summary())
        return _imported_source(imported)
    return _finish(unwrap_state_dict(payload, path), origin=str(path), kind="state-dict")


def _imported_source(imported: Imported) -> SourceWeights:
    return SourceWeights(
        state_dict=imported.state_dict,
        origin=imported.origin,
        kind=imported.format,
        architecture=imported.architecture,
        options=dict(imported.options),  # e.g. shortcut_pad="split": part of the architecture, kept by build_model
        classifier="fc",
        mean=tuple(imported.mean),
        std=tuple(imported.std),
        normalization_note=imported.normalization_note,
        input_size=imported.input_size,
        classes=imported.classes,
    )


def _finish(state: dict, *, origin: str, kind: str, mean=IMAGENET_MEAN, std=IMAGENET_STD, note: str = "", classifier: str = "fc") -> SourceWeights:
    """A torchvision/timm-style ResNet state dict: infer the architecture from its keys."""
    check_not_variant(state, origin)  # timm's resnet50d has resnet50's stage layout but computes another function
    if not note:
        # A bare state dict carries no preprocessing record; torchvision and timm ResNets are
        # ImageNet-trained with these statistics, so they are the right default.
        note = "ImageNet mean/std (assumed: a bare state dict records no normalization)"
    return SourceWeights(
        state_dict=state,
        origin=origin,
        kind=kind,
        architecture=infer_resnet_architecture(state),
        options={"cifar_stem": True} if _stem_kernel(state) == 3 else {},
        classifier=classifier,
        mean=tuple(mean),
        std=tuple(std),
        normalization_note=note,
    )


def _first_line(exc: BaseException) -> str:
    text = strip_unsafe_advice(str(exc).strip())  # a fetched file refused by weights_only: no unsafe advice
    return text.splitlines()[0] if text else type(exc).__name__
