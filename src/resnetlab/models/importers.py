"""Checkpoints of other projects, mapped onto registry models that give exactly their logits.

A ResNet checkpoint records tensors, not conventions: where option A's zero channels go, whether a
pre-activation net ends in BN-ReLU, how inputs were normalized. A strict ``load_state_dict`` checks
names and shapes only, so a file loaded with the wrong convention predicts at chance without an
error (akamaster's ResNet-20 in resnetlab's ``resnet20``: ~14% instead of ~81%). Each format
below is therefore *recognised* from its wrapper and key names and mapped onto a registry model
built with the options that reproduce its source's forward pass, or *refused* with the reason.

Formats (``--source-format`` names):

``akamaster``    akamaster/pytorch_resnet_cifar10 ``.th``: ``{"state_dict": {"module.<key>": ...},
                 "best_prec1": float}``; classifier ``linear``; option-A shortcuts whose zeros are
                 split on both sides -> ``resnet20/32/44/56/110/1202`` with ``shortcut_pad="split"``.
                 Inputs in [0, 1] normalized with ImageNet's mean/std.
``kuangliu``     kuangliu/pytorch-cifar: ``{"net": state_dict, "acc": ..., "epoch": ...}`` or a bare
                 state dict; classifier ``linear``, projection shortcuts ``shortcut.0``/``shortcut.1``
                 -> ``resnet18_cifar``... (3x3 stem), ``preact_resnet18`` with ``final_norm=False``.
``torchvision``  ResNet state dicts with torchvision's names (``conv1 bn1 layer1..4 fc``) -> ``resnet18``...
``timm``         timm's plain ResNets share those names; variants that compute something else
                 (``resnet50d``'s deep stem and average-pool shortcuts, SE blocks, ResNeXt groups)
                 are refused, never approximated.

Neither CIFAR repository stores class names; both train CIFAR-10 with its 10 classes in the
official order, which is assumed (and said so). The same goes for ImageNet-1k's order for a
1000-way torchvision/timm classifier.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from resnetlab.errors import CheckpointError, ConfigError, load_refusal_reason
from resnetlab.models.registry import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, create_model, list_models

log = logging.getLogger(__name__)

FORMATS = ("akamaster", "kuangliu", "torchvision", "timm", "resnetlab")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
AKAMASTER_MEAN, AKAMASTER_STD = IMAGENET_MEAN, IMAGENET_STD  # their trainer.py's transforms.Normalize
KUANGLIU_MEAN, KUANGLIU_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # their main.py's Normalize

# Wrappers training scripts put around a state dict ({"state_dict": ...} in Lightning, timm's
# train.py and akamaster; {"model": ...} in torchvision's references; {"net": ...} in kuangliu), tried in order.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema", "net", "module")
# Prefixes DDP, torch.compile and Lightning add to every key.
KEY_PREFIXES = ("module.", "_orig_mod.", "model.")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".th")

# (block, blocks per stage) -> registered name; He et al. 2016, Table 1.
RESNET_LAYOUTS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


@dataclass
class Imported:
    """An outside checkpoint, renamed to a registry model's keys, plus what its source implies."""

    state_dict: dict[str, torch.Tensor]  # resnetlab key names
    format: str  # one of FORMATS
    architecture: str  # registered name
    options: dict  # create_model options that reproduce the source's forward pass
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    normalization_note: str
    classes: list[str] | None
    classes_note: str
    origin: str  # the path as the user gave it
    recognised_by: str  # the evidence: a wrapper, key names, or --source-format
    input_size: tuple[int, int, int] | None = None
    extra: dict = field(default_factory=dict)  # e.g. akamaster's best_prec1

    @property
    def num_classes(self) -> int:
        return int(self.state_dict["fc.weight"].shape[0])

    def describe(self) -> dict:
        """A JSON-able record (no tensors), kept in ``model.extra["imported"]`` and reports."""
        return {
            "from": self.origin, "format": self.format, "recognised_by": self.recognised_by,
            "architecture": self.architecture, "options": dict(self.options),
            "mean": list(self.mean), "std": list(self.std), "normalization": self.normalization_note,
            "classes": self.classes_note, **self.extra,
        }

    def summary(self) -> str:
        """One line saying what was recognised and assumed."""
        options = "".join(f", {k}={v}" for k, v in self.options.items())
        return (f"{self.origin}: recognised {FORMAT_TITLES[self.format]} ({self.recognised_by}) -> {self.architecture}"
                f"{options}, {self.num_classes} classes; normalization mean {_fmt(self.mean)} std {_fmt(self.std)} "
                f"({self.normalization_note}); classes: {self.classes_note}")

    def build(self, map_location: str | torch.device = "cpu") -> nn.Module:
        """The registry model holding these weights (strict), with ``.meta`` saying how to feed it."""
        model = create_model(self.architecture, num_classes=self.num_classes, **self.options)
        target = model.state_dict()
        state = dict(self.state_dict)
        for key, value in target.items():  # files saved by torch < 0.4.1 lack BN's step counter (unused in eval)
            if key.endswith("num_batches_tracked") and key not in state:
                state[key] = torch.zeros_like(value)
        problem = _exact_mismatch(target, state)
        if problem:
            raise CheckpointError(f"{self.origin}: {FORMAT_TITLES[self.format]} weights do not fit {self.architecture}: {problem}")
        model.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
        model.meta.mean, model.meta.std = tuple(self.mean), tuple(self.std)
        model.meta.classes = list(self.classes) if self.classes else None
        if self.input_size:
            model.meta.input_size = tuple(self.input_size)
        model.extra = {"imported": self.describe()}
        return model.to(map_location).eval()


