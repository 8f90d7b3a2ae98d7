"""The resnetlab model file: weights as safetensors plus a JSON sidecar of metadata.

``model.safetensors`` holds only tensors (no pickle, nothing executes on load);
``model.json`` holds the :class:`ModelMeta` (architecture name and options, class names,
normalization, input size) plus free-form ``extra`` (accuracies, provenance).
This is the format ``train`` writes and ``evaluate``/``predict``/``export``/``serve``/``finetune`` read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save as safetensors_save

from resnetlab.errors import CheckpointError, ResnetlabError, load_refusal_reason
from resnetlab.models.registry import ModelMeta, create_model
from resnetlab.utils.atomic import atomic_write_bytes, atomic_write_text

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers (checkpoints are saved from it)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_model_file(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``model`` to ``path`` (a ``.safetensors`` file; the ``.json`` sidecar goes beside it).

    Returns the weights path. Both files are written atomically; the JSON (written last) is the
    completeness marker a loader checks.
    """
    model = unwrap(model)
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / WEIGHTS_NAME
    meta: ModelMeta = model.meta
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"refusing to write {path}: tensor {key!r} has non-finite values")
    # The architecture is recorded beside the tensors too, so a weights file copied next to another
    # model's model.json is reported as what it is (see _mismatch_error).
    header = {"format": "resnetlab", "version": str(FORMAT_VERSION), "architecture": meta.name, "num_classes": str(meta.num_classes)}
    atomic_write_bytes(path, safetensors_save(state, metadata=header))
    sidecar = {"format": "resnetlab-model", "format_version": FORMAT_VERSION, "weights": path.name, "meta": meta.to_dict(), "extra": extra or {}}
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2))
    return path


def update_model_meta(path: str | Path, changes: dict) -> None:
    """Change ``meta`` keys in a model file's JSON sidecar (e.g. a temperature fitted after the save); weights untouched."""
    from resnetlab.models.metadata import validate_meta

    path = resolve_model_path(path)
    info = read_model_info(path)
    meta = {**(info.get("meta") or {}), **changes}
    validate_meta(meta, path.with_suffix(".json"))  # what a reader will check: never write what it refuses
    info["meta"] = meta
    atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=2))


def update_model_extra(path: str | Path, extra: dict) -> None:
    """Merge ``extra`` into a model file's JSON sidecar (e.g. a test accuracy measured after the save)."""
    path = resolve_model_path(path)
    info = read_model_info(path)
    info["extra"] = {**(info.get("extra") if isinstance(info.get("extra"), dict) else {}), **extra}
    atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=2))


def model_source_files(path: str | Path) -> list[Path]:
    """The files a model given as ``path`` is read from: what no output may be written over.

    A run directory: its model file, metadata and config.yaml; a model file: itself and its
    sidecar (and the config.yaml of the run it sits in); a checkpoint or ONNX file: itself
    (and an ONNX file's ``.json`` sidecar).
    """
    path = Path(path)
    if path.is_dir():
        return [path / WEIGHTS_NAME, path / META_NAME, path / "config.yaml"]
    if path.suffix in (".safetensors", ".json"):
        files = [path.with_suffix(".safetensors"), path.with_suffix(".json")]
    elif path.suffix.lower() == ".onnx":
        files = [path, path.with_name(path.name + ".json")]
    else:
        files = [path]
    for run in (path.parent, path.parent.parent):  # RUN/model.safetensors, RUN/checkpoints/best.pt
        if (run / "config.yaml").is_file():
            files.append(run / "config.yaml")
            break
    return files


def resolve_model_path(path: str | Path) -> Path:
    """Accept a run directory, a ``.safetensors`` file or its ``.json`` sidecar."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    elif path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.exists():
        raise CheckpointError(f"model file not found: {path} (expected a run directory or a .safetensors model file)")
    if not path.with_suffix(".json").exists():
        raise CheckpointError(f"{path}: metadata {path.with_suffix('.json').name} is missing, so the model file is incomplete")
    return path


def read_model_info(path: str | Path) -> dict:
    """The parsed JSON sidecar of a model file."""
    path = resolve_model_path(path)
    try:
        info = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or not UTF-8 (found by tests/test_fuzz.py)
        raise CheckpointError(f"{path.with_suffix('.json')}: unreadable model metadata ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != "resnetlab-model":
        raise CheckpointError(f"{path.with_suffix('.json')}: not a resnetlab model metadata file")
    return info


def read_model_meta(path: str | Path) -> ModelMeta:
    """The validated :class:`ModelMeta` of a model file (CheckpointError naming the file when malformed)."""
    path = resolve_model_path(path)
    return _meta_from(read_model_info(path).get("meta"), path.with_suffix(".json"))


def load_model_file(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the architecture from the metadata and load the weights (strict)."""
    path = resolve_model_path(path)
    info = read_model_info(path)
    meta = _meta_from(info.get("meta"), path.with_suffix(".json"))
    try:
        state = load_file(str(path), device=str(map_location))
        with safe_open(str(path), framework="pt") as handle:
            written_for = (handle.metadata() or {}).get("architecture")
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{path}: corrupt or truncated weights file ({exc})") from exc
    model = _build_with(meta, state, path, written_for)
    model.extra = info.get("extra", {}) if isinstance(info.get("extra"), dict) else {}
    return model.to(map_location)


