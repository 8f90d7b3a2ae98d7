"""Predict on many files: expand paths/folders/globs, decode in batches, keep going past bad files."""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from resnetlab.errors import ConfigError, DataError
from resnetlab.inference.preprocess import IMAGE_EXTENSIONS, image_to_array
from resnetlab.utils.atomic import atomic_write_text
from resnetlab.utils.regular_files import FileRefused, not_regular_reason, read_regular_file

log = logging.getLogger(__name__)
BATCH_BYTES = 256 << 20  # most float32 input bytes predict_files normalizes at once


@dataclass
class FileResult:
    """The outcome for one input: either ``top_k`` [(class, probability)] or an ``error`` message."""

    path: str
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top_k": [{"class": c, "probability": round(p, 6)} for c, p in self.top_k]}


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """Expand files, folders (recursively, image extensions only) and globs into ``(path, error)`` pairs.

    Files named explicitly are kept whatever their extension (so a mistake is reported, not hidden);
    a name that matches nothing yields an error entry. Order: as given, folders/globs sorted.
    Only regular files are read: a FIFO, device or folder named like an image gets an error entry
    saying what it is. Folders are walked as training walks them (``resnetlab.data.folders.walk_folder``:
    symlinks followed, a warning naming those that lead outside the folder).
    """
    from resnetlab.data.folders import walk_folder
    seen: set[str] = set()
    items: list[tuple[str, str | None]] = []

    def add(path: str, error: str | None = None) -> None:
        if path not in seen:
            seen.add(path)
            items.append((path, error))

    for raw in inputs:
        text = str(raw)
        path = Path(text)
        if path.is_dir():
            walked = walk_folder(path)
            entries = [e for e in walked if os.path.splitext(e.parts[-1])[1].lower() in IMAGE_EXTENSIONS]
            if not any(e.kind == "file" for e in entries):
                add(text, f"{text}: folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            outside = [e for e in walked if e.outside is not None and e.kind != "other"]  # "other" ones are not read
            if outside:  # followed (README, Safety), but never silently
                log.warning("%s: following %d symbolic link(s) that point outside the folder: %s", text, len(outside),
                            "; ".join(f"{os.path.join(text, e.source.name)} -> {e.outside}" for e in outside[:5]))
            for e in sorted(entries, key=lambda e: e.parts):
                full = str(path.joinpath(*e.parts))
                if e.kind == "file":
                    add(full)
                elif e.kind == "dir":
                    add(full, f"{full}: is a folder, not an image file")
                else:
                    add(full, f"{full}: {e.reason}")
        elif path.is_file():
            add(text)
        elif path.exists():  # a FIFO, device or socket named on the command line
            add(text, f"{text}: {not_regular_reason(path.stat().st_mode)}")
        elif glob.has_magic(text):
            matches = sorted(m for m in glob.glob(text, recursive=True) if not Path(m).is_dir())
            if not matches:
                add(text, f"{text}: pattern matches no files")
            for m in matches:
                add(m, None if Path(m).is_file() else f"{m}: {_not_a_file(m)}")
        else:
            add(text, f"{text}: no such file or folder")
    return items


def _not_a_file(path: str) -> str:
    try:
        return not_regular_reason(os.stat(path).st_mode)
    except OSError as exc:  # a broken symbolic link
        return f"cannot be read ({exc.strerror or exc})"


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_files(predictor, inputs: Iterable[str | os.PathLike], *, top_k: int = 5, batch_size: int = 64,
                  on_error=None, tta: bool = False) -> list[FileResult]:
    """Top-k predictions for every image found in ``inputs``; unreadable ones get an ``error`` instead.

    ``tta``: average the probabilities over the predictor's test-time augmentation views.

    ``on_error(result)`` is called for each failure as it happens (the CLI prints it to stderr).
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    # Large inputs (input_size may be up to 4096x4096) in smaller batches: the normalized float batch
    # alone would be 64 x 200 MB at that size.
    height, width = predictor.image_size
    batch_size = max(1, min(batch_size, BATCH_BYTES // (height * width * 3 * 4)))
    keep = predictor.tta_input_size if tta else None  # a photo model's TTA crops need the canvas around the crop
    results: list[FileResult] = []
    for chunk in _batches(collect_inputs(inputs), batch_size):
        arrays, ok = [], []
        for path, error in chunk:
            result = FileResult(path=path, error=error)
            if error is None:
                try:
                    data = _read(path)
                    arrays.append(image_to_array(data, predictor.image_size, name=path, max_pixels=predictor.max_pixels,
                                                  crop_pct=predictor.crop_pct, keep=keep))
                    ok.append(result)
                except DataError as exc:
                    result.error = str(exc)
                except MemoryError:
                    result.error = f"{path}: out of memory while decoding"
            if result.error is not None and on_error is not None:
                on_error(result)
            results.append(result)
        if arrays:
            images = torch.from_numpy(np.stack(arrays))
            probs = (predictor.probabilities_tta(images, batch_size=batch_size) if tta
                     else predictor.probabilities_from_logits(predictor.logits(images, batch_size=batch_size)))
            for result, row in zip(ok, predictor.top_k(probs, top_k)):
                result.top_k = row
    return results


def _read(path: str) -> bytes:
    """The file's bytes, read only if it is (still) a regular file, and at most MAX_FILE_BYTES of them."""
    from resnetlab.data.decode import MAX_FILE_BYTES

    try:
        return read_regular_file(path, MAX_FILE_BYTES)
    except FileRefused as exc:
        raise DataError(f"{path}: {exc}") from None


# ---- writing results ------------------------------------------------------------------------------

def results_to_json(results: list[FileResult], predictor, tta: bool = False) -> str:
    payload = {
        "model": predictor.meta.name,
        "source": predictor.source,
        "backend": predictor.backend,
        "classes": predictor.classes,
        "tta_views": predictor.tta_view_names if tta else None,  # the views whose probabilities were averaged
        "predictions": [r.to_dict() for r in results],
    }
    return json.dumps(payload, indent=2) + "\n"


def results_to_csv(results: list[FileResult], top_k: int) -> str:
    """One row per input: path, top1..topK class and probability columns, error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["path"]
    for i in range(1, top_k + 1):
        header += [f"top{i}_class", f"top{i}_probability"]
    writer.writerow(header + ["error"])
    for r in results:
        row = [r.path]
        for i in range(top_k):
            if i < len(r.top_k):
                row += [r.top_k[i][0], f"{r.top_k[i][1]:.6f}"]
            else:
                row += ["", ""]
        writer.writerow(row + [r.error or ""])
    return buffer.getvalue()


def write_results(results: list[FileResult], path: str | os.PathLike, predictor, top_k: int, tta: bool = False) -> Path:
    """Write ``.json`` or ``.csv`` (by extension), atomically. ``tta``: the JSON names the views averaged."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        atomic_write_text(path, results_to_json(results, predictor, tta))
    elif suffix == ".csv":
        atomic_write_text(path, results_to_csv(results, top_k))
    else:
        raise ConfigError(f"--output {path}: use a .json or .csv file name")
    return path