FORMAT_TITLES = {
    "akamaster": "akamaster/pytorch_resnet_cifar10 checkpoint",
    "kuangliu": "kuangliu/pytorch-cifar checkpoint",
    "torchvision": "torchvision ResNet state dict",
    "timm": "timm ResNet state dict",
    "resnetlab": "bare resnetlab state dict",
}


# --------------------------------------------------------------------------- entry points


def split_format_prefix(text: str | Path, source_format: str | None = None) -> tuple[str | None, str]:
    """``"akamaster:PATH"`` -> ``("akamaster", "PATH")``; a plain path keeps ``source_format``.

    A prefix and a different ``--source-format`` contradict each other and are refused.
    """
    text = str(text)
    match = re.match(rf"^({'|'.join(FORMATS)}):(.+)$", text)
    prefix, path = (match.group(1), match.group(2)) if match else (None, text)
    if prefix and Path(text).exists():  # a file really named "timm:x.pth" is that file
        prefix, path = None, text
    if source_format is not None and source_format not in FORMATS:
        raise ConfigError(f"--source-format {source_format!r}: expected one of {', '.join(FORMATS)}")
    if prefix and source_format and prefix != source_format:
        raise ConfigError(f"{text}: the prefix says {prefix} but --source-format says {source_format}; give one")
    return prefix or source_format, path


def is_resnetlab_model_path(path: Path) -> bool:
    """A run directory or a model file with its JSON sidecar (loaded by ``models.files``, not imported)."""
    if path.is_dir() or path.suffix == ".json":
        return True
    return path.suffix == ".safetensors" and path.with_suffix(".json").is_file()


def load_any_model(path: str | Path, source_format: str | None = None, map_location: str | torch.device = "cpu") -> nn.Module:
    """A resnetlab model (run directory, model file, ``.pt`` checkpoint) or an outside checkpoint
    recognised (or refused) here; an import is announced on the log with what was assumed."""
    from resnetlab.models.files import CHECKPOINT_KIND, load_trained_model

    source_format, text = split_format_prefix(path, source_format)
    path = Path(text)
    if path.suffix.lower() == ".onnx":
        raise ConfigError(f"{path}: an ONNX export carries its own metadata; --source-format and FORMAT: apply to checkpoints only")
    if source_format is None and is_resnetlab_model_path(path):
        return load_trained_model(path, map_location)
    if not path.is_file():
        raise CheckpointError(f"model not found: {path} (expected a run directory, a model file or a checkpoint file)")
    payload = read_weights_file(path)
    if isinstance(payload, dict) and payload.get("kind") == CHECKPOINT_KIND:
        if source_format not in (None, "resnetlab"):
            raise CheckpointError(f"{path}: a resnetlab training checkpoint, not {source_format}; drop --source-format")
        return load_trained_model(path, map_location)
    imported = recognise(payload, str(path), source_format)
    if imported is None:
        raise CheckpointError(
            f"{path}: not a resnetlab model and not a checkpoint layout resnetlab recognises "
            f"({describe_layout(unwrap_state_dict(payload, path))}); known formats: {', '.join(FORMATS)}"
        )
    log.info("%s", imported.summary())
    return imported.build(map_location)


