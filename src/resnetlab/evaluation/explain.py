"""What is the model looking at? Class activation maps (CAM) and Grad-CAM heatmaps.

- **CAM** (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization", eq. 2): for a
  network that ends in global average pooling and a linear layer, the logit of class c is
  ``mean_ij(sum_k w_ck A_k(i, j)) + b_c``, so ``CAM_c = sum_k w_ck A_k`` is an exact spatial decomposition
  of the logit. It is computed from ``model.forward_feature_map`` (the model's own split, see
  :class:`~resnetlab.models.base.ClassifierModel`) and the classifier weights: no hooks, no gradients.
- **Grad-CAM** (Selvaraju et al. 2017, eq. 1-2): ``ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial
  mean of ``d y_c / d A_k``; works for any differentiable model. ``A`` is the feature map of the model's
  split where it has one, otherwise the output of a chosen module (``layer``), captured by a forward hook.
  For a GAP + linear model ``alpha_k = w_ck / (h w)``, so Grad-CAM without its ReLU is CAM / (h w).

Heatmaps returned by :func:`explain_batch` are upsampled (bilinear) to the model's input size and scaled
to [0, 1] per image; :func:`overlay` blends one onto its image with a matplotlib colormap.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from resnetlab.errors import ConfigError, DataError
from resnetlab.imaging import normalization, normalize_nchw, resize_float

log = logging.getLogger(__name__)

METHODS = ("cam", "gradcam")
COLORMAP = "jet"  # the colormap of both papers' figures: red = most evidence for the class
ALPHA = 0.5  # heatmap weight in the blend
DISPLAY_SIDE = 224  # overlays are drawn at least this large: a 32x32 CIFAR image is unreadable at 1:1


# ---- the two methods ----------------------------------------------------------------------------


def supports_cam(model: nn.Module) -> bool:
    """True when ``model`` ends in feature map -> global average pool -> linear classifier (CAM is exact)."""
    from resnetlab.models.base import ClassifierModel

    if not isinstance(model, ClassifierModel):
        return False
    cls = type(model)
    if cls.forward_feature_map is ClassifierModel.forward_feature_map or cls.forward_features is not ClassifierModel.forward_features:
        return False  # no spatial map, or features that are not simply its pool
    if cls.forward_head is not ClassifierModel.forward_head or cls.forward is not ClassifierModel.forward:
        return False  # e.g. a scaled head; Grad-CAM still applies
    try:
        pool = model.get_submodule(model.global_pool_name)
        head = model.get_classifier()
    except AttributeError:
        return False
    return (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))
            and type(head) is nn.Linear)


def cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Class activation maps ``(B, h, w)`` of class ``target`` (default: the predicted class) and the logits (B, K).

    ``x``: normalized input (B, 3, H, W). Exact: ``cam.mean((1, 2)) + bias[target]`` is the logit.
    """
    _require_cam(model)
    with torch.no_grad():
        fmap = model.forward_feature_map(x)  # (B, C, h, w)
        logits = model.forward_head(torch.flatten(model.get_submodule(model.global_pool_name)(fmap), 1))  # (B, K)
        target = logits.argmax(1) if target is None else target.to(logits.device)
        weights = model.get_classifier().weight[target]  # (B, C): w_c of each image's class
        maps = torch.einsum("bc,bchw->bhw", weights.to(fmap.dtype), fmap)
    return maps.float(), logits.float()


def _require_cam(model: nn.Module) -> None:
    if not supports_cam(model):
        raise ConfigError(f"--method cam: {_model_name(model)} does not end in global average pooling and a linear "
                          "classifier, so CAM is not defined for it; use --method gradcam")


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None, *, layer: str | None = None,
             relu: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps ``(B, h, w)`` of class ``target`` (default: predicted) and the logits (B, K).

    ``layer``: name of the module whose output is explained (``model.get_submodule`` path). Default: the
    model's feature map when it has the ``forward_feature_map`` split, else the last module that outputs
    a spatial map. ``relu=False`` keeps negative evidence (the identity with CAM holds then).
    """
    x = x.detach().requires_grad_(True)  # so the graph exists even for a frozen model
    with torch.enable_grad():
        if layer is None and _has_feature_map(model):
            fmap = model.forward_feature_map(x)
            logits = model.forward_head(torch.flatten(model.get_submodule(model.global_pool_name)(fmap), 1))
        else:
            module = _module(model, layer) if layer is not None else _last_spatial_module(model, x)
            captured = []

            def keep(_module, _inputs, output):
                captured.append(output)
                # Later in-place ops (ReLU(inplace=True)) must not overwrite the tensor we differentiate by.
                return output.clone() if isinstance(output, torch.Tensor) else None

            handle = module.register_forward_hook(keep)
            try:
                logits = model(x)
            finally:
                handle.remove()
            fmap = captured[-1] if captured else None
            if not isinstance(fmap, torch.Tensor) or fmap.ndim != 4:
                raise ConfigError(f"--layer {layer}: that module's output is not a (B, C, h, w) feature map")
        target = logits.detach().argmax(1) if target is None else target.to(logits.device)
        score = logits.gather(1, target[:, None]).sum()  # images are independent: one backward for the batch
        (grads,) = torch.autograd.grad(score, fmap)
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    maps = (alpha * fmap.detach()).sum(1)  # (B, h, w)
    if relu:
        maps = maps.clamp_min(0)
    return maps.float(), logits.detach().float()


def _has_feature_map(model: nn.Module) -> bool:
    from resnetlab.models.base import ClassifierModel

    return (isinstance(model, ClassifierModel)
            and type(model).forward_feature_map is not ClassifierModel.forward_feature_map
            and type(model).forward_features is ClassifierModel.forward_features
            and type(model).forward is ClassifierModel.forward)


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, m in model.named_children()]
        raise ConfigError(f"--layer {name}: no such module in {_model_name(model)} (top-level modules: {', '.join(names)})") from None


def _last_spatial_module(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The module that ran last among those giving a (B, C, h, w) output with h, w > 1: the last conv block."""
    seen: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(m) if isinstance(o, torch.Tensor) and o.ndim == 4
                                       and min(o.shape[-2:]) > 1 else None)
               for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ConfigError(f"{_model_name(model)} has no spatial feature map to explain")
    return seen[-1]


