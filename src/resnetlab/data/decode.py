"""Decode image files to uint8 RGB arrays of one size, in parallel over all cores.

The rules are ``resnetlab.imaging``'s, shared with predict/serve/evaluate (documented for users in
``data info --help`` and the README):
- any PIL mode becomes RGB; grayscale is replicated to three channels;
- alpha is dropped (colour channels kept as stored), as torchvision's ImageFolder loader does;
- CMYK, palette, YCbCr, LAB... use PIL's ``convert("RGB")``;
- 16-bit images are scaled to 8 bits (value * 255 / 65535), never clipped;
- with ``image_size`` S, the shorter side is resized to S (bicubic, antialiased) and the centre
  S x S is kept, so aspect ratios are never distorted;
- the EXIF orientation is applied (phone photos are stored sideways), as at inference time; a
  malformed EXIF block is ignored, as at inference time;
- animated GIF/WebP/TIFF: the first frame.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnetlab import imaging
from resnetlab.imaging import IMAGE_EXTENSIONS, ImageDecodeError, ImageError, ImageTooLargeError  # noqa: F401
from resnetlab.utils.regular_files import FileRefused, read_regular_file

try:  # libjpeg-turbo through simplejpeg: ~5x faster than PIL on small JPEGs (PIL parses markers in Python)
    import simplejpeg
except ImportError:  # pragma: no cover - optional speed-up; PIL decodes everything on its own
    simplejpeg = None

# Files that operating systems drop into folders; never images, never worth a warning.
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})
# Decompression-bomb limit in pixels (imaging.MAX_PIXELS). Module-level so tests can lower it.
MAX_PIXELS = imaging.MAX_PIXELS
# Largest image file read, in bytes: above any real picture under MAX_PIXELS (50 MP of 16-bit RGBA
# is 400 MB uncompressed), and the bound that keeps a huge "x.jpg" (a disk image) out of memory.
MAX_FILE_BYTES = 1 << 30
# Below this many images the pool's start-up costs more than it saves.
PARALLEL_MIN_IMAGES = 2048


# Any image failure; ``str()`` says why (callers prefix the file name).
BadImage = ImageError


@dataclass(frozen=True)
class Source:
    """Where one image's bytes are: a file path, or a slice of the shared in-memory buffer."""

    name: str
    path: str | None = None
    offset: int = 0
    size: int = 0
    refused: str | None = None  # why it must not be read (a FIFO, a device...): reported like a bad image


def _has_exif(data) -> bool:
    """Whether a JPEG carries an Exif segment (it may rotate the image); scans markers up to the scan."""
    i, n = 2, len(data)
    while i + 10 <= n:
        if data[i] != 0xFF:
            return True  # unusual layout: let PIL look at it
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: no more metadata
            return False
        if marker == 0xE1 and bytes(data[i + 4 : i + 10]) == b"Exif\x00\x00":
            return True
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return True


def _fast_jpeg(data, image_size: int | None) -> np.ndarray | None:
    """Plain RGB/gray JPEGs that need no resizing; None means 'let PIL do it' (and report errors)."""
    if simplejpeg is None or bytes(data[:3]) != b"\xff\xd8\xff" or _has_exif(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray", "RGB") or width * height > MAX_PIXELS:
            return None
        if image_size is not None and (width, height) != (image_size, image_size):
            return None
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except Exception:  # corrupt or truncated: PIL decodes again and explains what is wrong
        return None


def decode_bytes(data: bytes | memoryview, image_size: int | None = None) -> np.ndarray:
    """Decode one encoded image to uint8 (H, W, 3); raise BadImage saying what is wrong."""
    if len(data) == 0:
        raise ImageDecodeError("is empty (0 bytes)")
    fast = _fast_jpeg(data, image_size)
    if fast is not None:
        return fast
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLargeError(f"is a decompression bomb ({exc})") from None
        except UnidentifiedImageError:
            raise ImageDecodeError("is not an image PIL can read (unknown format or corrupt header)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageDecodeError(f"is corrupt or truncated (cannot read its header: {exc})") from None
        imaging.check_size(image, MAX_PIXELS)
        try:
            if image_size is not None:
                imaging.draft(image, (image_size, image_size))
            image.load()
            image = imaging.to_rgb(imaging.oriented(image))
            if image_size is not None:
                image = imaging.fit(image, (image_size, image_size))
            array = np.asarray(image, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise ImageDecodeError(f"is corrupt or truncated ({exc})") from None
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageDecodeError(f"decoded to an unexpected shape {array.shape}")
    return array


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file: a regular file (symlinks followed) of at most MAX_FILE_BYTES.

    A FIFO, device, socket or folder is never opened for reading (a FIFO would block forever, a link
    to /dev/zero would fill the memory); BadImage says what it is instead.
    """
    try:
        return read_regular_file(path, MAX_FILE_BYTES)
    except FileRefused as exc:
        raise BadImage(str(exc)) from None


# --- parallel decoding -------------------------------------------------------------------------
# The buffer and sources are module globals set *before* the pool forks, so workers inherit them
# copy-on-write instead of receiving ~100 MB through pipes; only (start, stop) ranges travel.
_BUFFER: bytes | bytearray | None = None
_SOURCES: list[Source] = []
_SIZE: int | None = None


def _decode_source(source: Source) -> np.ndarray:
    if source.refused is not None:
        raise BadImage(source.refused)
    if source.path is not None:
        data = read_image_file(source.path)
    else:
        data = memoryview(_BUFFER)[source.offset : source.offset + source.size]
    return decode_bytes(data, _SIZE)


def _decode_range(bounds: tuple[int, int]) -> list[np.ndarray | str] | np.ndarray:
    out: list[np.ndarray | str] = []
    for source in _SOURCES[bounds[0] : bounds[1]]:
        try:
            out.append(_decode_source(source))
        except BadImage as exc:
            out.append(str(exc))
    if out and all(isinstance(a, np.ndarray) and a.shape == out[0].shape for a in out):
        return np.stack(out)  # one array pickles much faster than thousands of small ones
    return out


def _worker_init() -> None:
    try:  # workers only run PIL; keep torch (inherited through fork) from spawning threads
        import torch

        torch.set_num_threads(1)
    except Exception:  # pragma: no cover
        pass


def decode_all(
    sources: list[Source],
    buffer: bytes | bytearray | None = None,
    image_size: int | None = None,
    workers: int | None = None,
) -> list[np.ndarray | str]:
    """Decode every source; each result is an array or the reason (str) it failed."""
    global _BUFFER, _SOURCES, _SIZE
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    can_fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    _BUFFER, _SOURCES, _SIZE = buffer, sources, image_size
    try:
        n = len(sources)
        if workers <= 1 or n < PARALLEL_MIN_IMAGES or not can_fork:
            return list(_decode_range((0, n)))
        chunk = max(256, min(2048, n // (workers * 8) or 1))
        ranges = [(start, min(start + chunk, n)) for start in range(0, n, chunk)]
        results: list[np.ndarray | str] = []
        with warnings.catch_warnings():
            # Python >= 3.12 warns that fork in a threaded process *may* deadlock; the children
            # here only run PIL and numpy, never torch kernels or locks held by the parent.
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers, initializer=_worker_init) as pool:
                for part in pool.imap(_decode_range, ranges):
                    results.extend(part)
        return results
    finally:
        _BUFFER, _SOURCES, _SIZE = None, [], None