def read_weights_file(path: Path):
    """The object in a torch file (``weights_only=True``: no pickled code runs) or a safetensors mapping."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own types for truncated or corrupt headers
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({load_refusal_reason(exc)})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-carrying pickles; RuntimeError/EOFError for truncation
        raise CheckpointError(
            f"{path}: refused to load ({load_refusal_reason(exc)}). Only plain tensors and containers are accepted "
            "(torch.load weights_only=True); re-save the file as a state_dict"
        ) from exc


def recognise(payload, origin: str, source_format: str | None = None) -> Imported | None:
    """The format of a loaded file's content, mapped onto a registry model.

    Returns None when no known layout matches (callers decide whether that is an error); raises
    CheckpointError when the layout is known but cannot be imported exactly (an ambiguous
    convention, a timm variant resnetlab does not build, a file that is not the named format).
    """
    wrapper = _wrapper_kind(payload)
    state = unwrap_state_dict(payload, origin)
    layout = _layout(state)
    if source_format is None:
        source_format = _detect(layout, wrapper, state, origin)
        if source_format is None:
            return None
        evidence = _EVIDENCE[wrapper] if wrapper else f"from its key names ({_KEY_EVIDENCE[source_format]})"
    else:
        evidence = f"named with --source-format {source_format}"
    importer = _IMPORTERS[source_format]
    imported = importer(state, layout, origin)
    imported.recognised_by = evidence
    if wrapper == "akamaster" and isinstance(payload.get("best_prec1"), (int, float)):
        imported.extra["best_prec1"] = float(payload["best_prec1"])
    if wrapper == "kuangliu":
        imported.extra.update({k: float(payload[k]) for k in ("acc", "epoch") if isinstance(payload.get(k), (int, float))})
    return imported


# --------------------------------------------------------------------------- state-dict helpers


def unwrap_state_dict(payload, path: Path | str = "<state dict>") -> dict[str, torch.Tensor]:
    """The tensor mapping inside a saved object: unwrap ``{"state_dict": ...}``-style wrappers and
    strip the ``module.``/``_orig_mod.`` prefixes DDP and torch.compile add."""
    for _ in range(3):  # wrappers nest at most a couple of levels in practice
        if isinstance(payload, dict) and not _is_state_dict(payload):
            inner = next((payload[k] for k in WRAPPER_KEYS if isinstance(payload.get(k), dict)), None)
            if inner is None:
                break
            payload = inner
    if not isinstance(payload, dict) or not _is_state_dict(payload):
        shown = sorted(map(str, payload))[:6] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: no state dict of tensors found (top-level entries: {shown})")
    state = {str(k): v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    for prefix in KEY_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _is_state_dict(payload: dict) -> bool:
    tensors = sum(isinstance(v, torch.Tensor) for v in payload.values())
    return tensors > 0 and tensors >= len(payload) // 2


def infer_resnet_architecture(state: dict[str, torch.Tensor]) -> str | None:
    """``resnet18``... from a torchvision-style ResNet state dict, or None when the layout is not one."""
    blocks = _blocks_per_stage(state, stages=4)
    if blocks is None:
        return None
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    width = state.get("layer1.0.conv1.weight")
    if width is None or int(width.shape[0]) != 64:  # wide_resnet50_2 and friends: not registered
        return None
    return RESNET_LAYOUTS.get((block, tuple(blocks)))


def describe_layout(state: dict[str, torch.Tensor]) -> str:
    """A short human description of a ResNet-like state dict, for error messages."""
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in state if (m := re.match(rf"^layer{stage}\.(\d+)\.", k))}
        if indices:
            blocks.append(str(max(indices) + 1))
    block = "bottleneck" if any(".conv3." in k for k in state) else "basic"
    return f"{block} blocks {'-'.join(blocks)}" if blocks else f"{len(state)} tensors, not a ResNet layout"


def stem_kernel(state: dict[str, torch.Tensor]) -> int | None:
    weight = state.get("conv1.weight")
    return int(weight.shape[-1]) if weight is not None and weight.ndim == 4 else None


def _blocks_per_stage(state: dict, stages: int) -> list[int] | None:
    blocks = []
    for stage in range(1, stages + 1):
        indices = {int(m.group(1)) for k in state if (m := re.match(rf"^layer{stage}\.(\d+)\.", k))}
        if not indices:
            return None
        blocks.append(max(indices) + 1)
    return blocks


# --------------------------------------------------------------------------- recognising


@dataclass
class _Layout:
    """What the keys show: the facts every format decision is made from."""

    classifier: str | None  # "linear" or "fc"
    stages: int  # 3 (CIFAR 6n+2) or 4 (ImageNet-style)
    blocks: list[int] | None
    stem_width: int | None
    top_bn: bool  # a BN right after the stem conv (post-activation nets)
    shortcut_keys: bool  # any parameters in shortcuts ("shortcut.*" or "downsample.*")
    variant: list[str]  # features of timm variants resnetlab does not build


def _layout(state: dict) -> _Layout:
    classifier = "linear" if "linear.weight" in state else "fc" if "fc.weight" in state else None
    stages = 4 if any(k.startswith("layer4.") for k in state) else 3
    stem = state.get("conv1.weight")
    return _Layout(
        classifier=classifier,
        stages=stages,
        blocks=_blocks_per_stage(state, stages),
        stem_width=int(stem.shape[0]) if stem is not None and stem.ndim == 4 else None,
        top_bn="bn1.weight" in state,
        shortcut_keys=any(".shortcut." in k or ".downsample." in k for k in state),
        variant=_variant_features(state),
    )


def _variant_features(state: dict) -> list[str]:
    """Features of timm ResNet variants that resnetlab's ResNets do not have."""
    found = []
    if "conv1.0.weight" in state:
        found.append("a deep 3-conv stem (conv1.0, conv1.3, conv1.6: the c/d/s/t variants)")
    if any(re.match(r"^layer\d\.0\.downsample\.2\.", k) for k in state):
        found.append("average-pool shortcuts (downsample.1 is a conv after a pool: the d variants)")
    if any(".se." in k or ".attn." in k for k in state):
        found.append("squeeze-excitation/attention modules (se., attn.)")
    if any(".aa." in k or "drop_block" in k for k in state):
        found.append("anti-aliasing or drop-block layers")
    return found