def _model_name(model) -> str:
    meta = getattr(model, "meta", None)
    return getattr(meta, "name", None) or type(model).__name__


# ---- images in, heatmaps out --------------------------------------------------------------------


@dataclass
class Explanation:
    """Heatmaps of a batch: ``heatmaps`` (B, H, W) in [0, 1] at the input size, with the explained classes."""

    heatmaps: torch.Tensor
    logits: torch.Tensor  # (B, K)
    probs: torch.Tensor  # (B, K) softmax of the raw logits (a calibrated model's Predictor rescales them)
    target: torch.Tensor  # (B,) class each heatmap explains
    method: str


def model_input(model: nn.Module, images: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) -> the normalized (B, 3, h, w) the model takes (its meta's mean/std and input size).

    The same steps as evaluation's ``logits_function``, through the one image module.
    """
    meta = model.meta
    shift, scale = normalization(meta.mean, meta.std, device)
    x = normalize_nchw(images.to(device).permute(0, 3, 1, 2), shift, scale)
    size = tuple(meta.input_size[1:]) if getattr(meta, "input_size", None) else None
    if size is not None and tuple(x.shape[-2:]) != size:
        x = resize_float(x, size)
    return x


def resolve_method(model: nn.Module, method: str | None) -> str:
    """``None`` -> CAM where it is exact, Grad-CAM otherwise; an explicit ``cam`` that cannot be done is an error."""
    if method is None:
        return "cam" if supports_cam(model) else "gradcam"
    if method not in METHODS:
        raise ConfigError(f"--method {method}: choose one of {', '.join(METHODS)}")
    if method == "cam":
        _require_cam(model)
    return method


def explain_batch(model: nn.Module, images: torch.Tensor, *, method: str | None = None, target: torch.Tensor | None = None,
                  layer: str | None = None, device: str | torch.device = "cpu") -> Explanation:
    """Heatmaps for uint8 (B, H, W, 3) ``images`` (default class: the predicted one), scaled to [0, 1] per image."""
    was_training = model.training
    model.eval()
    try:
        method = resolve_method(model, method if layer is None else (method or "gradcam"))
        if method == "cam" and layer is not None:
            raise ConfigError("--layer applies to --method gradcam only (CAM always uses the last feature map)")
        x = model_input(model, images, device)
        if method == "cam":
            maps, logits = cam(model, x, target)
        else:
            maps, logits = grad_cam(model, x, target, layer=layer)
    finally:
        model.train(was_training)
    target = logits.argmax(1) if target is None else target
    up = F.interpolate(maps[:, None], size=tuple(images.shape[1:3]), mode="bilinear", align_corners=False)[:, 0]
    return Explanation(heatmaps=scale_unit(up).cpu(), logits=logits.cpu(), probs=logits.softmax(1).cpu(),
                       target=target.cpu(), method=method)


def gallery_heatmaps(model, images: torch.Tensor, device: str | torch.device = "cpu") -> tuple[np.ndarray | None, str | None]:
    """Heatmaps of the predicted class for the report's "most confidently wrong" gallery: ``(heatmaps, method)``,
    or ``(None, None)`` where there is nothing to explain (no images, an ONNX model, no spatial feature map)."""
    if not isinstance(model, nn.Module) or getattr(model, "meta", None) is None or len(images) == 0:
        return None, None
    try:
        result = explain_batch(model, images, device=device)
    except ConfigError as exc:  # e.g. a model without any spatial map: the gallery stays as it was
        log.info("no heatmaps in the gallery: %s", exc)
        return None, None
    return result.heatmaps.numpy(), result.method


def scale_unit(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each (h, w) map to [0, 1] (Zhou et al. 2016 display CAMs this way); flat maps become 0."""
    flat = maps.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = (high - low).clamp_min(1e-12)
    out = (maps - low[:, None, None]) / span[:, None, None]
    return torch.where((high - low)[:, None, None] > 1e-12, out, torch.zeros_like(out))


def overlay(image: np.ndarray, heatmap: np.ndarray | torch.Tensor, *, alpha: float = ALPHA, min_side: int = 0) -> np.ndarray:
    """Blend ``heatmap`` (h, w) in [0, 1] onto ``image`` uint8 (H, W, 3) with the colormap; uint8 result.

    ``min_side``: enlarge small images first (nearest, so pixels stay visible; the heatmap bilinear).
    """
    from matplotlib import colormaps
    from PIL import Image

    image = np.asarray(image)
    heat = torch.as_tensor(heatmap, dtype=torch.float32)
    height, width = image.shape[:2]
    factor = max(1, int(np.ceil(min_side / max(1, min(height, width))))) if min_side else 1
    if factor > 1:
        height, width = height * factor, width * factor
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.NEAREST))
    if tuple(heat.shape) != (height, width):
        heat = F.interpolate(heat[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    colors = colormaps[COLORMAP](heat.clamp(0, 1).numpy())[..., :3]  # (H, W, 3) floats
    blended = (1 - alpha) * image.astype(np.float32) / 255 + alpha * colors
    return np.clip(blended * 255 + 0.5, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- files in, overlays out (resnetlab explain) -------------------------------------------------


def explain_files(model_path: str | os.PathLike, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                  method: str | None = None, class_name: str | None = None, layer: str | None = None,
                  device: str = "cpu", source_format: str | None = None, batch_size: int = 32, on_error=None) -> dict:
    """Write ``out_dir/<n>-<name>.png`` overlays and ``out_dir/explanations.json``; returns that JSON's dict.

    Images are found, read and preprocessed as ``resnetlab predict`` does (files, folders, globs; bad files
    are reported through ``on_error(entry)`` and listed with an ``error``, not fatal).
    """
    from resnetlab.inference.batch import _read, collect_inputs
    from resnetlab.inference.predictor import Predictor
    from resnetlab.inference.preprocess import image_to_array
    from resnetlab.utils.atomic import atomic_write_bytes, atomic_write_text

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file; give a folder for the overlays")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    predictor = Predictor.load(model_path, device=device, source_format=source_format)
    if predictor.backend != "torch":
        raise ConfigError(f"{model_path}: explanations need the PyTorch model (gradients and feature maps); "
                          "give the run directory or model file instead of the ONNX export")
    model, classes = predictor.model, predictor.classes
    method = resolve_method(model, method if layer is None else (method or "gradcam"))
    target_index = None
    if class_name is not None:
        if class_name not in classes:
            shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
            raise ConfigError(f"--class {class_name}: not a class of {predictor.meta.name} ({shown})")
        target_index = classes.index(class_name)

    entries: list[dict] = []
    items = collect_inputs(inputs)
    used_names: set[str] = set()
    for start in range(0, len(items), batch_size):
        arrays, ok = [], []
        for path, error in items[start:start + batch_size]:
            entry = {"path": path}
            if error is None:
                try:
                    arrays.append(image_to_array(_read(path), predictor.image_size, name=path, max_pixels=predictor.max_pixels,
                                                 crop_pct=predictor.crop_pct))
                    ok.append(entry)
                except DataError as exc:
                    error = str(exc)
            if error is not None:
                entry["error"] = error
                if on_error is not None:
                    on_error(entry)
            entries.append(entry)
        if not arrays:
            continue
        images = torch.from_numpy(np.stack(arrays))  # (B, H, W, 3) uint8, the model's input size
        target = None if target_index is None else torch.full((len(arrays),), target_index, dtype=torch.long)
        result = explain_batch(model, images, method=method, target=target, layer=layer, device=predictor.device)
        probabilities = predictor.probabilities_from_logits(result.logits)  # as predict reports them (temperature)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, entry in enumerate(ok):
            probs = probabilities[i]
            predicted = int(probs.argmax())
            name = _overlay_name(entry["path"], len(used_names), used_names)
            atomic_write_bytes(out_dir / name, png(overlay(arrays[i], result.heatmaps[i], min_side=DISPLAY_SIDE)))
            explained = int(result.target[i])
            entry.update({"predicted": classes[predicted], "probability": round(float(probs[predicted]), 6),
                          "class": classes[explained], "class_probability": round(float(probs[explained]), 6),
                          "method": result.method, "file": name})
    summary = {"model": predictor.meta.name, "source": predictor.source, "method": method, "layer": layer,
               "colormap": COLORMAP, "images": entries}
    if any("file" in e for e in entries):
        atomic_write_text(out_dir / "explanations.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _overlay_name(path: str, index: int, used: set[str]) -> str:
    """``0001-cat.png``: numbered so two ``cat.jpg`` from different folders never overwrite each other."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:80] or "image"
    name = f"{index + 1:04d}-{stem}.png"
    used.add(name)
    return name
