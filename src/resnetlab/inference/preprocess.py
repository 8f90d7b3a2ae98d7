"""The one place that turns an image (file, bytes, PIL image, array or tensor) into model input.

Every consumer (``predict``, ``serve``, the Python API, evaluation of exported models) goes through
:func:`load_image` -> :func:`fit_image` -> :func:`normalize`, so a picture is decoded, oriented,
resized and normalized the same way everywhere.

Pipeline:
1. ``load_image``: open with PIL, refuse decompression bombs before decoding any pixel, apply the
   EXIF orientation (phone photos are stored sideways), convert any mode (L, P, RGBA, CMYK, I;16...)
   to RGB with the training decoder's rules (alpha dropped, 16-bit scaled to 8).
2. ``fit_image``: resize the shorter side to the model's input size and center-crop (the geometry
   of ``resnetlab.data.decode`` and torchvision's ``Resize`` + ``CenterCrop``), giving uint8 (H, W, 3).
3. ``normalize``: uint8 (N, H, W, 3) -> float32 (N, 3, H, W) with the mean/std the model was trained
   with (``model.meta``), the same convention as ``ImageSet`` and ``DeviceLoader``.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from resnetlab.errors import DataError
# The rules themselves live in resnetlab.imaging; re-exported here for existing callers.
from resnetlab.imaging import IMAGE_EXTENSIONS, ImageDecodeError, ImageTooLargeError, normalize  # noqa: F401
from resnetlab.imaging import MAX_PIXELS as MAX_IMAGE_PIXELS
from resnetlab.imaging import check_size, draft, fit, oriented, to_rgb


def _describe(source: Any, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "image"


def load_image(source: str | os.PathLike | bytes | BinaryIO | Image.Image, *, name: str | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``source`` (path, bytes, binary file object or PIL image) into an RGB PIL image.

    ``name`` is used in error messages (defaults to the path). ``draft_size`` (W, H) lets the JPEG
    decoder downscale by 1/2..1/8 while decoding, which makes a 4000x3000 photo ~10x cheaper when
    the model only needs 32x32. Raises :class:`ImageDecodeError` or :class:`ImageTooLargeError`.
    The decode waits for room in :data:`DECODE_BUDGET` (the caller then holds the decoded picture).
    """
    label = _describe(source, name)
    if isinstance(source, Image.Image):
        check_size(source, max_pixels, label)
        return _decoded_rgb(source, label)
    image = open_image(source, name=name, max_pixels=max_pixels, draft_size=draft_size)
    with DECODE_BUDGET.reserved(decode_cost(image)):
        return _decoded_rgb(image, label)