def _wrapper_kind(payload) -> str | None:
    if not isinstance(payload, dict):
        return None
    if isinstance(payload.get("state_dict"), dict) and "best_prec1" in payload:
        return "akamaster"
    if isinstance(payload.get("net"), dict) and ("acc" in payload or "epoch" in payload):
        return "kuangliu"
    return None


_EVIDENCE = {
    "akamaster": "its wrapper: state_dict + best_prec1",
    "kuangliu": "its wrapper: net + acc/epoch",
}
_KEY_EVIDENCE = {
    "kuangliu": "classifier 'linear', 3x3 stem, shortcut.0/shortcut.1 projections",
    "torchvision": "conv1, bn1, layer1..4, fc",
}


def _detect(layout: _Layout, wrapper: str | None, state: dict, origin: str) -> str | None:
    """The format the wrapper and keys show, None when unknown; ambiguity and variants are refused."""
    if wrapper == "akamaster":
        return "akamaster"
    if wrapper == "kuangliu":
        return "kuangliu"
    if layout.stages == 3 and layout.blocks and layout.stem_width == 16 and not layout.shortcut_keys \
            and layout.classifier is not None:
        # The CIFAR ResNet-(6n+2) with option-A shortcuts: where its zero channels go is not in the keys.
        raise CheckpointError(
            f"{origin}: a CIFAR ResNet-{6 * layout.blocks[0] + 2} state dict with parameter-free (option A) shortcuts, "
            "but the keys cannot show where its zero channels go, and a wrong guess predicts at chance. Name the "
            "format: --source-format akamaster (zeros split on both sides, akamaster/pytorch_resnet_cifar10) or "
            "--source-format resnetlab (zeros appended, a bare state_dict() of a resnetlab model)"
        )
    if layout.classifier == "linear" and layout.stages == 4 and layout.stem_width == 64 and stem_kernel(state) == 3:
        return "kuangliu"
    if layout.classifier == "fc" and layout.stages == 4:
        if layout.variant:
            raise _variant_refusal(origin, layout, state)
        if infer_resnet_architecture(state) is not None:
            return "torchvision"
    return None


def _variant_refusal(origin: str, layout: _Layout, state: dict) -> CheckpointError:
    return CheckpointError(
        f"{origin}: a ResNet variant with {'; '.join(layout.variant)} ({describe_layout(state)}), e.g. timm's resnet50d. "
        "resnetlab has no architecture that computes the same function, so it is refused rather than approximated; "
        "use a plain ResNet (torchvision resnet18..152, timm resnet18..152 .a1_in1k/.tv_in1k)"
    )


# --------------------------------------------------------------------------- the formats