def _meta_from(data, where: Path) -> ModelMeta:
    """``ModelMeta`` from a file's metadata, or a CheckpointError naming the file (one validator for every reader)."""
    from resnetlab.models.metadata import validate_meta

    return validate_meta(data, where)


def _build_with(meta: ModelMeta, state, path: Path, written_for: str | None = None) -> nn.Module:
    """The architecture ``meta`` names, holding ``state`` (strict); errors name the file and both sides."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path}: the model weights are not a mapping of names to tensors")
    head = state.get(f"{meta.classifier}.weight")
    if head is None or head.ndim != 2 or head.shape[0] != meta.num_classes:
        # Checked before building: a metadata file claiming 10**12 classes must not allocate that classifier.
        found = f"has {head.shape[0]} outputs" if head is not None and head.ndim == 2 else "is missing"
        raise CheckpointError(
            f"{path}: weights do not fit {meta.name!r} with {meta.num_classes} classes (what its metadata says): "
            f"their classifier {meta.classifier!r} {found}" + (f"; they were written for {written_for}" if written_for else "")
        )
    try:
        model = create_model(meta.name, num_classes=meta.num_classes, **meta.options)
    except (ResnetlabError, TypeError, ValueError) as exc:  # unknown name, options the builder refuses
        raise CheckpointError(f"{path}: its metadata describes a model resnetlab cannot build ({exc})") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise _mismatch_error(path, meta, model, state, written_for) from None
    model.meta = meta
    model.extra = {}
    return model


def _mismatch_error(path: Path, meta: ModelMeta, model: nn.Module, state: dict, written_for: str | None) -> CheckpointError:
    """Say what the metadata promises and what the weights are (a file copied between runs, a wrong class count)."""
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    held = {k: tuple(v.shape) for k, v in state.items()}
    head = held.get(f"{meta.classifier}.weight")
    classes = head[0] if head else None
    if isinstance(written_for, str) and written_for:
        guess = written_for
    elif len(held.keys() & target.keys()) >= len(target) // 2:  # a sibling (deeper/shallower) of the same family
        guess = _which_architecture(held, meta, classes)
    else:
        guess = None
    what = guess or "another architecture"
    if classes is not None:
        what += f" with {classes} classes"
    missing = [k for k in target if k not in held]
    unexpected = [k for k in held if k not in target]
    shapes = [f"{k} {held[k]} vs {target[k]}" for k in target if k in held and held[k] != target[k]]

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" ... (+{len(items) - 3})" if len(items) > 3 else "")

    details = [f"{len(missing)} keys missing [{few(missing)}]" if missing else "",
               f"{len(unexpected)} unexpected keys [{few(unexpected)}]" if unexpected else "",
               f"{len(shapes)} shapes differ, file vs model [{few(shapes)}]" if shapes else ""]
    return CheckpointError(
        f"{path}: weights do not fit {meta.name!r} with {meta.num_classes} classes (what its metadata says): "
        f"they are {what}; " + "; ".join(d for d in details if d)
    )


def _which_architecture(held: dict[str, tuple], meta: ModelMeta, classes: int | None, budget_s: float = 1.0) -> str | None:
    """The model of ``meta``'s family whose state dict has exactly these keys and shapes, shallowest first
    (built on the meta device: no memory, ~0.05 s each); None when none matches within ``budget_s``."""
    from resnetlab.models.registry import get_model_entry, list_models

    family = get_model_entry(meta.name).family

    def depth(name: str) -> int:
        digits = "".join(c if c.isdigit() else " " for c in name).split()
        return int(digits[0]) if digits else 0

    names = sorted((n for n in list_models() if get_model_entry(n).family == family), key=lambda n: (n != meta.name, depth(n), n))
    deadline = time.monotonic() + budget_s
    for name in names:
        if time.monotonic() > deadline:
            break
        for options in ({**meta.options}, {}) if meta.options else ({},):
            try:
                with torch.device("meta"):
                    candidate = create_model(name, num_classes=classes or meta.num_classes, **options)
            except Exception:  # noqa: BLE001 - options another builder does not take; just not this one
                continue
            if {k: tuple(v.shape) for k, v in candidate.state_dict().items()} == held:
                return name + (f" {options}" if options else "")
    return None


CHECKPOINT_KIND = "resnetlab-checkpoint"


def load_checkpoint_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a training checkpoint (a plain dict) with ``weights_only=True``: no code can run.

    Checkpoints are written by ``resnetlab.engine.checkpoint``; they hold at least
    ``kind``, ``format_version``, ``model`` (state dict of the unwrapped model) and ``meta``
    (``ModelMeta.to_dict()``), plus optimizer/scheduler/RNG state for resuming.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError for unsafe payloads, RuntimeError/EOFError for truncation
        raise CheckpointError(f"{path}: refused to load checkpoint ({load_refusal_reason(exc)})") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path}: not a resnetlab checkpoint")
    return checkpoint


def load_trained_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A model from a run directory, a ``.safetensors`` model file or a ``.pt`` training checkpoint."""
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        checkpoint = load_checkpoint_dict(path, map_location)
        meta = _meta_from(checkpoint.get("meta"), path)
        return _build_with(meta, checkpoint.get("model"), path).to(map_location)
    return load_model_file(path, map_location)
