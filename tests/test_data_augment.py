"""Each augmentation does what it says: crops are shifted windows of the padded image, flips
mirror, rotation rotates, cutout zeroes a square, policies are seeded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import random_imageset

from resnetlab.data import AugmentConfig, DeviceLoader, ImageSet
from resnetlab.data.augment import apply_policy, crop_flip, cutout, make_policy, rotate
from resnetlab.errors import ConfigError


def _imageset(n=32, size=8) -> ImageSet:
    # One class, and mean 0 / std 1/255: normalization is the identity, so batches compare in pixel units.
    return random_imageset(n, size=size, classes=1, mean=(0, 0, 0), std=(1 / 255,) * 3)


def _pixels(loader, epoch=0):
    """Batches back in uint8 pixel units (mean 0, std 1/255 makes normalization the identity)."""
    out = []
    for x, _ in loader.epoch(epoch):
        out.append(x.round().to(torch.uint8))
    return torch.cat(out), loader.order(epoch)[: sum(len(o) for o in out)]


@pytest.mark.parametrize("pad_mode", ["reflect", "zeros", "replicate"])
def test_crop_is_a_shifted_window_of_the_padded_image(pad_mode):
    ims = _imageset()
    p = 2
    loader = DeviceLoader(ims, 8, train=True, augment=AugmentConfig(crop_padding=p, pad_mode=pad_mode))
    crops, order = _pixels(loader)
    source = ims.images.permute(0, 3, 1, 2)
    torch_mode = "constant" if pad_mode == "zeros" else pad_mode
    shifts = set()
    for crop, index in zip(crops, order.tolist()):
        padded = F.pad(source[index : index + 1], (p,) * 4, mode=torch_mode)[0]
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if padded[:, dy : dy + 8, dx : dx + 8].equal(crop)]
        assert found, "crop is not a window of the padded image"
        shifts.add(found[0])
    assert len(shifts) > 5  # offsets really vary per image


def test_flip_mirrors_about_half_the_images():
    ims = _imageset(n=64)
    loader = DeviceLoader(ims, 16, train=True, augment=AugmentConfig(flip=True))
    out, order = _pixels(loader)
    source = ims.images.permute(0, 3, 1, 2)[order]
    same = [bool(o.equal(s)) for o, s in zip(out, source)]
    mirrored = [bool(o.equal(s.flip(2))) for o, s in zip(out, source)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 16 <= sum(mirrored) <= 48


def test_alternate_flip_alternates_per_image():
    ims = _imageset(n=16)
    loader = DeviceLoader(ims, 16, train=True, augment=AugmentConfig(alternate_flip=True), seed=3)
    source = ims.images.permute(0, 3, 1, 2)
    state = {}
    for epoch in range(3):
        out, order = _pixels(loader, epoch)
        for o, index in zip(out, order.tolist()):
            state.setdefault(index, []).append(bool(o.equal(source[index].flip(2))))
    assert all(s[0] != s[1] and s[0] == s[2] for s in state.values())
    assert 2 <= sum(s[0] for s in state.values()) <= 14  # the starting side is random per image


def test_crop_flip_gather_matches_slicing():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    out = crop_flip(x, (4, 4), torch.tensor([[0, 2], [1, 0]]), torch.tensor([False, True]))
    assert out[0].equal(x[0, :, 0:4, 2:6])
    assert out[1].equal(x[1, :, 1:5, 0:4].flip(2))


def test_rotate_by_90_degrees_is_rot90():
    x = torch.rand(3, 3, 5, 5)
    out = rotate(x, torch.full((3,), 90.0))
    assert any(torch.allclose(out, torch.rot90(x, k, dims=(2, 3)), atol=1e-5) for k in (1, 3))
    assert torch.allclose(rotate(x, torch.zeros(3)), x, atol=1e-6)


def test_rotation_in_the_loader_stays_within_range():
    ims = _imageset(n=16, size=16)
    loader = DeviceLoader(ims, 16, train=True, augment=AugmentConfig(rotation=10.0))
    out, order = _pixels(loader)
    source = ims.images.permute(0, 3, 1, 2)[order].float()
    # small rotations keep the centre pixel and change the corners
    assert torch.allclose(out[:, :, 8, 8].float(), source[:, :, 8, 8], atol=60)
    assert not out.float().equal(source)


def test_cutout_zeroes_one_square():
    x = torch.ones(4, 3, 10, 10)
    out = cutout(x, 4, torch.tensor([[5, 5], [0, 0], [9, 9], [2, 7]]))
    zeros = (out[:, 0] == 0).sum((1, 2)).tolist()
    assert zeros == [16, 4, 9, 16]  # clipped at the borders (rows/cols lo = c - size // 2 .. lo + size)
    assert out[0, :, 3:7, 3:7].eq(0).all() and out[0].sum() == 3 * (100 - 16)
    ims = _imageset(n=16)
    loaded, _ = _pixels(DeviceLoader(ims, 16, train=True, augment=AugmentConfig(cutout=3)))
    assert ((loaded == 0).all(1).sum((1, 2)) >= 1).all()


@pytest.mark.parametrize("name", ["autoaugment", "randaugment", "trivialaugment"])
def test_policies_are_seeded_per_sample(name):
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    policy = make_policy(name)
    a = apply_policy(x, policy, [1, 2, 3, 4, 5, 6])
    b = apply_policy(x, policy, [1, 2, 3, 4, 5, 6])
    assert a.dtype == torch.uint8 and a.shape == x.shape and a.equal(b)
    c = apply_policy(x[3:], policy, [4, 5, 6])
    assert c.equal(a[3:])  # depends on the sample's seed only, not its batch
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    apply_policy(x, policy, [9] * 6)
    assert torch.rand(1).equal(before)  # the caller's RNG is untouched


def test_config_validation_and_defaults():
    assert not AugmentConfig().active
    assert AugmentConfig(policy="AutoAugment").policy == "autoaugment"
    assert AugmentConfig(policy="none").policy is None
    with pytest.raises(ConfigError, match="policy"):
        AugmentConfig(policy="mixup")
    with pytest.raises(ConfigError, match="pad_mode"):
        AugmentConfig(pad_mode="wrap")
    with pytest.raises(ConfigError):
        AugmentConfig(crop_padding=-1)