def _import_akamaster(state: dict, layout: _Layout, origin: str) -> Imported:
    blocks = layout.blocks or []
    depth = 6 * blocks[0] + 2 if blocks else None
    if (layout.stages != 3 or len(set(blocks)) != 1 or layout.stem_width != 16 or layout.classifier != "linear"
            or layout.shortcut_keys or f"resnet{depth}" not in list_models("resnet*")):
        raise CheckpointError(
            f"{origin}: not an akamaster/pytorch_resnet_cifar10 ResNet (expected conv1 with 16 filters, layer1..3 of "
            f"equal depth, no shortcut parameters and classifier 'linear'; found {describe_layout(state)}, "
            f"classifier {layout.classifier!r})"
        )
    renamed = {("fc." + k[len("linear."):]) if k.startswith("linear.") else k: v for k, v in state.items()}
    return Imported(
        state_dict=renamed, format="akamaster", architecture=f"resnet{depth}", options={"shortcut_pad": "split"},
        mean=AKAMASTER_MEAN, std=AKAMASTER_STD,
        normalization_note="akamaster's: ImageNet mean/std on inputs scaled to [0, 1]",
        **_cifar10_classes(renamed), origin=origin, recognised_by="", input_size=(3, 32, 32),
    )


def _import_kuangliu(state: dict, layout: _Layout, origin: str) -> Imported:
    blocks = tuple(layout.blocks or ())
    bottleneck = "layer1.0.conv3.weight" in state
    if layout.classifier != "linear" or layout.stages != 4 or layout.stem_width != 64 or stem_kernel(state) != 3:
        raise CheckpointError(
            f"{origin}: not a kuangliu/pytorch-cifar ResNet (expected a 3x3 conv1 with 64 filters, layer1..4 and "
            f"classifier 'linear'; found {describe_layout(state)}, classifier {layout.classifier!r})"
        )
    renamed: dict[str, torch.Tensor] = {}
    if layout.top_bn:  # post-activation ResNet: torchvision's names but for the classifier and shortcuts
        name = RESNET_LAYOUTS.get(("bottleneck" if bottleneck else "basic", blocks))
        if name is None:
            raise CheckpointError(f"{origin}: a kuangliu ResNet with {describe_layout(state)}: resnetlab has no such ResNet")
        architecture, options = (f"{name}_cifar", {}) if f"{name}_cifar" in list_models() else (name, {"cifar_stem": True})
        for key, value in state.items():
            key = re.sub(r"\.shortcut\.(\d)\.", r".downsample.\1.", key)
            renamed[re.sub(r"^linear\.", "fc.", key)] = value
    else:  # PreActResNet: no stem BN, and no BN-ReLU before the pooling either
        if bottleneck or blocks != (2, 2, 2, 2):
            raise CheckpointError(f"{origin}: a kuangliu PreActResNet with {describe_layout(state)}: resnetlab builds "
                                  "only PreActResNet18 (basic blocks 2-2-2-2) exactly")
        architecture, options = "preact_resnet18", {"final_norm": False}
        for key, value in state.items():
            key = re.sub(r"^layer(\d)\.", lambda m: f"layers.{int(m.group(1)) - 1}.", key)
            key = key.replace(".shortcut.0.", ".shortcut.")
            renamed[re.sub(r"^linear\.", "fc.", key)] = value
    return Imported(
        state_dict=renamed, format="kuangliu", architecture=architecture, options=options,
        mean=KUANGLIU_MEAN, std=KUANGLIU_STD,
        normalization_note="kuangliu's main.py: CIFAR-10 mean with std (0.2023, 0.1994, 0.2010) on inputs in [0, 1]",
        **_cifar10_classes(renamed), origin=origin, recognised_by="", input_size=(3, 32, 32),
    )


