"""DeviceLoader: the whole dataset as uint8 on the training device, served as augmented,
normalized float32 batches with no worker processes.

Every epoch's order and every augmentation parameter is a pure function of
``(seed, epoch, batch index)``, so ``epoch(e, start_batch=k)`` replays exactly the batches an
uninterrupted run would see from batch k on. With ``world_size`` K, global batch k is the
same K*B images a single process would take; rank r gets its r-th slice of B, augmented with the
same parameters, so K ranks x batch B see exactly what 1 rank x batch K*B would.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from resnetlab.data.augment import (
    AugmentConfig,
    apply_policy,
    crop_flip,
    cutout,
    make_policy,
    mix_seed,
    pad_images,
    rotate,
)
from resnetlab.data.imageset import ImageSet
from resnetlab.errors import ConfigError
from resnetlab.imaging import normalization, normalize_nchw, resize_float

# Stream ids for mix_seed, so the order and each kind of random draw never share a generator.
_ORDER, _PARAMS, _POLICY, _FLIP_BASE = 0, 1, 2, 3


def checked_sample_weights(sample_weights, n: int) -> torch.Tensor:
    """``sample_weights`` as float64 on the CPU, or a ConfigError unless they are n non-negative numbers
    with a positive sum."""
    weights = torch.as_tensor(sample_weights, dtype=torch.float64).flatten().cpu()
    if len(weights) != n or bool((weights < 0).any()) or not float(weights.sum()) > 0:
        raise ConfigError(f"sample_weights must be {n} non-negative numbers with a positive sum")
    return weights


def shuffled_order(n: int, seed: int, epoch: int, sample_weights: torch.Tensor | None = None,
                   stream: int = _ORDER) -> torch.Tensor:
    """One epoch's n dataset indices: a seeded permutation, or with ``sample_weights`` a seeded draw
    with replacement (balanced sampling). Shared by every training loader, so ``class_balance:
    sampler`` means the same on each data path; ``stream`` is the loader's own mix_seed id."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, stream))
    if sample_weights is not None:
        return torch.multinomial(sample_weights, n, replacement=True, generator=g)
    return torch.randperm(n, generator=g)


