"""``resnetlab data info``: what a dataset holds (counts, size, statistics) and a sample grid."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from resnetlab.data.imageset import DataSplits, ImageSet
from resnetlab.utils.atomic import atomic_write_bytes, atomic_write_text


def summarize(splits: DataSplits) -> dict:
    """Counts per class per split, image size and the train mean/std, as plain JSON-able data."""
    parts = {name: part for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if part is not None}
    counts = {name: torch.bincount(part.labels, minlength=part.num_classes).tolist() for name, part in parts.items()}
    height, width = splits.train.image_size
    return {
        "name": splits.name,
        "source": splits.train.source,
        "classes": list(splits.classes),
        "image_size": [height, width],
        "mean": list(splits.train.mean),
        "std": list(splits.train.std),
        "counts": counts,
        "totals": {name: len(part) for name, part in parts.items()},
    }


def sample_grid(imageset: ImageSet, per_class: int = 8, seed: int = 0, max_classes: int = 100) -> np.ndarray:
    """uint8 (rows*H, cols*W, 3) mosaic: one row per class, ``per_class`` seeded random images."""
    h, w = imageset.image_size
    classes = imageset.classes[:max_classes]
    grid = np.full((len(classes) * (h + 2), per_class * (w + 2), 3), 255, dtype=np.uint8)
    generator = torch.Generator().manual_seed(seed)
    for row in range(len(classes)):
        members = (imageset.labels == row).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)[:per_class]]
        for col, index in enumerate(members.tolist()):
            y, x = row * (h + 2) + 1, col * (w + 2) + 1
            grid[y : y + h, x : x + w] = imageset.images[index].numpy()
    return grid


def save_sample_grid(imageset: ImageSet, path: str | os.PathLike, per_class: int = 8, seed: int = 0) -> Path:
    """Write the sample grid as a PNG with class names down the left side."""
    from resnetlab.utils.figures import plt, png_bytes

    grid = sample_grid(imageset, per_class=per_class, seed=seed)
    h = imageset.image_size[0] + 2
    rows = grid.shape[0] // h
    fig, ax = plt.subplots(figsize=(2 + per_class * 0.8, max(2.0, rows * 0.8)), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([r * h + h / 2 for r in range(rows)], imageset.classes[:rows])
    ax.set_xticks([])
    ax.set_title(f"{per_class} random images per class")
    fig.tight_layout()
    path = Path(path)
    atomic_write_bytes(path, png_bytes(fig, dpi=100, tight=False))
    return path


def data_info(splits: DataSplits, out_dir: str | os.PathLike | None = None, per_class: int = 8) -> dict:
    """Summarize ``splits``; with ``out_dir`` also write ``info.json`` and ``samples.png`` there."""
    info = summarize(splits)
    if out_dir is not None:
        out = Path(out_dir)
        info["samples_png"] = str(save_sample_grid(splits.train, out / "samples.png", per_class=per_class))
        atomic_write_text(out / "info.json", json.dumps(info, indent=2) + "\n")
    return info
