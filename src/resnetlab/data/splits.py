"""From a DATA spec to train/val/test: seeded stratified validation split, quick-run limits and
the training statistics used for normalization."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from resnetlab.data.archives import is_archive
from resnetlab.data.cifar import CIFAR, detect_cifar, load_cifar, load_cifar_path
from resnetlab.data.folders import load_image_folder
from resnetlab.data.imageset import DataSplits, ImageSet
from resnetlab.errors import ConfigError, DataError
from resnetlab.imaging import ImageError

log = logging.getLogger(__name__)

# He et al. 2016 (Sec. 4.2) hold out 5k of CIFAR-10's 50k training images for validation.
CIFAR_VAL_SIZE = 5000
DEFAULT_VAL_FRACTION = 0.1
# Files-only sets (photo path): mean/std from this many training files (see file_channel_stats),
# decoded with the shorter side near STATS_SIDE when no image size is configured.
STATS_SAMPLE = 500
STATS_SIDE = 64


def load_splits(
    spec: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    val_size: int | None = None,
    seed: int = 0,
    limit_train: int | None = None,
    skip_bad: bool = False,
    decode: bool = True,
) -> DataSplits:
    """Load DATA (``cifar10``, ``cifar100``, a CIFAR archive/folder, an image folder or an archive
    of one) as train/val/test.

    Without a val set in the data, ``val_size`` images (default: 5,000 for CIFAR, else 10%, at
    least one per class) are carved from train, stratified and seeded. ``limit_train`` keeps the
    first N of a stratified shuffle of train. Mean/std come from the carved train split (before
    ``limit_train``, so quick runs normalize like full ones) and are carried by val and test.

    ``decode=False`` loads an image folder on disk *files-only* (``ImageSet.images`` None, for the
    photo path, which reads the files itself): the same classes, files, splits and limits, with
    mean/std from a sample of the training files (:func:`file_channel_stats`). CIFAR and archives
    are decoded whatever ``decode`` says.
    """
    parts, name, is_cifar = _load_parts(spec, data_dir=data_dir, image_size=image_size, skip_bad=skip_bad,
                                        decode=decode)
    for part in parts.values():
        if part is not None:
            part.classes = [printable_name(c) for c in part.classes]
            if part.paths is not None:  # shown in reports beside the class names
                part.paths = [printable_name(p) for p in part.paths]
    if image_size is not None and is_cifar and image_size != 32:
        log.info("image_size=%d ignored for %s (32x32); use the loader's resize_to", image_size, name)
    train, val, test = parts["train"], parts.get("val"), parts.get("test")
    if val is None:
        size = val_size if val_size is not None else default_val_size(train, is_cifar)
        if size:
            train_idx, val_idx = stratified_split(train.labels, size, seed)
            train, val = train.subset(train_idx), train.subset(val_idx)
    elif val_size not in (None, 0) and val_size != len(val):
        log.info("%s has its own val/ split (%d images); val_size=%d ignored", name, len(val), val_size)
    if train.files_only:
        mean, std = file_channel_stats([str(Path(train.source) / p) for p in train.paths], image_size, seed)
    else:
        mean, std = channel_stats(train.images)
    if limit_train is not None:
        if limit_train < 1:
            raise ConfigError(f"limit_train (--limit-train) must be a positive integer, got {limit_train}")
        order = stratified_order(train.labels, seed)
        train = train.subset(order[:limit_train])
    for part in (train, val, test):
        if part is not None:
            part.mean, part.std = mean, std
    return DataSplits(train=train, val=val, test=test, name=name)


def load_splits_for(data, *, files_only: bool = False) -> DataSplits:
    """:func:`load_splits` of a resolved config's ``data:`` section (``config.DataConfig``).

    Training, fine-tuning and anything else holding a config load their data through this one call,
    so every field of the section (split seed, ``skip_bad``...) reaches the loader the same way.
    ``files_only``: an image folder is not decoded (``decode=False``; see ``photo.files_only_wanted``).
    """
    return load_splits(data.spec, data_dir=data.data_dir, image_size=data.image_size, val_size=data.val_size,
                       seed=data.split_seed, limit_train=data.limit_train, skip_bad=data.skip_bad,
                       decode=not files_only)


def printable_name(name: str) -> str:
    """A class (folder) or file name every writer accepts: bytes that are not UTF-8 and control
    characters become backslash escapes (folder ``b"caf\\xe9"`` -> class ``caf\\xe9``).

    Python reads such a folder name as a lone surrogate, which no UTF-8 writer (JSON reports,
    HTML, matplotlib's fonts) accepts; a newline would break one-line messages and CSV rows.
    """
    if name.isprintable():  # the usual case; a lone surrogate or a control character is not
        return name
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _load_parts(spec, *, data_dir, image_size, skip_bad, decode) -> tuple[dict[str, ImageSet], str, bool]:
    text = str(spec)
    key = text.lower().replace("-", "")
    if key in CIFAR and not Path(text).exists():
        return load_cifar(key, data_dir), key, True
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(
            f"DATA {text!r}: no such file or folder (expected cifar10, cifar100, an image folder, "
            "or a .tar/.tar.gz/.tgz/.zip archive of one)"
        )
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: not readable (permission denied)")
    record = detect_cifar(path)
    if record is not None:
        return load_cifar_path(path, data_dir), record.name, True
    if path.is_file() and not is_archive(path):
        raise DataError(f"{path}: not a folder or a .tar/.tar.gz/.tgz/.zip archive of image folders")
    name = path.name.split(".")[0] or str(path)
    decode = decode or not path.is_dir()  # an archive's members are no files the photo path could read again
    return (load_image_folder(path, image_size=image_size, skip_bad=skip_bad, data_dir=data_dir, decode=decode),
            name, False)


def default_val_size(train: ImageSet, is_cifar: bool) -> int:
    if is_cifar:
        return CIFAR_VAL_SIZE
    return max(round(DEFAULT_VAL_FRACTION * len(train)), train.num_classes)


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train_idx, val_idx) with val class proportions matching the data's.

    Each class gets ``val_size * share`` rounded by largest remainder, at least 1 when
    ``val_size`` allows it, and always keeps at least one training image.
    """
    labels = torch.as_tensor(labels)
    n = len(labels)
    counts = torch.bincount(labels)
    present = (counts > 0).nonzero().flatten().tolist()
    if not 0 < val_size <= n - len(present):
        raise ConfigError(
            f"val_size (--val-size) must be between 1 and {n - len(present)} for {n} training images "
            f"in {len(present)} classes, got {val_size}"
        )
    exact = {c: val_size * counts[c].item() / n for c in present}
    quota = {c: int(exact[c]) for c in present}
    if val_size >= len(present):  # at least one of every class, when there is room
        quota = {c: max(1, q) for c, q in quota.items()}
    for c in sorted(present, key=lambda c: exact[c] - int(exact[c]), reverse=True):
        if sum(quota.values()) >= val_size:
            break
        quota[c] += 1
    while sum(quota.values()) > val_size:  # the max(1, .) bump may overshoot: take from the largest
        c = max(quota, key=lambda c: (quota[c], -c))
        quota[c] -= 1
    for c in present:  # never empty a class in train...
        quota[c] = min(quota[c], counts[c].item() - 1)
    for c in sorted(present, key=lambda c: counts[c].item() - 1 - quota[c], reverse=True):
        if sum(quota.values()) >= val_size:  # ...and give what that freed to classes with room
            break
        quota[c] += min(counts[c].item() - 1 - quota[c], val_size - sum(quota.values()))
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in present:
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        val_idx.append(members[: quota[c]])
        train_idx.append(members[quota[c] :])
    return torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values


def stratified_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded ordering of all indices whose every prefix keeps the class proportions.

    Each image gets the key (rank within its shuffled class + jitter) / class size; sorting by it
    interleaves the classes evenly, so ``order[:N]`` is a stratified sample of size N.
    """
    labels = torch.as_tensor(labels)
    generator = torch.Generator().manual_seed(seed + 1)  # differs from the split's stream
    keys = torch.empty(len(labels), dtype=torch.float64)
    jitter = torch.rand(len(labels), generator=generator, dtype=torch.float64)
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        keys[members] = (torch.arange(len(members), dtype=torch.float64) + jitter[members]) / len(members)
    return torch.argsort(keys, stable=True)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 (N, H, W, 3) images.

    Exact and fast: a 256-bin histogram per channel (no float copy of the whole dataset), then
    mean and variance from the histogram in float64.
    """
    if len(images) == 0:
        raise DataError("cannot compute mean/std of an empty training set")
    return _stats_from_histograms([torch.bincount(images[..., c].reshape(-1), minlength=256) for c in range(3)])


def file_channel_stats(paths: list[str], image_size: int | None, seed: int,
                       sample: int = STATS_SAMPLE) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a files-only training set, from an evenly spaced, seeded sample of
    at most ``sample`` files decoded as the photo cache holds them (``photo.decode_capped``).

    The statistics only centre and scale the inputs: 500 images (millions of pixels) pin each mean
    and std within about 0.01 of the whole set's, for a ~2 s decode instead of a pass over every file.
    """
    from resnetlab.data.photo import CACHE_SIDE_FACTOR, decode_capped

    if not paths:
        raise DataError("cannot compute mean/std of an empty training set")
    side = round((image_size or STATS_SIDE) * CACHE_SIDE_FACTOR)
    step = len(paths) / min(sample, len(paths))
    offset = torch.rand(1, generator=torch.Generator().manual_seed(seed + 2)).item() * step  # its own stream
    picked = sorted({min(len(paths) - 1, int(offset + k * step)) for k in range(min(sample, len(paths)))})
    hists = [torch.zeros(256, dtype=torch.int64) for _ in range(3)]
    for i in picked:
        try:
            image = decode_capped(paths[i], side)  # (3, h, w) uint8
        except (DataError, ImageError):  # a bad body (headers were checked) fails where it is trained on
            continue
        for c in range(3):
            hists[c] += torch.bincount(image[c].reshape(-1), minlength=256)
    if int(hists[0].sum()) == 0:
        raise DataError(f"{Path(paths[0]).parent.parent}: none of the {len(picked)} sampled training images decodes")
    return _stats_from_histograms(hists)


def _stats_from_histograms(hists: list[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for hist in hists:
        hist = hist.to(torch.float64)
        count = hist.sum()
        mean = (hist * values).sum() / count
        var = (hist * (values - mean) ** 2).sum() / count
        means.append(round(float(mean) / 255.0, 6))
        stds.append(round(max(float(var.sqrt()) / 255.0, 1e-6), 6))
    return tuple(means), tuple(stds)
