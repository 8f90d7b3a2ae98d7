"""The photo path for image folders: images kept at their own aspect, cropped per sample at train time.

CIFAR and fixed-size arrays keep :class:`~resnetlab.data.loader.DeviceLoader` (device-resident
batches). Photos come in many sizes, so here each training image is

- decoded once (``memory``) or per use (``stream``, files read by DataLoader workers) to a bounded
  native resolution: shorter side capped at :data:`CACHE_SIDE_FACTOR` x the train size, aspect kept
  (:func:`resnetlab.imaging.cap_shorter`); both modes hold the very same uint8 tensor;
- turned into a training sample by torchvision.transforms.v2, per sample: RandomResizedCrop(scale,
  ratio) to the train size with :data:`resnetlab.imaging.INTERPOLATION`, a horizontal flip, then the
  optional TrivialAugment/RandAugment policy, ColorJitter and RandomErasing; MixUp/CutMix act on
  the batch (soft targets).

Every random draw comes from ``torch.manual_seed(mix_seed(seed, epoch, position in the epoch))``
(per sample) or ``mix_seed(seed, epoch, batch index)`` (MixUp/CutMix), never from a worker's own
state, so ``epoch(e, start_batch=k)`` replays exactly what an uninterrupted run sees, whichever mode
and however many workers. Validation images take the evaluation geometry every consumer uses
(:func:`resnetlab.imaging.fit` with the recorded ``crop_pct``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnetlab import imaging
from resnetlab.data.augment import AugmentConfig, make_policy, mix_seed
from resnetlab.data.imageset import ImageSet
from resnetlab.data.loader import DeviceLoader, checked_sample_weights, shuffled_order
from resnetlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MODES = ("auto", "memory", "stream")
# The cache keeps the shorter side at most this many times the train size: RandomResizedCrop's
# largest crops then still resample from (nearly) native detail, while a 12 MP photo for a 160 px
# model is held as ~184 x 245 instead of 3000 x 4000 (~270x less memory).
CACHE_SIDE_FACTOR = 1.15
# ``auto`` streams when the decoded cache would take more than this share of the available memory.
MEMORY_SHARE = 0.5
# With --skip-bad a training sample whose file cannot be decoded is replaced by the next decodable
# file; this many bad files in a row end the run instead.
SUBSTITUTE_TRIES = 100
# Stream ids for mix_seed (the loader's own 0-3 are for DeviceLoader's streams).
_ORDER, _SAMPLE, _BATCH = 10, 11, 12


@dataclass
class PhotoFiles:
    """Files of one split on disk: paths, labels, class names."""

    paths: list[str]
    labels: torch.Tensor
    classes: list[str]

    @classmethod
    def from_imageset(cls, imageset: ImageSet) -> "PhotoFiles | None":
        """The files an image-folder ImageSet was decoded from; None when they are not plain files
        on disk (an archive, CIFAR arrays), where the photo path cannot read them again."""
        if imageset.paths is None or not imageset.source or not Path(imageset.source).is_dir():
            return None
        root = Path(imageset.source)
        paths = [str(root / p) for p in imageset.paths]
        if not all(os.path.isfile(p) for p in paths[:1]):
            return None
        return cls(paths, imageset.labels.clone(), list(imageset.classes))


def decode_capped(path: str, side: int) -> torch.Tensor:
    """One file -> uint8 (3, h, w) with the shorter side at most ``side``: the cache entry of both modes.

    The same rules as every other path (size limit, EXIF orientation, RGB, JPEG draft)."""
    from resnetlab.data.decode import read_image_file

    try:
        data = read_image_file(path)
        import io

        with Image.open(io.BytesIO(data)) as image:
            imaging.check_size(image, label=path)
            imaging.draft(image, (side, side))
            image.load()
            image = imaging.cap_shorter(imaging.to_rgb(imaging.oriented(image)), side)
            array = np.asarray(image, dtype=np.uint8)
    except imaging.ImageError as exc:  # some say what is wrong but leave naming the file to the caller
        raise type(exc)(str(exc) if str(exc).startswith(path) else f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; one line says which file
        raise DataError(f"{path}: cannot be decoded ({exc})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def choose_mode(mode: str, files: PhotoFiles, size: int, budget_bytes: int | None = None) -> tuple[str, str]:
    """(``memory`` or ``stream``, the reason) for ``mode`` (auto|memory|stream).

    auto estimates the decoded cache from the file headers (a sample of up to 200) against
    :data:`MEMORY_SHARE` of the available memory."""
    if mode not in MODES:
        raise ConfigError(f"config data.mode (--data-mode) must be one of {', '.join(MODES)}, got {mode!r}")
    estimate = estimate_cache_bytes(files.paths, round(size * CACHE_SIDE_FACTOR))
    if mode != "auto":
        return mode, f"--data-mode {mode} (decoded cache ~{estimate / 2**20:.0f} MiB)"
    budget = budget_bytes if budget_bytes is not None else int(_available_bytes() * MEMORY_SHARE)
    if estimate <= budget:
        return "memory", f"decoded cache ~{estimate / 2**20:.0f} MiB fits the budget of {budget / 2**20:.0f} MiB"
    return "stream", f"decoded cache ~{estimate / 2**20:.0f} MiB exceeds the budget of {budget / 2**20:.0f} MiB"


def estimate_cache_bytes(paths: list[str], side: int, sample: int = 200) -> int:
    """Bytes the capped cache would take, from the headers of an evenly spaced sample of files."""
    if not paths:
        return 0
    step = max(1, len(paths) // sample)
    total, seen = 0, 0
    for path in paths[::step]:
        try:
            with Image.open(path) as image:
                w, h = image.size
        except Exception:  # noqa: BLE001 - a bad file is reported when it is decoded
            continue
        scale = min(1.0, side / max(1, min(w, h)))
        total += 3 * max(1, round(w * scale)) * max(1, round(h * scale))
        seen += 1
    return int(total / max(1, seen) * len(paths))


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


class _Samples(torch.utils.data.Dataset):
    """Item ``(index, epoch, position)`` -> (normalized float (3, S, S), label, index, problem, usable);
    runs in a worker.

    A file that cannot be decoded (a corrupt body behind a good header shows only now) is reported as
    ``problem`` instead of raised: an exception raised in a worker reaches the user as a folded
    traceback, so the loader decides in its own process. Without ``skip_bad`` the sample is a zero
    image (``usable`` False) the loader refuses; with it, the next decodable file in the folder's
    order takes its place,
    so every batch keeps its size (DDP ranks stay equal, compiled shapes stay fixed) and, the bad
    files being the same each time, a resumed run sees the same samples."""

    def __init__(self, files: PhotoFiles, cache: list[torch.Tensor | str] | None, cap: int, size: int, transform,
                 erase, shift, scale, seed: int, skip_bad: bool = False) -> None:
        self.files, self.cache, self.cap, self.size, self.skip_bad = files, cache, cap, size, skip_bad
        self.transform, self.erase, self.shift, self.scale, self.seed = transform, erase, shift, scale, seed

    def __len__(self) -> int:
        return len(self.files.paths)

    def _image(self, index: int) -> torch.Tensor | str:
        return self.cache[index] if self.cache is not None else _decode_or_problem(self.files.paths[index], self.cap)

    def __getitem__(self, item):
        index, epoch, position = item
        image, problem, used = self._image(index), "", index
        if isinstance(image, str):
            problem = image
            if not self.skip_bad:
                return torch.zeros(3, self.size, self.size), self.files.labels[index], index, problem, False
            for step in range(1, min(len(self), SUBSTITUTE_TRIES + 1)):
                used = (index + step) % len(self)
                image = self._image(used)
                if not isinstance(image, str):
                    break
            else:
                return torch.zeros(3, self.size, self.size), self.files.labels[index], index, \
                    f"{problem}, and the next {SUBSTITUTE_TRIES} files cannot be decoded either", False
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, epoch, position, _SAMPLE))
            x = self.transform(image)
            x = x.float().sub_(self.shift[0]).mul_(self.scale[0])
            if self.erase is not None:  # on normalized values, so the erased box is mean-coloured (0)
                x = self.erase(x)
        return x, self.files.labels[used], index, problem, True


def _decode_or_problem(path: str, cap: int) -> torch.Tensor | str:
    """:func:`decode_capped`, or the one-line reason it failed."""
    try:
        return decode_capped(path, cap)
    except DataError as exc:
        return str(exc)


class _Decode(torch.utils.data.Dataset):
    """File i -> its capped cache tensor, or the one-line reason it cannot be decoded."""

    def __init__(self, paths: list[str], cap: int) -> None:
        self.paths, self.cap = paths, cap

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        return _decode_or_problem(self.paths[i], self.cap)


class _EvalDecode(torch.utils.data.Dataset):
    """File i -> uint8 (size, size, 3) at the evaluation geometry (the predict path's own function), or
    the one-line reason it cannot be decoded."""

    def __init__(self, paths: list[str], size: int, crop_pct: float) -> None:
        from resnetlab.inference.preprocess import image_to_array  # here: inference imports this module

        self.paths, self.size, self.crop_pct, self.image_to_array = paths, size, crop_pct, image_to_array

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            array = self.image_to_array(self.paths[i], (self.size, self.size), name=self.paths[i],
                                        crop_pct=self.crop_pct)
        except DataError as exc:  # a corrupt body behind a good header shows only when decoded
            return str(exc)
        return torch.from_numpy(array)


class _Batches:
    """This rank's batches of (index, epoch, position) for the epoch set before each iteration."""

    def __init__(self, loader: "PhotoLoader") -> None:
        self.loader, self.epoch, self.start = loader, 0, 0

    def __iter__(self):
        lo_rank = self.loader.rank * self.loader.batch_size
        g = self.loader.global_batch
        order = self.loader.order(self.epoch).tolist()
        for k in range(self.start, len(self.loader)):
            chunk = order[k * g: (k + 1) * g]
            lo, hi = lo_rank, min(lo_rank + self.loader.batch_size, len(chunk))
            yield [(order_index, self.epoch, k * g + i) for i, order_index in zip(range(lo, hi), chunk[lo:hi])]

    def __len__(self) -> int:
        return len(self.loader) - self.start


class PhotoLoader:
    """Training batches of photos, the interface of DeviceLoader (``epoch(e, start_batch)``, ``len``).

    ``mode`` memory: the capped cache is decoded once (by ``workers`` processes) and samples are made
    in this process; stream: worker processes decode and transform each sample from its file.
    """

    def __init__(self, files: PhotoFiles, batch_size: int, *, size: int, augment: AugmentConfig | None = None,
                 mode: str = "memory", device: str | torch.device = "cpu", seed: int = 0,
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = True, channels_last: bool = False, workers: int | None = None,
                 sample_weights: torch.Tensor | None = None, skip_bad: bool = False) -> None:
        from torchvision.transforms import v2

        if mode not in ("memory", "stream"):
            raise ConfigError(f"config data.mode (--data-mode) must be one of {', '.join(MODES)}, got {mode!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        augment = augment if augment is not None else AugmentConfig()
        self.files, self.mode, self.size, self.seed = files, mode, int(size), seed
        self.labels, self.classes = files.labels, list(files.classes)
        self.device, self.channels_last = torch.device(device), channels_last
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.global_batch = batch_size * world_size
        self.drop_last = True if drop_last is None else drop_last
        self.train, self.skip_bad, self.skipped = True, skip_bad, set()
        self.sample_weights = None if sample_weights is None else checked_sample_weights(sample_weights, len(files.paths))
        self.cap = round(self.size * CACHE_SIDE_FACTOR)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(self) == 0:
            raise ConfigError(f"{len(files.paths)} images give no batch of {batch_size} x {world_size} ranks; "
                              "lower the batch size")
        steps = [v2.RandomResizedCrop(self.size, scale=tuple(augment.rrc_scale), ratio=tuple(augment.rrc_ratio),
                                      interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
        if augment.flip or augment.alternate_flip:
            steps.append(v2.RandomHorizontalFlip())
        if augment.policy:
            steps.append(make_policy(augment.policy))
        if augment.color_jitter:
            j = augment.color_jitter
            steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        erase = v2.RandomErasing(p=augment.random_erasing, value=0) if augment.random_erasing else None
        self.mix = _batch_mix(augment, len(self.classes))
        shift, scale = imaging.normalization(self.mean, self.std)
        workers = workers if workers is not None else default_workers()
        cache = None
        if mode == "memory":
            cache = decode_cache(files.paths, self.cap, workers)
            bad = {i: entry for i, entry in enumerate(cache) if isinstance(entry, str)}
            if bad:
                self._bad_files(bad)
                if len(bad) == len(cache):
                    raise DataError(f"{files.paths[0]} and the other {len(cache) - 1} training images: none can be decoded")
        self.cache_bytes = sum(t.numel() for t in cache if not isinstance(t, str)) if cache is not None else 0
        self._samples = _Samples(files, cache, self.cap, self.size, v2.Compose(steps), erase,
                                 shift.view(1, 3, 1, 1), scale.view(1, 3, 1, 1), seed, skip_bad)
        self._batches = _Batches(self)
        stream_workers = workers if mode == "stream" else 0
        self._loader = torch.utils.data.DataLoader(
            self._samples, batch_sampler=self._batches, num_workers=stream_workers,
            persistent_workers=stream_workers > 0, prefetch_factor=4 if stream_workers else None,
            worker_init_fn=_worker_init if stream_workers else None,
        )

    def __len__(self) -> int:
        n, g = len(self.files.paths), self.global_batch
        if self.drop_last:
            return n // g
        full, rest = divmod(n, g)
        return full + (1 if rest > self.rank * self.batch_size else 0)

    def order(self, epoch: int) -> torch.Tensor:
        return shuffled_order(len(self.files.paths), self.seed, epoch, self.sample_weights, stream=_ORDER)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._batches.epoch, self._batches.start = epoch, start_batch
        for k, (x, y, indices, problems, usable) in enumerate(self._loader, start=start_batch):
            if any(problems):  # with skip_bad the worker already put a decodable file in its place
                unusable = next((p for p, ok in zip(problems, usable.tolist()) if not ok), None)
                self._bad_files({int(i): p for i, p in zip(indices, problems) if p}, unusable=unusable)
            if self.mix is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(mix_seed(self.seed, epoch, k, _BATCH))
                    x, y = self.mix(x, y)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def __iter__(self):
        return self.epoch(0)

    def _bad_files(self, problems: dict[int, str], unusable: str | None = None) -> None:
        """``problems`` (file index -> one line): fail on the first, or with ``skip_bad`` warn once per
        file and go on (a worker has replaced it); ``unusable``, a sample no file could replace, ends
        the run."""
        first = next(iter(problems.values()))
        if not self.skip_bad:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DataError(f"{first}{more}; fix or remove it, or pass --skip-bad to skip bad files")
        if unusable is not None:
            raise DataError(unusable)
        for index, problem in problems.items():
            if index not in self.skipped:
                self.skipped.add(index)
                log.warning("skipped a training image (the next decodable file takes its place): %s", problem)

    def close(self) -> None:
        """Stop the stream mode's persistent workers now (they would otherwise live until collected)."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader._iterator = None

    def __enter__(self) -> "PhotoLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _batch_mix(augment: AugmentConfig, num_classes: int):
    """v2.MixUp / v2.CutMix (one chosen per batch when both are on) giving soft targets; None when off."""
    from torchvision.transforms import v2

    mixes = []
    if augment.mixup:
        mixes.append(v2.MixUp(alpha=augment.mixup, num_classes=num_classes))
    if augment.cutmix:
        mixes.append(v2.CutMix(alpha=augment.cutmix, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # each worker is one core's worth; torch's own threads would oversubscribe


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores)


def decode_cache(paths: list[str], cap: int, workers: int) -> list[torch.Tensor | str]:
    """The capped uint8 (3, h, w) tensor of every file, decoded by ``workers`` processes; a file that
    cannot be decoded gives its one-line problem instead."""
    return _decode_each(_Decode(paths, cap), workers)


def _decode_each(dataset: torch.utils.data.Dataset, workers: int) -> list:
    """Every item of ``dataset`` in order, by ``workers`` processes when there are enough to pay for
    starting them (a worker starts in ~1 s)."""
    if workers <= 1 or len(dataset) < 64:
        return [dataset[i] for i in range(len(dataset))]
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, worker_init_fn=_worker_init,
                                         prefetch_factor=8)
    # A tensor from a worker lives in shared memory behind an open file descriptor (torch's
    # file_descriptor strategy) until it is freed: kept as they come, 20,000 images would need
    # 20,000 descriptors (a common limit is 1,024). A private copy frees each one at once. The copy is
    # numpy's (one thread): torch's clone wakes its second thread while the workers hold both cores
    # and waited ~3 ms per 77 kB image, which made two workers no faster than one process.
    return [torch.from_numpy(entry.numpy().copy()) if isinstance(entry, torch.Tensor) else entry for entry in loader]


def eval_imageset(imageset: ImageSet, size: int, crop_pct: float, skip_bad: bool = False,
                  workers: int | None = None) -> ImageSet:
    """``imageset`` decoded again from its files with the evaluation geometry every consumer applies
    (``imaging.fit`` with ``crop_pct``, through the very function predict and serve call), by
    ``workers`` processes (default one per core); unchanged when its files are not on disk (an
    archive, arrays)."""
    workers = workers if workers is not None else default_workers()
    files = PhotoFiles.from_imageset(imageset)
    if files is None:
        if imageset.files_only:
            raise DataError(f"{imageset.source}: its image files are no longer there to decode")
        return imageset
    arrays, kept = [], []
    for i, entry in enumerate(_decode_each(_EvalDecode(files.paths, size, crop_pct), workers)):
        if not isinstance(entry, str):
            arrays.append(entry)
            kept.append(i)
        elif not skip_bad:
            raise DataError(f"{entry}; fix or remove it, or pass --skip-bad to skip bad files")
        else:
            log.warning("skipped an evaluation image: %s", entry)
    if not arrays:
        raise DataError(f"{imageset.source}: none of the {len(files.paths)} evaluation images can be decoded")
    return ImageSet(images=torch.stack(arrays), labels=imageset.labels[kept].clone(),
                    classes=list(imageset.classes), mean=imageset.mean, std=imageset.std, source=imageset.source,
                    paths=[imageset.paths[i] for i in kept])


def for_model(imageset: ImageSet, meta, skip_bad: bool = False) -> ImageSet:
    """What evaluate feeds a model: ``imageset`` as is for crop_pct 1.0 (decoded at the model's size), else
    re-fitted from its files with the model's recorded ``crop_pct``."""
    crop_pct = float(getattr(meta, "crop_pct", 1.0) or 1.0)
    if crop_pct == 1.0 and not imageset.files_only:
        return imageset
    return eval_imageset(imageset, int(meta.input_size[-1]), crop_pct, skip_bad=skip_bad)


# Under auto, a folder whose images are all larger than this many times the train size (shorter side)
# takes the photo path even when they share one size (a camera's photos): RandomResizedCrop from the
# full picture is what such images need, while a CIFAR export (32 px images at 32 px) keeps the
# fixed-size path and its device-resident speed.
PHOTO_SIDE_FACTOR = 1.5
_HEADER_SAMPLE = 64


def photo_path_wanted(data_mode: str, augment: AugmentConfig | None, data=None) -> bool:
    """The photo path is on with --data-mode memory|stream, with a RandomResizedCrop recipe, or under
    auto for an image folder on disk that holds photos (:func:`folder_holds_photos`); ``data`` is the
    config's ``data:`` section."""
    if data_mode not in MODES:
        raise ConfigError(f"config data.mode (--data-mode) must be one of {', '.join(MODES)}, got {data_mode!r}")
    if data_mode != "auto" or (augment is not None and augment.rrc_scale is not None):
        return True
    return data is not None and folder_holds_photos(str(data.spec), data.image_size)


def folder_holds_photos(spec: str, image_size: int | None) -> bool:
    """Whether the image folder ``spec`` looks like photos rather than fixed-size arrays: from the headers
    of an evenly spaced sample of its files, images of more than one size, or all with a shorter side
    above :data:`PHOTO_SIDE_FACTOR` x ``image_size``. False for anything that is not a folder on disk."""
    root = Path(spec).expanduser()
    if not root.is_dir():
        return False
    return _sampled_sizes_say_photos(str(root.resolve()), image_size)


@functools.lru_cache(maxsize=16)  # asked before loading and again when the loaders are built
def _sampled_sizes_say_photos(root: str, image_size: int | None) -> bool:
    paths = sorted(os.path.join(folder, name) for folder, _, names in os.walk(root)
                   for name in names if Path(name).suffix.lower() in imaging.IMAGE_EXTENSIONS)
    sizes = set()
    for path in paths[:: max(1, len(paths) // _HEADER_SAMPLE)]:
        if not os.path.isfile(path):  # a FIFO or device would block or never end; the loader reports it
            continue
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
        except Exception:  # noqa: BLE001 - a bad file is reported when the data is loaded
            continue
    if len(sizes) > 1:
        return True
    return bool(sizes) and image_size is not None and min(next(iter(sizes))) > PHOTO_SIDE_FACTOR * image_size


def files_only_wanted(data, augment: AugmentConfig | None) -> bool:
    """Whether the trainer should load ``data`` (a config's ``data:`` section) files-only
    (``load_splits_for(..., files_only=True)``): the photo path applies, the spec is a folder on
    disk and a train size is set. The photo path reads the files itself, so the fixed-size decode
    of the whole folder (and its cache) would only cost a pass and memory (all of it, in stream mode).
    Without ``image_size`` the images' common size comes from decoding them, as before."""
    return (photo_path_wanted(getattr(data, "mode", "auto"), augment, data) and data.image_size is not None
            and Path(str(data.spec)).expanduser().is_dir())


def build_loaders(cfg, splits, raw, image_size, *, device, rank: int, world_size: int, sample_weights=None,
                  announce=print):
    """(train loader, val loader or None) for the trainer: the photo path where it applies, else
    DeviceLoader as before. Records the evaluation ``crop_pct`` in ``raw.meta``; a files-only
    ``splits.val`` is replaced by its decoded evaluation set."""

    mean, std = raw.meta.mean, raw.meta.std
    data_mode = getattr(cfg.data, "mode", "auto")
    wanted = photo_path_wanted(data_mode, cfg.augment, cfg.data)
    files = PhotoFiles.from_imageset(splits.train) if wanted else None
    if wanted and files is None:
        if data_mode != "auto":
            raise ConfigError(f"config data.mode={data_mode} (--data-mode): needs an image folder on disk "
                              f"({splits.train.source or 'this data'} is an archive or arrays); drop --data-mode")
    if files is None and splits.train.files_only:  # only the photo path reads files-only sets
        raise ConfigError(f"{splits.train.source}: loaded without decoding, so it needs the photo path "
                          "(config data.mode memory|stream, an image folder on disk)")
    if files is not None:
        if image_size[0] != image_size[1]:
            raise ConfigError(f"the photo path trains square images; got image size {image_size}")
        crop_pct = imaging.check_crop_pct(cfg.data.crop_pct if getattr(cfg.data, "crop_pct", None) is not None
                                          else imaging.PHOTO_CROP_PCT, "config data.crop_pct (--crop-pct)")
        mode, reason = choose_mode(data_mode, files, image_size[0])
        why = ("" if data_mode != "auto" or cfg.augment.rrc_scale is not None else
               "; chosen for photos: images of several sizes or larger than the train size, --data-mode to choose")
        announce(f"data: photo path, {mode} mode ({reason}{why})")
        if cfg.augment.rrc_scale is None:  # recorded in config.yaml, so a resume takes the same path
            cfg.augment = _photo_defaults(cfg.augment)
        augment = cfg.augment
        train_loader = PhotoLoader(files, cfg.batch_size // world_size, size=image_size[0], augment=augment,
                                   mode=mode, device=device, seed=cfg.seed, mean=mean, std=std, rank=rank,
                                   world_size=world_size, drop_last=cfg.drop_last,
                                   channels_last=cfg.model.channels_last, sample_weights=sample_weights,
                                   skip_bad=cfg.data.skip_bad)
        raw.meta.crop_pct = crop_pct
        val_loader = None
        if splits.val is not None and len(splits.val) > 0:
            val_set = eval_imageset(splits.val, image_size[0], crop_pct, skip_bad=cfg.data.skip_bad)
            if splits.val.files_only:  # decoded once: the final report and its temperature fit reuse it
                splits.val = val_set
            val_loader = DeviceLoader(val_set, cfg.eval_batch_size, train=False, device=device, seed=cfg.seed,
                                      mean=mean, std=std, channels_last=cfg.model.channels_last, resize_to=image_size)
        return train_loader, val_loader
    train_loader = DeviceLoader(
        splits.train, cfg.batch_size // world_size, train=True, augment=cfg.augment, device=device,
        seed=cfg.seed, mean=mean, std=std, rank=rank, world_size=world_size,
        sample_weights=sample_weights, channels_last=cfg.model.channels_last, resize_to=image_size,
        drop_last=cfg.drop_last,
    )
    val_loader = None
    if splits.val is not None and len(splits.val) > 0:
        val_loader = DeviceLoader(
            splits.val, cfg.eval_batch_size, train=False, device=device, seed=cfg.seed, mean=mean, std=std,
            channels_last=cfg.model.channels_last, resize_to=image_size,
        )
    return train_loader, val_loader


def _photo_defaults(augment: AugmentConfig) -> AugmentConfig:
    """torchvision's reference training transform for photos, for a config without a photo recipe:
    RandomResizedCrop (0.08-1 of the area) and a horizontal flip."""
    import dataclasses

    return dataclasses.replace(augment, rrc_scale=[0.08, 1.0], flip=True)