def _import_torchvision_layout(fmt: str):
    def importer(state: dict, layout: _Layout, origin: str) -> Imported:
        if layout.variant:
            raise _variant_refusal(origin, layout, state)
        architecture = infer_resnet_architecture(state)
        if architecture is None or layout.classifier != "fc":
            raise CheckpointError(
                f"{origin}: not a {fmt} ResNet state dict resnetlab builds (expected conv1, bn1, layer1..4 of a "
                f"ResNet-18/34/50/101/152 and classifier 'fc'; found {describe_layout(state)}, classifier {layout.classifier!r})"
            )
        options = {"cifar_stem": True} if stem_kernel(state) == 3 else {}
        with torch.device("meta"):  # shapes only: a ResNeXt/wide variant has the same names, other shapes
            target = create_model(architecture, num_classes=int(state["fc.weight"].shape[0]), **options).state_dict()
        problem = _exact_mismatch(target, {**{k: v for k, v in target.items() if k.endswith("num_batches_tracked")}, **state})
        if problem:
            raise CheckpointError(f"{origin}: a ResNet-like {fmt} state dict that does not map exactly onto {architecture} "
                                  f"({problem}); resnetlab refuses it rather than approximate it")
        num_classes = int(state["fc.weight"].shape[0])
        classes = _imagenet_classes() if num_classes == 1000 else None
        return Imported(
            state_dict=dict(state), format=fmt, architecture=architecture, options=options,
            mean=IMAGENET_MEAN, std=IMAGENET_STD,
            normalization_note=f"ImageNet mean/std ({fmt}'s ResNet weights; assumed: a state dict records no normalization)",
            classes=classes,
            classes_note=("ImageNet-1k order assumed (1000 outputs; the file stores no names)" if classes
                          else f"unknown (the file stores no names): shown as 0..{num_classes - 1}"),
            origin=origin, recognised_by="",
        )

    return importer


def _import_resnetlab(state: dict, layout: _Layout, origin: str) -> Imported:
    """A bare ``state_dict()`` of a resnetlab CIFAR ResNet (option-A zeros appended), named by the user."""
    blocks = layout.blocks or []
    name = f"resnet{6 * blocks[0] + 2}" if layout.stages == 3 and blocks and len(set(blocks)) == 1 else None
    if name is None or layout.classifier != "fc" or name not in list_models("resnet*"):
        raise CheckpointError(f"{origin}: --source-format resnetlab reads a bare state_dict() of a resnetlab CIFAR ResNet "
                              f"(found {describe_layout(state)}, classifier {layout.classifier!r}); resnetlab model "
                              "files and checkpoints are recognised without it")
    options = {"shortcut": "B"} if layout.shortcut_keys else {}
    num_classes = int(state["fc.weight"].shape[0])
    return Imported(
        state_dict=dict(state), format="resnetlab", architecture=name, options=options,
        mean=CIFAR10_MEAN, std=CIFAR10_STD,
        normalization_note="CIFAR-10 statistics (assumed: a bare state dict records no normalization)",
        classes=CIFAR10_CLASSES if num_classes == 10 else None,
        classes_note="CIFAR-10 order assumed (the file stores no names)" if num_classes == 10 else "unknown",
        origin=origin, recognised_by="", input_size=(3, 32, 32),
    )


_IMPORTERS = {
    "akamaster": _import_akamaster,
    "kuangliu": _import_kuangliu,
    "torchvision": _import_torchvision_layout("torchvision"),
    "timm": _import_torchvision_layout("timm"),
    "resnetlab": _import_resnetlab,
}


def _cifar10_classes(state: dict) -> dict:
    outputs = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 0
    if outputs == 10:
        return {"classes": list(CIFAR10_CLASSES),
                "classes_note": "CIFAR-10 order assumed (" + ", ".join(CIFAR10_CLASSES) + "); the file stores no names"}
    return {"classes": None, "classes_note": f"unknown ({outputs} outputs, not CIFAR-10's 10; the file stores no names)"}


def _imagenet_classes() -> list[str] | None:
    try:  # torchvision ships the names with its weight enums (no download)
        from torchvision.models import ResNet50_Weights

        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:  # noqa: BLE001 - an old torchvision: names unknown, still usable
        return None


def _exact_mismatch(target: dict, state: dict) -> str:
    """'' when ``state`` has exactly ``target``'s keys and shapes, else what differs."""
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in target
              if k in state and tuple(state[k].shape) != tuple(target[k].shape)]

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" ... (+{len(items) - 3})" if len(items) > 3 else "")

    parts = [f"{len(missing)} keys missing [{few(missing)}]" if missing else "",
             f"{len(unexpected)} unexpected keys [{few(unexpected)}]" if unexpected else "",
             f"{len(shapes)} shapes differ, file vs model [{few(shapes)}]" if shapes else ""]
    return "; ".join(p for p in parts if p)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def check_not_variant(state: dict, origin: str) -> None:
    """Refuse a state dict of a ResNet variant resnetlab does not build (resnet50d and friends)."""
    layout = _layout(state)
    if layout.variant:
        raise _variant_refusal(origin, layout, state)
