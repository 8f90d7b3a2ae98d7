"""Run a model over an ImageSet, optionally with test-time augmentation (TTA), and collect outputs.

Models come in two kinds: an ``nn.Module`` with ``.meta`` (normalized here with the mean/std the
model was trained with, from its meta, not the dataset's), or any object with
``logits(images_uint8_nhwc) -> Tensor`` (e.g. an ONNX ``Predictor``, which normalizes itself).
TTA views are made on the uint8 images so both kinds see the same inputs. A photo model (``crop_pct`` < 1
in its metadata) takes its views from a larger canvas around the evaluation crop (:func:`tta_canvases`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from resnetlab.errors import ConfigError
from resnetlab.imaging import normalization, normalize_nchw, resize_float, tta_canvas_size

log = logging.getLogger(__name__)


@dataclass
class Outputs:
    """Per-image results of one pass over a dataset (all on the CPU)."""

    logits: torch.Tensor  # (N, C) of the plain (un-augmented) images
    probs: torch.Tensor  # (N, C) softmax of ``logits``
    probs_tta: torch.Tensor | None = None  # (N, C) mean softmax over the TTA views
    tta_views: list[str] | None = None


def model_classes(model) -> list[str] | None:
    """The class names a model was trained on, when it records them."""
    meta = getattr(model, "meta", None)
    if meta is not None:  # a Predictor's .classes invents "0", "1"... when the meta has none
        classes = meta.get("classes") if isinstance(meta, dict) else getattr(meta, "classes", None)
    else:
        classes = getattr(model, "classes", None)
    return list(classes) if classes else None


def model_num_classes(model) -> int | None:
    meta = getattr(model, "meta", None)
    if meta is not None and getattr(meta, "num_classes", None):
        return int(meta.num_classes)
    classes = model_classes(model)
    return len(classes) if classes is not None else None


def logits_function(model, device: str | torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function mapping a uint8 (B, H, W, 3) batch to float logits (B, C) on the CPU."""
    if isinstance(model, nn.Module):
        meta = getattr(model, "meta", None)
        if meta is None:
            raise ConfigError("evaluate_model: the nn.Module has no .meta (ModelMeta); build it with resnetlab.models.create_model")
        model.to(device).eval()
        shift, scale = normalization(meta.mean, meta.std, device)
        size = tuple(meta.input_size[1:]) if getattr(meta, "input_size", None) else None

        def forward(batch: torch.Tensor) -> torch.Tensor:
            x = normalize_nchw(batch.to(device, non_blocking=True).permute(0, 3, 1, 2), shift, scale)  # (B, 3, H, W)
            if size is not None and tuple(x.shape[-2:]) != size:
                # The model's input size (e.g. fine-tuned at --resize 128 on 32x32 CIFAR): resized as the
                # training loader's resize_to does, so evaluation sees what training saw.
                x = resize_float(x, size)
            return model(x).float().cpu()

        return forward
    if hasattr(model, "logits") and callable(model.logits):
        return lambda batch: torch.as_tensor(model.logits(batch)).float().cpu()
    raise ConfigError(f"evaluate_model: cannot evaluate a {type(model).__name__}; pass an nn.Module with .meta or an object with .logits(images)")