def open_image(source: str | os.PathLike | bytes | BinaryIO, *, name: str | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Read only the header of ``source``: a lazy PIL image whose size is checked, no pixel decoded yet.

    With ``draft_size`` (W, H) a JPEG is set to decode at 1/2..1/8 scale (see :func:`load_image`),
    so ``size`` and :func:`decode_cost` already describe the reduced picture.
    """
    label = _describe(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageDecodeError(f"{label}: empty file (0 bytes), not an image")
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageDecodeError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{label}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit; we raise our own clearer error below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
        check_size(image, max_pixels, label)
        if draft_size is not None:
            draft(image, (draft_size[1], draft_size[0]))
    except ImageTooLargeError:
        raise
    except Exception as exc:
        raise _decode_error(exc, label) from exc
    return image


def _decode_error(exc: Exception, label: str) -> Exception:
    if isinstance(exc, (ImageDecodeError, ImageTooLargeError)):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        return ImageTooLargeError(f"{label}: image is too large to decode safely ({exc})")
    if isinstance(exc, UnidentifiedImageError):
        return ImageDecodeError(f"{label}: not an image file (unknown format or corrupt data)")
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        # Truncated JPEG/PNG data ends up here ("image file is truncated", "broken PNG file").
        return ImageDecodeError(f"{label}: corrupt or truncated image ({exc})")
    return exc


def _decoded_rgb(image: Image.Image, label: str) -> Image.Image:
    """Decode the pixels of an opened image, apply its EXIF orientation and convert it to RGB."""
    try:
        image.load()
    except Exception as exc:
        raise _decode_error(exc, label) from exc
    return to_rgb(oriented(image))


# ---- bounded decoding -----------------------------------------------------------------------------
# Decoded pixels, not upload sizes, are what exhaust memory: a 160 KB single-colour PNG of 7000x7000
# decodes to 196 MB (PIL keeps RGB at 4 bytes a pixel), and 40 of them at once took a server past
# 6 GB (issue 21). So every decode first reserves its size, read from the header, from one budget
# per process; when the budget is spent a decode waits, or (the server) is refused with a 503.
DECODE_BUDGET_MB = 512  # two 49-megapixel RGB decodes at once, or hundreds of photo-sized ones


class DecoderBusyError(Exception):
    """No room in the decode budget within the wait allowed; nothing is wrong with the image: try again later."""


class DecodeBudget:
    """A semaphore counted in bytes of decoded pixels, shared by every thread of the process."""

    def __init__(self, capacity_bytes: int):
        self.capacity = int(capacity_bytes)
        self._used = 0
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._used

    def set_capacity(self, capacity_bytes: int) -> None:
        """Change the budget (``resnetlab serve --decode-budget-mb``); reservations held stay valid."""
        with self._changed:
            self.capacity = int(capacity_bytes)
            self._changed.notify_all()

    def _amount(self, nbytes: int) -> int:
        # A picture larger than the whole budget is decoded alone, once everything else has finished.
        return min(max(int(nbytes), 1), self.capacity)

    def try_reserve(self, nbytes: int) -> int | None:
        """Reserve at once or not at all; the amount to :meth:`release`, or None when there is no room."""
        amount = self._amount(nbytes)
        with self._changed:
            if self._used + amount > self.capacity:
                return None
            self._used += amount
            return amount

    def reserve(self, nbytes: int, timeout: float | None = None) -> int:
        """Wait (at most ``timeout`` seconds; None: as long as it takes) for room; raise DecoderBusyError."""
        amount = self._amount(nbytes)
        with self._changed:
            if not self._changed.wait_for(lambda: self._used + amount <= self.capacity, timeout):
                raise DecoderBusyError(f"the image decoder is busy ({self._used >> 20} MB of {self.capacity >> 20} MB "
                                       f"in use); try again shortly")
            self._used += amount
            return amount

    def release(self, amount: int) -> None:
        with self._changed:
            self._used -= amount
            self._changed.notify_all()

    @contextmanager
    def reserved(self, nbytes: int, timeout: float | None = None):
        amount = self.reserve(nbytes, timeout)
        try:
            yield amount
        finally:
            self.release(amount)


DECODE_BUDGET = DecodeBudget(DECODE_BUDGET_MB << 20)

_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def decode_cost(image: Image.Image) -> int:
    """Bytes that decoding an opened (header-only) image to RGB will hold at its peak, from the header.

    PIL stores 1-byte modes at 1 byte a pixel, 16-bit grey at 2 and every other mode (RGB included) at
    4; converting to RGB adds an RGB copy (and for 16-bit/float grey the float64 array of
    :func:`resnetlab.imaging.to_rgb`); an EXIF rotation adds another copy.
    """
    width, height = image.size
    mode = image.mode
    per_pixel = _STORED_BYTES.get(mode, 4)
    if mode in ("I", "F") or mode.startswith("I;16"):
        per_pixel += 8 + 1 + 1 + 4  # float64 values, 8-bit grey array, L image, RGB image
    elif mode != "RGB":
        per_pixel += 4
    if "exif" in image.info:
        per_pixel += 4
    return width * height * per_pixel


def fit_image(image: Image.Image, size: tuple[int, int], crop_pct: float = 1.0,
              keep: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`resnetlab.imaging.fit` as a uint8 (H, W, 3) array (``keep``: the larger TTA canvas, see there)."""
    return np.asarray(fit(image, size, crop_pct, keep), dtype=np.uint8).copy()


def image_to_array(source: Any, size: tuple[int, int], *, name: str | None = None,
                   max_pixels: int = MAX_IMAGE_PIXELS, crop_pct: float = 1.0,
                   keep: tuple[int, int] | None = None) -> np.ndarray:
    """Any one image (path, bytes, file object, PIL image, array, tensor) -> uint8 (H, W, 3) at ``size``
    (at ``keep`` when given: the test-time augmentation canvas around that crop, :func:`resnetlab.imaging.fit`)."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return fit_image(to_rgb(Image.fromarray(_array_to_uint8_hwc(source, name))), size, crop_pct, keep)
    if isinstance(source, Image.Image):
        return fit_image(load_image(source, name=name, max_pixels=max_pixels), size, crop_pct, keep)
    image = open_image(source, name=name, max_pixels=max_pixels, draft_size=(size[1], size[0]))
    # The reservation covers the decoded picture until it is shrunk to the model's size.
    with DECODE_BUDGET.reserved(decode_cost(image)):
        return decode_to_array(image, size, name=_describe(source, name), crop_pct=crop_pct, keep=keep)


def decode_to_array(image: Image.Image, size: tuple[int, int], *, name: str | None = None,
                    crop_pct: float = 1.0, keep: tuple[int, int] | None = None) -> np.ndarray:
    """An image from :func:`open_image` -> uint8 (H, W, 3) at ``size``; closes ``image``, freeing its pixels.

    The caller holds room in :data:`DECODE_BUDGET` for :func:`decode_cost` of it (``image_to_array``
    does; the server reserves without blocking its event loop).
    """
    try:
        return fit_image(_decoded_rgb(image, name or "image"), size, crop_pct, keep)
    finally:
        image.close()  # frees the decoded pixels now, not whenever the last reference goes


# ---- arrays and tensors ---------------------------------------------------------------------------

_CHANNELS = (1, 3, 4)


def _array_to_uint8_hwc(array: np.ndarray | torch.Tensor, name: str | None = None) -> np.ndarray:
    """One image as an array/tensor -> uint8 (H, W, C) with C in {1, 3, 4}.

    numpy arrays are channels-last: (H, W) or (H, W, C). Tensors are (H, W), (C, H, W) (torch's
    convention) or (H, W, C) when only the last axis looks like channels. Floats are pixel values in [0, 1].
    """
    label = name or "array"
    is_tensor = isinstance(array, torch.Tensor)
    data = array.detach().cpu().numpy() if is_tensor else np.asarray(array)
    if data.ndim == 3 and is_tensor and data.shape[0] in (1, 3) and data.shape[-1] not in _CHANNELS:
        data = np.transpose(data, (1, 2, 0))  # CHW -> HWC
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[-1] in (3, 4))):
        raise DataError(f"{label}: cannot read an image of shape {tuple(array.shape)}; expected (H, W), (H, W, 3) or (3, H, W)")
    if data.dtype == np.uint8:
        return np.ascontiguousarray(data)
    if np.issubdtype(data.dtype, np.floating):
        if data.size and (np.nanmin(data) < -1e-3 or np.nanmax(data) > 1 + 1e-3):
            raise DataError(f"{label}: float images must hold pixel values in [0, 1] (got {np.nanmin(data):.3g}..{np.nanmax(data):.3g}); "
                            "pass uint8 0..255 or unnormalized floats")
        return np.ascontiguousarray((np.nan_to_num(data) * 255.0).round().clip(0, 255).astype(np.uint8))
    if np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_:
        return np.ascontiguousarray(data.clip(0, 255).astype(np.uint8))
    raise DataError(f"{label}: unsupported array dtype {data.dtype}")


def split_batch(images: Any) -> list[Any]:
    """Turn what a user passed to ``predict`` into a list of single images.

    A 4-D array/tensor is a batch: tensors are NCHW (or NHWC when the last axis looks like
    channels), numpy arrays are NHWC.
    A single image (path, PIL image, 2-D/3-D array) becomes a one-element list.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            is_tensor = isinstance(images, torch.Tensor)
            if is_tensor and images.shape[1] not in (1, 3) and images.shape[-1] in _CHANNELS:
                images = images.permute(0, 3, 1, 2)  # NHWC tensor -> NCHW
            return list(images)
        return [images]
    if isinstance(images, (str, os.PathLike, bytes, Image.Image)) or hasattr(images, "read"):
        return [images]
    return list(images)
