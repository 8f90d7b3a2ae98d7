"""The image rules, written once: which files are images, how large they may be, how pixels are
oriented, converted to RGB, resized and normalized.

Training (``data.decode``, ``data.loader``), evaluation (``evaluation.predictions``), ``predict``,
``serve`` and the ONNX ``Predictor`` (``inference.preprocess``) all take these functions, so one
file becomes the same tensor whichever path it takes (``tests/test_imaging.py`` checks it).

Rules:
- images are files with one of :data:`IMAGE_EXTENSIONS`;
- at most :data:`MAX_PIXELS` pixels (a decompression bomb is refused before any pixel is decoded);
- the EXIF orientation is applied; a malformed EXIF block is ignored (the pixels are still fine);
- any PIL mode becomes RGB: alpha dropped, 16-bit scaled to 8 bits (never clipped);
- resize: shorter side to target / crop_pct, centre crop, :data:`INTERPOLATION` (bicubic, antialiased);
  crop_pct is recorded in the model's metadata (1.0 for CIFAR-size models, 0.875 for photos);
  test-time augmentation of a photo model crops the size / crop_pct canvas around it (:func:`tta_canvas_size`);
- normalize: uint8 -> float32 ``(x - 255 mean) / (255 std)`` channels-first.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from resnetlab.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
# 50 megapixels: generous for photos (a 48 MP phone picture passes) yet far below what a crafted
# file can claim (a 100 KB PNG can declare 10^10 pixels and exhaust memory when decoded).
MAX_PIXELS = 50_000_000
# The one resampling filter, PIL's and torch's names for it (antialiased in both).
INTERPOLATION = "bicubic"
# Evaluation centre crop for photo models (timm's default crop_pct); CIFAR-size models keep 1.0.
PHOTO_CROP_PCT = 0.875


class ImageError(DataError):
    """A file or buffer that could not be turned into an image; ``str()`` says why."""


class ImageDecodeError(ImageError):
    """The content is not an image PIL can decode (text file, truncated or corrupt image, empty file)."""


class ImageTooLargeError(ImageError):
    """The image declares more pixels than allowed (a decompression bomb or simply too big)."""


def check_size(image: Image.Image, max_pixels: int = MAX_PIXELS, label: str | None = None) -> None:
    """Refuse a header whose size is zero or over ``max_pixels``, before any pixel is decoded.

    One rule and one message for training data and for predict/serve uploads; ``label`` (a file
    name) prefixes the message where the caller does not add it itself.
    """
    prefix = f"{label}: " if label else ""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{prefix}is a decompression bomb: {width}x{height} = {width * height:,} pixels is over the "
            f"limit of {max_pixels:,} (resnetlab.imaging.MAX_PIXELS); shrink it or remove it"
        )
    if width == 0 or height == 0:
        raise ImageDecodeError(f"{prefix}has zero size ({width}x{height})")


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def oriented(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phone photos are stored sideways); ignore an unreadable EXIF block."""
    try:
        # Only when the tag asks for it: exif_transpose copies the picture even when nothing turns.
        if image.getexif().get(0x0112, 1) != 1:
            return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block must not make an otherwise fine picture unusable
        pass
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: grey replicated, alpha dropped (as torchvision's loader), 16-bit scaled to 8."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "F":
        gray = np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")  # L, 1, P, LA, RGBA, CMYK, YCbCr, LAB, HSV


def draft(image: Image.Image, size: tuple[int, int]) -> None:
    """Let a JPEG decode at 1/2..1/8 scale when ``size`` (H, W) needs far fewer pixels (a 4000x3000 photo
    for a 32x32 model decodes ~10x cheaper). Called on an opened, not yet loaded image by every path, so
    training and prediction decode the same pixels. Twice the target is kept so the antialiased
    :func:`fit` still has detail to average."""
    if image.format != "JPEG":
        return
    scale = max(2 * size[1] / image.size[0], 2 * size[0] / image.size[1])
    image.draft("RGB", (max(1, int(image.size[0] * scale)), max(1, int(image.size[1] * scale))))


def check_crop_pct(crop_pct, where: str = "crop_pct") -> float:
    """``crop_pct`` as a float in (0, 1]; a one-line DataError naming ``where`` otherwise."""
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0.0 < float(crop_pct) <= 1.0:
        raise DataError(f"{where} must be a number in (0, 1] (the centre crop's share of the resized image, "
                        f"0.875 for photos as timm), got {crop_pct!r}")
    return float(crop_pct)


def tta_canvas_size(size: tuple[int, int], crop_pct: float) -> tuple[int, int]:
    """(H, W) of the region test-time augmentation crops from: ``size / crop_pct``, i.e. the whole shorter
    side of the resize :func:`fit` makes (256x256 for a 224 model at 0.875). Equal to ``size`` at 1.0."""
    return tuple(max(int(s), round(int(s) / crop_pct)) for s in size)


def _keep_box(new: tuple[int, int], size: tuple[int, int], keep: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the ``keep`` region whose own centre ``size`` crop is the evaluation crop (the
    ``(new - size) // 2`` offset of :func:`fit`), so a canvas's centre view equals the plain input exactly."""
    return tuple((n - s) // 2 - (k - s) // 2 for n, s, k in zip(new, size, keep))


def fit(image: Image.Image, size: tuple[int, int], crop_pct: float = 1.0,
        keep: tuple[int, int] | None = None) -> Image.Image:
    """Resize the shorter side to ``size / crop_pct`` (H, W) and centre-crop ``size``, so aspect ratios are
    never distorted. ``crop_pct`` < 1 is timm's evaluation crop for photos (0.875: a 224 crop of a 256
    resize); 1.0 keeps the whole shorter side (CIFAR-size models, today's behaviour).

    ``keep`` (H, W) >= ``size``: return that larger region of the same resize instead, placed so that its
    centre ``size`` crop is exactly the evaluation crop (:func:`tta_canvas_size`: test-time augmentation
    crops it at its corners, which the evaluation crop cuts away)."""
    height, width = size
    keep_h, keep_w = keep or size
    if image.size == (width, height) and crop_pct == 1.0 and (keep_h, keep_w) == (height, width):
        return image
    scale = max(width / image.size[0], height / image.size[1]) / crop_pct
    new_w = max(keep_w, round(image.size[0] * scale))
    new_h = max(keep_h, round(image.size[1] * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = _keep_box((new_h, new_w), size, (keep_h, keep_w))
    return image.crop((left, top, left + keep_w, top + keep_h))


def cap_shorter(image: Image.Image, side: int) -> Image.Image:
    """The photo cache's bound: shrink so the shorter side is at most ``side`` (aspect kept, never enlarged)."""
    short = min(image.size)
    if short <= side:
        return image
    scale = side / short
    new = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(new, Image.Resampling.BICUBIC)


def fit_batch(images: torch.Tensor, size: tuple[int, int], crop_pct: float = 1.0,
              keep: tuple[int, int] | None = None) -> torch.Tensor:
    """:func:`fit` (``keep`` included) for a uint8 (N, H, W, 3) tensor batch (arrays already in memory), uint8 out."""
    x = images.permute(0, 3, 1, 2).float()
    height, width = x.shape[-2:]
    keep_h, keep_w = keep or size
    scale = max(size[0] / height, size[1] / width) / crop_pct
    new_h, new_w = max(keep_h, round(height * scale)), max(keep_w, round(width * scale))
    x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode=INTERPOLATION, antialias=True, align_corners=False)
    top, left = _keep_box((new_h, new_w), size, (keep_h, keep_w))
    x = x[:, :, top:top + keep_h, left:left + keep_w]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def resize_float(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a normalized float (N, C, H, W) batch on its device (augmentation's progressive sizes,
    ``data.image_size`` for 32x32 CIFAR arrays) with :data:`INTERPOLATION`, antialiased when shrinking:
    the same filter as :func:`fit`, so one recorded interpolation describes every resize."""
    return torch.nn.functional.interpolate(x, size=tuple(size), mode=INTERPOLATION, align_corners=False,
                                           antialias=size[0] < x.shape[-2])


def normalization(mean: Sequence[float], std: Sequence[float], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) with ``normalized = (x_uint8 - shift) * scale``, shaped (1, 3, 1, 1)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (mean_t * 255.0).to(device), (1.0 / (std_t * 255.0)).to(device)


def normalize_nchw(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """uint8 or float (N, 3, H, W) -> float32 normalized; a float input is changed in place."""
    return x.float().sub_(shift).mul_(scale)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) normalized with ``mean``/``std`` (in [0, 1] units)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
    shift, scale = normalization(mean, std, images.device)
    return normalize_nchw(images.permute(0, 3, 1, 2), shift, scale).contiguous()