def _shift(batch: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate a uint8 (B, H, W, 3) batch by (dy, dx) pixels, filling the border by reflection."""
    pad = max(abs(dy), abs(dx))
    h, w = batch.shape[1:3]
    x = batch.permute(0, 3, 1, 2).float()
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = x[:, :, pad - dy: pad - dy + h, pad - dx: pad - dx + w]
    return x.round().to(torch.uint8).permute(0, 2, 3, 1)


def model_crop_pct(model) -> float:
    """The evaluation crop a model records in its metadata (1.0: CIFAR-size models, or none recorded)."""
    meta = getattr(model, "meta", None)
    value = meta.get("crop_pct") if isinstance(meta, dict) else getattr(meta, "crop_pct", None)
    return float(value or 1.0)


def _crop(top: int, left: int, size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda b: b[:, top: top + size[0], left: left + size[1]]


def tta_views(image_size: tuple[int, int], crop_pct: float = 1.0) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """The one list of test-time augmentation views (evaluate, predict, serve): (name, uint8 NHWC -> NHWC).

    crop_pct 1.0 (CIFAR-size models): horizontal flip x {none, shift up-left, shift down-right}, 6 views
    of the (H, W) input. The same flip/translate family as the standard CIFAR training augmentation
    (He et al. 2016, sec. 4.2: pad 4 and crop, flip), so each view is an image the model saw during
    training. The shift is 1/16 of the side (2 px at 32x32).

    crop_pct < 1 (photo models): the views take a canvas of :func:`resnetlab.imaging.tta_canvas_size`
    (the whole size / crop_pct shorter side around the evaluation crop) and return {centre, the four
    corner crops} x {as is, mirrored}: the 10-crop test of Krizhevsky et al. 2012 and He et al. 2016
    (sec. 3.4) on the resize the model is evaluated at. The centre view is the plain evaluation crop.
    """
    if crop_pct < 1.0:
        canvas_h, canvas_w = tta_canvas_size(image_size, crop_pct)
        dy, dx = canvas_h - image_size[0], canvas_w - image_size[1]
        boxes = {"centre": (dy // 2, dx // 2), "top-left": (0, 0), "top-right": (0, dx),
                 "bottom-left": (dy, 0), "bottom-right": (dy, dx)}
        crops = [(name, _crop(top, left, image_size)) for name, (top, left) in boxes.items()]
        return crops + [(f"flip+{name}", lambda b, crop=crop: crop(b).flip(2)) for name, crop in crops]
    t = max(1, min(image_size) // 16)
    views = []
    for flipped in (False, True):
        base = (lambda b: b.flip(2)) if flipped else (lambda b: b)
        prefix = "flip" if flipped else "identity"
        views.append((prefix, base))
        views.append((f"{prefix}+shift(-{t},-{t})", lambda b, base=base: _shift(base(b), -t, -t)))
        views.append((f"{prefix}+shift(+{t},+{t})", lambda b, base=base: _shift(base(b), t, t)))
    return views


def tta_canvases(imageset, model) -> torch.Tensor | None:
    """uint8 (N, H', W', 3) canvases the photo views of ``model`` crop (:func:`tta_views`), decoded again
    from ``imageset``'s files as predict and serve decode them; None for a crop_pct 1.0 model or when the
    files are not on disk (an archive, arrays: the flip x shift views of the images are used then)."""
    crop_pct = model_crop_pct(model)
    if crop_pct >= 1.0 or not getattr(model, "meta", None) or not getattr(imageset, "paths", None):
        return None
    from resnetlab.data.photo import PhotoFiles
    from resnetlab.inference.preprocess import image_to_array

    files = PhotoFiles.from_imageset(imageset)
    if files is None:
        return None
    size = tuple(int(s) for s in model.meta.input_size[1:])
    keep = tta_canvas_size(size, crop_pct)
    return torch.from_numpy(np.stack([image_to_array(p, size, name=p, crop_pct=crop_pct, keep=keep) for p in files.paths]))


@torch.inference_mode()
def collect_outputs(model, images: torch.Tensor, *, device: str | torch.device = "cpu", batch_size: int = 512,
                    tta: bool = False, tta_images: torch.Tensor | None = None) -> Outputs:
    """Logits and probabilities of ``model`` for uint8 (N, H, W, 3) ``images``, in order.

    ``tta_images``: a photo model's canvases (:func:`tta_canvases`), one per image, which its crop views
    take; without them the flip x shift views of ``images`` are used."""
    forward = logits_function(model, device)
    crop_pct = model_crop_pct(model) if tta and tta_images is not None else 1.0
    if tta and tta_images is None and model_crop_pct(model) < 1.0:  # never silently another set of views
        log.warning("TTA: the images' files are not on disk (an archive or arrays), so this photo model's "
                    "crop views cannot be cut; averaging the flip x shift views instead")
    views = tta_views(tuple(images.shape[1:3]), crop_pct) if tta else []
    logits, probs_tta = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start: start + batch_size]
        batch_logits = forward(batch)
        logits.append(batch_logits)
        if tta:
            # Average probabilities, not logits: each view votes with a distribution.
            if crop_pct < 1.0:  # every view is a crop of the canvas (centre included: images may be fitted otherwise)
                canvas = tta_images[start: start + batch_size]
                total = sum(forward(view(canvas)).softmax(dim=1) for _, view in views)
            else:  # views[0] is the identity: reuse its logits.
                total = batch_logits.softmax(dim=1) + sum(forward(view(batch)).softmax(dim=1) for _, view in views[1:])
            mean = total / len(views)
            probs_tta.append(mean)
    if not logits:
        raise ConfigError("evaluate_model: the dataset is empty")
    logits = torch.cat(logits)
    return Outputs(
        logits=logits,
        probs=logits.softmax(dim=1),
        probs_tta=torch.cat(probs_tta) if tta else None,
        tta_views=[name for name, _ in views] if tta else None,
    )
