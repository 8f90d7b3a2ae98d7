"""Predict on many files: expand paths/folders/globs, decode in batches, keep going past bad files."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from resnetlab.errors import ConfigError, DataError
from resnetlab.inference.preprocess import IMAGE_EXTENSIONS, image_to_array
from resnetlab.utils.atomic import atomic_write_text


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
    """
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
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                add(text, f"{text}: folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            for p in found:
                add(str(p))
        elif path.is_file():
            add(text)
        elif glob.has_magic(text):
            matches = sorted(m for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                add(text, f"{text}: pattern matches no files")
            for m in matches:
                add(m)
        else:
            add(text, f"{text}: no such file or folder")
    return items


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_files(predictor, inputs: Iterable[str | os.PathLike], *, top_k: int = 5, batch_size: int = 64,
                  on_error=None) -> list[FileResult]:
    """Top-k predictions for every image found in ``inputs``; unreadable ones get an ``error`` instead.

    ``on_error(result)`` is called for each failure as it happens (the CLI prints it to stderr).
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    results: list[FileResult] = []
    for chunk in _batches(collect_inputs(inputs), batch_size):
        arrays, ok = [], []
        for path, error in chunk:
            result = FileResult(path=path, error=error)
            if error is None:
                try:
                    arrays.append(image_to_array(path, predictor.image_size, max_pixels=predictor.max_pixels))
                    ok.append(result)
                except DataError as exc:
                    result.error = str(exc)
                except MemoryError:
                    result.error = f"{path}: out of memory while decoding"
            if result.error is not None and on_error is not None:
                on_error(result)
            results.append(result)
        if arrays:
            logits = predictor.logits(torch.from_numpy(np.stack(arrays)), batch_size=batch_size)
            for result, row in zip(ok, predictor.top_k(torch.softmax(logits, dim=1), top_k)):
                result.top_k = row
    return results


# ---- writing results ------------------------------------------------------------------------------

def results_to_json(results: list[FileResult], predictor) -> str:
    payload = {
        "model": predictor.meta.name,
        "source": predictor.source,
        "backend": predictor.backend,
        "classes": predictor.classes,
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


def write_results(results: list[FileResult], path: str | os.PathLike, predictor, top_k: int) -> Path:
    """Write ``.json`` or ``.csv`` (by extension), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        atomic_write_text(path, results_to_json(results, predictor))
    elif suffix == ".csv":
        atomic_write_text(path, results_to_csv(results, top_k))
    else:
        raise ConfigError(f"--output {path}: use a .json or .csv file name")
    return path
