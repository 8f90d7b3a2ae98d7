"""Batched, seeded data augmentation on the device.

Why hand-written: the usual per-image PIL pipeline (torchvision transforms inside DataLoader
workers) tops out at a few thousand 32x32 images/s on a 2-core CPU and would starve training;
applying each augmentation to a whole batch with a few tensor ops (as airbench does, Jordan 2024)
is more than 10x faster (benchmarks/loader.md) and runs on the GPU unchanged. Random parameters
are drawn on the CPU from a generator seeded by (seed, epoch, batch index), so results are the
same on every device and a resumed epoch replays them exactly.

The learned/searched policies (AutoAugment, RandAugment, TrivialAugment) stay per-sample through
torchvision.transforms.v2, each sample seeded by its position in the epoch.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from resnetlab.errors import ConfigError

POLICIES = ("autoaugment", "randaugment", "trivialaugment")
PAD_MODES = ("reflect", "zeros", "replicate")


@dataclass
class AugmentConfig:
    """Training augmentation switches. The defaults augment nothing.

    crop_padding: pixels of padding before a random crop back to the original size (4 for CIFAR,
        He et al. 2016); this is a random translation by up to +-crop_padding pixels.
    pad_mode: "reflect" (airbench), "zeros" (torchvision RandomCrop's default) or "replicate".
    flip: random horizontal flip with probability 0.5.
    alternate_flip: instead of coin flips, each image is flipped in every other epoch, starting
        from a seeded random side (airbench, Jordan 2024): every epoch pair shows both views.
    rotation: maximum absolute rotation in degrees (uniform in [-rotation, +rotation]).
    cutout: side in pixels of one zeroed (mean-coloured) square per image (DeVries & Taylor 2017).
    policy: None, "autoaugment" (CIFAR-10 policy, Cubuk et al. 2019), "randaugment" or
        "trivialaugment" (TrivialAugmentWide), applied per image on uint8 before the rest.
    epoch_sizes: progressive resizing (Howard 2018, fast.ai's DAWNBench ImageNet entry): the side
        of the training images in each epoch, the last value repeating, e.g. [24, 24, 32]. Each
        augmented batch is resized on the device (antialiased when shrinking); a conv net's cost
        scales with the pixel count, so a 24-pixel epoch of fastnet94 costs ~0.55 of a 32-pixel one.
    """

    crop_padding: int = 0
    pad_mode: str = "reflect"
    flip: bool = False
    alternate_flip: bool = False
    rotation: float = 0.0
    cutout: int = 0
    policy: str | None = None
    epoch_sizes: list[int] | None = None
    # Photo path (resnetlab.data.photo; image folders): RandomResizedCrop's area and aspect ranges
    # (timm/torchvision default [0.08, 1] and [3/4, 4/3]; None: no RandomResizedCrop recipe), ColorJitter
    # strength for brightness/contrast/saturation (timm's 0.4), RandomErasing probability (timm's reprob),
    # and the MixUp / CutMix Beta alphas (0: off; both on: one of them per batch, soft targets).
    rrc_scale: list[float] | None = None
    rrc_ratio: list[float] = (0.75, 4 / 3)
    color_jitter: float = 0.0
    random_erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self) -> None:
        self._check_photo()
        if self.crop_padding < 0 or self.cutout < 0 or self.rotation < 0:
            raise ConfigError("augment: crop_padding, cutout and rotation must be >= 0")
        if self.epoch_sizes is not None:
            sizes = self.epoch_sizes if isinstance(self.epoch_sizes, (list, tuple)) else [self.epoch_sizes]
            if not sizes or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in sizes):
                raise ConfigError(f"augment.epoch_sizes={self.epoch_sizes!r}: expected a list of image sides >= 8 pixels, one per epoch")
            self.epoch_sizes = list(sizes)
        if self.pad_mode not in PAD_MODES:
            raise ConfigError(f"augment.pad_mode must be one of {', '.join(PAD_MODES)}, got {self.pad_mode!r}")
        if self.policy is not None:
            self.policy = str(self.policy).lower().replace("_", "").replace("-", "")
            if self.policy in ("none", ""):
                self.policy = None
            elif self.policy not in POLICIES:
                raise ConfigError(f"augment.policy must be one of {', '.join(POLICIES)} or null, got {self.policy!r}")

    def _check_photo(self) -> None:
        for key in ("rrc_scale", "rrc_ratio"):
            value = getattr(self, key)
            if value is None and key == "rrc_scale":
                continue
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ConfigError(f"augment.{key}={value!r}: expected [min, max], two numbers")
            lo, hi = float(value[0]), float(value[1])
            if not 0 < lo <= hi or (key == "rrc_scale" and hi > 1):
                bound = "0 < min <= max <= 1" if key == "rrc_scale" else "0 < min <= max"
                raise ConfigError(f"augment.{key}={list(value)!r}: expected {bound}")
            setattr(self, key, [lo, hi])
        for key in ("color_jitter", "random_erasing", "mixup", "cutmix"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"augment.{key} must be a number >= 0, got {value!r}")
        if self.random_erasing > 1:
            raise ConfigError(f"augment.random_erasing is a probability in [0, 1], got {self.random_erasing!r}")

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip or self.alternate_flip or self.rotation or self.cutout or self.policy
                    or self.epoch_sizes)

    def size_at(self, epoch: int) -> int | None:
        """The training side for 0-based ``epoch`` under ``epoch_sizes`` (None: the loader's own)."""
        if not self.epoch_sizes:
            return None
        return self.epoch_sizes[min(epoch, len(self.epoch_sizes) - 1)]


def mix_seed(*values: int) -> int:
    """A 63-bit seed that is a pure function of the integers given (stable across runs/platforms)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(values)}q", *values), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# --- batched operations (x: (B, C, H, W)) --------------------------------------------------------
def pad_images(images: torch.Tensor, padding: int, pad_mode: str = "reflect", chunk: int = 4096) -> torch.Tensor:
    """Pad uint8 (N, C, H, W) images on all four sides, in chunks to bound peak memory.

    The loader pads the whole training set once, so each batch's crop is a single gather.
    """
    mode = "constant" if pad_mode == "zeros" else pad_mode
    return torch.cat([F.pad(images[i : i + chunk], (padding,) * 4, mode=mode) for i in range(0, len(images), chunk)])


def crop_flip(padded: torch.Tensor, size: tuple[int, int], offsets: torch.Tensor | None, flip: torch.Tensor | None) -> torch.Tensor:
    """Per image, the (H, W) window of ``padded`` (B, C, Hp, Wp) at ``offsets`` (B, 2) = (dy, dx),
    mirrored left-right where ``flip`` (B,) is True; None means no shift / no flip.

    Crop and flip are one gather: the flip just reverses each image's column index, so the batch
    is touched once instead of pad + crop + flip passes (~3x faster on CPU).
    """
    b, c, hp, wp = padded.shape
    h, w = size
    device = padded.device
    if offsets is None:
        offsets = torch.zeros(b, 2, dtype=torch.long)
    offsets = offsets.to(device)
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    rows = offsets[:, 0:1] + ys  # (B, H)
    cols = offsets[:, 1:2] + xs  # (B, W)
    if flip is not None:
        cols = torch.where(flip.to(device).view(b, 1), offsets[:, 1:2] + (w - 1) - xs, cols)
    spatial = (rows * wp).view(b, h, 1) + cols.view(b, 1, w)  # (B, H, W) flat index into Hp*Wp
    index = spatial.view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, hp * wp).gather(2, index).view(b, c, h, w)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each float image by its angle (B,) about the centre; corners filled with 0."""
    rad = degrees.to(device=x.device, dtype=x.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def cutout(x: torch.Tensor, size: int, centers: torch.Tensor) -> torch.Tensor:
    """Zero a size x size square (clipped at the border) centred at ``centers`` (B, 2) = (cy, cx)."""
    b, _, h, w = x.shape
    centers = centers.to(x.device)
    lo = centers - size // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys >= lo[:, 0].view(b, 1, 1)) & (ys < lo[:, 0].view(b, 1, 1) + size)
              & (xs >= lo[:, 1].view(b, 1, 1)) & (xs < lo[:, 1].view(b, 1, 1) + size))
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def make_policy(name: str):
    from torchvision.transforms import v2

    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    if name == "randaugment":
        return v2.RandAugment()
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    raise ConfigError(f"unknown augmentation policy {name!r}")


def apply_policy(x: torch.Tensor, policy, seeds: list[int]) -> torch.Tensor:
    """Per-sample v2 policy on uint8 (B, C, H, W); sample i draws from ``torch.manual_seed(seeds[i])``.

    The global RNG is forked so the caller's random state is untouched.
    """
    out = torch.empty_like(x)
    with torch.random.fork_rng(devices=[]):
        for i, seed in enumerate(seeds):
            torch.manual_seed(seed)
            out[i] = policy(x[i])
    return out
