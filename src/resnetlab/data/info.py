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


def data_info(splits: DataSplits, out_dir: str | os.PathLike | None = None, per_class: int = 8, sizes: dict | None = None) -> dict:
    """Summarize ``splits``; with ``out_dir`` also write ``info.json`` and ``samples.png`` there.

    ``sizes``: the files' own size distribution (:func:`size_distribution`), recorded as ``sizes``.
    """
    info = summarize(splits)
    if sizes is not None:
        info["sizes"] = sizes
    if out_dir is not None:
        out = Path(out_dir)
        info["samples_png"] = str(save_sample_grid(splits.train, out / "samples.png", per_class=per_class))
        atomic_write_text(out / "info.json", json.dumps(info, indent=2) + "\n")
    return info


# ---------------------------------------------------------------------- sizes of mixed folders
# Shorter-side buckets (px): where a photo collection sits against the usual training sizes.
SIDE_BUCKETS = (64, 128, 224, 512, 1024)


def _header_size(data) -> tuple[int, int] | None:
    """(width, height) as displayed (EXIF rotation applied) from the header alone; None if unreadable."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(data if isinstance(data, (str, Path)) else io.BytesIO(data)) as image:
            width, height = image.size
            # Orientations 5-8 are rotated by 90 degrees: the displayed picture is height x width.
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
            return width, height
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def _image_files(path: Path):
    """(name, path or bytes) of every image file in a folder or archive, hidden files skipped."""
    from resnetlab.data.archives import is_archive, read_members
    from resnetlab.imaging import IMAGE_EXTENSIONS

    def wanted(parts) -> bool:
        return not any(p.startswith(".") or p == "__MACOSX" for p in parts) and Path(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS

    if path.is_dir():
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                full = Path(folder) / name
                if wanted(full.relative_to(path).parts) and full.is_file():
                    yield str(full.relative_to(path)), full
    elif path.is_file() and is_archive(path):
        buffer, members = read_members(path)
        for member in members:
            if member.kind == "file" and member.parts and wanted(member.parts):
                yield "/".join(member.parts), bytes(memoryview(buffer)[member.offset : member.offset + member.size])


def size_distribution(path: str | os.PathLike) -> dict | None:
    """Width, height and aspect ratio (min/median/max) of the images in a folder or archive, from headers.

    Also counts by orientation and by shorter side (``SIDE_BUCKETS``), and ``suggested_size``: the
    square side ``--image-size`` would sensibly take (the median shorter side, at most 224, a multiple
    of 8). None when ``path`` is not a folder or archive (e.g. ``cifar10``) or holds no readable image.
    """
    path = Path(path)
    if not path.exists():
        return None
    sizes = [size for _, data in _image_files(path) if (size := _header_size(data)) is not None]
    if not sizes:
        return None
    widths = np.array([w for w, _ in sizes])
    heights = np.array([h for _, h in sizes])
    aspect = widths / heights
    shorter = np.minimum(widths, heights)

    def spread(values) -> dict:
        return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}

    edges = (0, *SIDE_BUCKETS, None)
    buckets = {}
    for low, high in zip(edges[:-1], edges[1:]):
        label = f"{low}-{high - 1}" if high is not None else f">={low}"
        buckets[label] = int(((shorter >= low) & (shorter < (high or np.inf))).sum())
    median_side = int(np.median(shorter))
    return {
        "images": len(sizes),
        "distinct_sizes": len(set(sizes)),
        "width": spread(widths),
        "height": spread(heights),
        "aspect_ratio": {k: round(v, 3) for k, v in spread(aspect).items()},
        "orientation": {"landscape": int((aspect > 1.05).sum()), "square": int(((aspect >= 1 / 1.05) & (aspect <= 1.05)).sum()),
                        "portrait": int((aspect < 1 / 1.05).sum())},
        "shorter_side": buckets,
        "suggested_size": max(8, min(224, median_side) // 8 * 8),
    }


def size_lines(sizes: dict) -> list[str]:
    """The distribution as a few printable lines."""
    w, h, a = sizes["width"], sizes["height"], sizes["aspect_ratio"]
    orient = ", ".join(f"{v} {k}" for k, v in sizes["orientation"].items() if v)
    buckets = ", ".join(f"{k}: {v}" for k, v in sizes["shorter_side"].items() if v)
    return [
        f"image sizes: {sizes['distinct_sizes']} different among {sizes['images']} images",
        f"  width  min {w['min']:.0f}  median {w['median']:.0f}  max {w['max']:.0f} px",
        f"  height min {h['min']:.0f}  median {h['median']:.0f}  max {h['max']:.0f} px",
        f"  aspect ratio (w/h) min {a['min']:.2f}  median {a['median']:.2f}  max {a['max']:.2f}; {orient}",
        f"  shorter side (px): {buckets}",
    ]