class DeviceLoader:
    """Batches of ``imageset`` for one rank: ``(x, y)`` with x float32 (B, 3, H, W), y int64 (B,).

    train=True: seeded shuffle (or weighted sampling with ``sample_weights``), augmentation,
    drop_last by default. train=False: dataset order, no augmentation, last partial batch kept.
    ``resize_to`` resizes batches on the device (e.g. 32x32 CIFAR for ImageNet-sized weights).
    """

    def __init__(
        self,
        imageset: ImageSet,
        batch_size: int,
        *,
        train: bool,
        augment: AugmentConfig | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        sample_weights: torch.Tensor | None = None,
        channels_last: bool = False,
        resize_to: int | tuple[int, int] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.device = torch.device(device)
        self.images = imageset.images.to(self.device).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        self.labels = imageset.labels.to(self.device)
        self.classes = list(imageset.classes)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.global_batch = batch_size * world_size
        self.train, self.seed = train, seed
        self.augment = augment if (train and augment is not None and augment.active) else None
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self.resize_to = (resize_to, resize_to) if isinstance(resize_to, int) else resize_to
        mean = torch.tensor(mean if mean is not None else imageset.mean, dtype=torch.float32)
        std = torch.tensor(std if std is not None else imageset.std, dtype=torch.float32)
        self.mean, self.std = tuple(mean.tolist()), tuple(std.tolist())
        self._shift, self._scale = normalization(self.mean, self.std, self.device)
        n = len(self.labels)
        self.sample_weights = None
        if sample_weights is not None and train:
            self.sample_weights = checked_sample_weights(sample_weights, n)
        if len(self) == 0:
            raise ConfigError(
                f"{n} images give no batch of {batch_size} x {world_size} ranks with drop_last; "
                "lower the batch size"
            )
        self._policy = make_policy(self.augment.policy) if self.augment and self.augment.policy else None
        self._padded = None  # (N, 3, H+2p, W+2p) uint8, so a crop is one gather per batch
        if self.augment and self.augment.crop_padding and not self.augment.policy:
            self._padded = pad_images(imageset.images.permute(0, 3, 1, 2), self.augment.crop_padding,
                                      self.augment.pad_mode).to(self.device)
        self._flip_base = None
        if self.augment and self.augment.alternate_flip:
            g = torch.Generator().manual_seed(mix_seed(seed, _FLIP_BASE))
            self._flip_base = torch.randint(0, 2, (n,), generator=g, dtype=torch.bool)

    def __len__(self) -> int:
        n, g = len(self.labels), self.global_batch
        if self.drop_last:
            return n // g
        full, rest = divmod(n, g)
        return full + (1 if rest > self.rank * self.batch_size else 0)

    def order(self, epoch: int) -> torch.Tensor:
        """Dataset indices of one epoch in batch order (all ranks), on the CPU."""
        n = len(self.labels)
        if not self.train:
            return torch.arange(n)
        return shuffled_order(n, self.seed, epoch, self.sample_weights)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's batches of ``epoch`` from global batch ``start_batch`` on."""
        order = self.order(epoch)
        n, g, b = len(order), self.global_batch, self.batch_size
        num_global = n // g if self.drop_last else -(-n // g)
        for k in range(start_batch, num_global):
            chunk = order[k * g : (k + 1) * g]
            lo, hi = self.rank * b, min((self.rank + 1) * b, len(chunk))
            if lo >= hi:
                continue
            idx = chunk[lo:hi]
            dev_idx = idx.to(self.device)
            y = self.labels.index_select(0, dev_idx)
            if self.augment is not None:
                x = self._augment(idx, dev_idx, epoch, k, lo, len(chunk))
            else:
                x = normalize_nchw(self.images.index_select(0, dev_idx), self._shift, self._scale)
            target = self._size_at(epoch)
            if target is not None and tuple(x.shape[-2:]) != tuple(target):
                x = resize_float(x, target)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def _size_at(self, epoch: int) -> tuple[int, int] | None:
        """(H, W) of this epoch's batches: the progressive size when the augmentation sets one."""
        side = self.augment.size_at(epoch) if self.augment is not None else None
        return (side, side) if side is not None else self.resize_to

    def _augment(self, idx: torch.Tensor, dev_idx: torch.Tensor, epoch: int, k: int, lo: int, size: int) -> torch.Tensor:
        """Augment this rank's slice [lo, lo+B) of global batch k (``size`` images in all).

        Parameters are drawn for the whole global batch, in a fixed order, then sliced, so they do
        not depend on rank or world size.
        """
        cfg = self.augment
        hi = lo + len(idx)
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, k, _PARAMS))
        h, w = self.images.shape[-2:]
        offsets = flip = None
        if cfg.crop_padding:
            offsets = torch.randint(0, 2 * cfg.crop_padding + 1, (size, 2), generator=gen)[lo:hi]
        if cfg.alternate_flip:  # Jordan 2024: flip each image every other epoch
            flip = self._flip_base[idx] ^ bool(epoch % 2)
        elif cfg.flip:
            flip = torch.rand(size, generator=gen)[lo:hi] < 0.5
        if self._policy is not None:  # per sample, seeded by its position in the epoch, before the crop
            x = self.images.index_select(0, dev_idx)
            first = k * self.global_batch + lo
            x = apply_policy(x, self._policy, [mix_seed(self.seed, epoch, first + i, _POLICY) for i in range(len(idx))])
            if cfg.crop_padding:
                x = pad_images(x, cfg.crop_padding, cfg.pad_mode)
        elif cfg.crop_padding:
            x = self._padded.index_select(0, dev_idx)  # (B, 3, H+2p, W+2p)
        else:
            x = self.images.index_select(0, dev_idx)  # (B, 3, H, W) uint8
        if offsets is not None or flip is not None:
            x = crop_flip(x, (h, w), offsets, flip)
        x = x.float()
        if cfg.rotation:
            angles = (torch.rand(size, generator=gen, dtype=torch.float64)[lo:hi] * 2 - 1) * cfg.rotation
            x = rotate(x, angles.float())
        x = normalize_nchw(x, self._shift, self._scale)
        if cfg.cutout:  # after normalization, so the square is mean-coloured (0), DeVries & Taylor 2017
            centers = torch.stack([torch.randint(0, h, (size,), generator=gen),
                                   torch.randint(0, w, (size,), generator=gen)], 1)[lo:hi]
            x = cutout(x, cfg.cutout, centers)
        return x
