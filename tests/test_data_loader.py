"""DeviceLoader: normalization, order, determinism, exact resume, sharding, weighted sampling."""

from __future__ import annotations

import pytest
import torch
from helpers import random_imageset

from resnetlab.data import AugmentConfig, DeviceLoader, ImageSet
from resnetlab.errors import ConfigError

AUG = AugmentConfig(crop_padding=2, flip=True, rotation=5.0, cutout=3)


def _imageset(n=50, size=6, classes=5) -> ImageSet:
    return random_imageset(n, size=size, classes=classes)


def _all(loader, epoch=0, start=0):
    return list(loader.epoch(epoch, start_batch=start))


def test_eval_mode_is_ordered_normalized_and_keeps_last_batch():
    ims = _imageset(n=23)
    loader = DeviceLoader(ims, 8, train=False, augment=AUG)
    batches = _all(loader)
    assert len(loader) == len(batches) == 3 and [len(y) for _, y in batches] == [8, 8, 7]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (23, 3, 6, 6) and y.dtype == torch.int64
    assert y.equal(ims.labels)
    mean, std = torch.tensor(ims.mean).view(1, 3, 1, 1), torch.tensor(ims.std).view(1, 3, 1, 1)
    restored = (x * std + mean) * 255
    assert torch.allclose(restored, ims.images.permute(0, 3, 1, 2).float(), atol=1e-3)  # no augmentation in eval
    assert x.equal(torch.cat([b[0] for b in _all(loader, epoch=5)]))


def test_explicit_mean_std_override():
    ims = _imageset(n=4)
    x, _ = next(DeviceLoader(ims, 4, train=False, mean=(0, 0, 0), std=(1, 1, 1)).epoch(0))
    assert torch.allclose(x * 255, ims.images.permute(0, 3, 1, 2).float(), atol=1e-3)


def test_train_epochs_are_seeded_permutations():
    ims = _imageset(n=50)
    loader = DeviceLoader(ims, 8, train=True, seed=1)
    assert len(loader) == 6  # drop_last
    order0, order1 = loader.order(0), loader.order(1)
    assert sorted(order0.tolist()) == list(range(50))
    assert not order0.equal(order1)
    assert order0.equal(DeviceLoader(ims, 8, train=True, seed=1).order(0))
    assert not order0.equal(DeviceLoader(ims, 8, train=True, seed=2).order(0))
    y = torch.cat([b[1] for b in _all(loader)])
    assert y.equal(ims.labels[order0[:48]])


def test_same_seed_same_batches_and_different_seed_differs():
    ims = _imageset()
    a = _all(DeviceLoader(ims, 8, train=True, augment=AUG, seed=3), epoch=2)
    b = _all(DeviceLoader(ims, 8, train=True, augment=AUG, seed=3), epoch=2)
    c = _all(DeviceLoader(ims, 8, train=True, augment=AUG, seed=4), epoch=2)
    assert all(xa.equal(xb) and ya.equal(yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(xa.equal(xc) for (xa, _), (xc, _) in zip(a, c))


@pytest.mark.parametrize("aug", [AUG, AugmentConfig(crop_padding=2, alternate_flip=True), AugmentConfig(policy="trivialaugment")])
def test_start_batch_resumes_exactly(aug):
    ims = _imageset(n=20 if aug.policy else 50)  # per-sample policies are slow on CPU: keep it small
    loader = DeviceLoader(ims, 4, train=True, augment=aug, seed=7)
    full = _all(loader, epoch=3)
    for k in (1, 4):
        resumed = _all(DeviceLoader(ims, 4, train=True, augment=aug, seed=7), epoch=3, start=k)
        assert len(resumed) == len(full) - k
        for (xr, yr), (xf, yf) in zip(resumed, full[k:]):
            assert xr.equal(xf) and yr.equal(yf)


@pytest.mark.parametrize("train", [True, False])
def test_two_ranks_union_equals_single_rank_global_batch(train):
    ims = _imageset(n=50)
    single = DeviceLoader(ims, 16, train=train, augment=AUG, seed=5)
    ranks = [DeviceLoader(ims, 8, train=train, augment=AUG, seed=5, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(single)
    parts = [_all(loader, epoch=1) for loader in ranks]
    whole = _all(single, epoch=1)
    for k, (x, y) in enumerate(whole):
        shards = [p[k] for p in parts if k < len(p)]
        assert torch.cat([s[0] for s in shards]).equal(x)
        assert torch.cat([s[1] for s in shards]).equal(y)
    if train:  # disjoint, equal-size shards
        idx0 = set(ranks[0].order(1)[:8].tolist())
        assert len(parts[0][0][1]) == len(parts[1][0][1]) == 8 and len(idx0) == 8


def test_sample_weights_sample_with_replacement_seeded():
    ims = _imageset(n=40, classes=4)
    weights = (ims.labels == 2).double()
    loader = DeviceLoader(ims, 10, train=True, seed=0, sample_weights=weights)
    y = torch.cat([b[1] for b in _all(loader)])
    assert len(y) == 40 and bool((y == 2).all())
    balanced = torch.where(ims.labels == 0, 9.0, 1.0)  # class 0 weighs 9x the others
    order = DeviceLoader(ims, 10, train=True, seed=0, sample_weights=balanced).order(0)
    assert order.equal(DeviceLoader(ims, 10, train=True, seed=0, sample_weights=balanced).order(0))
    assert (ims.labels[order] == 0).sum() > 15  # expected 30 of 40 (vs 10 unweighted)
    with pytest.raises(ConfigError, match="sample_weights"):
        DeviceLoader(ims, 10, train=True, sample_weights=-weights)


def test_resize_to_and_channels_last():
    ims = _imageset(n=8)
    x, _ = next(DeviceLoader(ims, 4, train=True, augment=AUG, resize_to=16, channels_last=True).epoch(0))
    assert x.shape == (4, 3, 16, 16)
    assert x.is_contiguous(memory_format=torch.channels_last)
    x, _ = next(DeviceLoader(ims, 4, train=False, resize_to=(12, 10)).epoch(0))
    assert x.shape == (4, 3, 12, 10)


def test_epoch_sizes_shrink_training_batches_per_epoch_and_the_last_size_repeats():
    ims = _imageset(n=8, size=16)
    aug = AugmentConfig(crop_padding=1, alternate_flip=True, epoch_sizes=[8, 12, 16])
    loader = DeviceLoader(ims, 4, train=True, augment=aug, channels_last=True)
    shapes = [next(loader.epoch(e))[0].shape[-2:] for e in range(5)]
    assert shapes == [(8, 8), (12, 12), (16, 16), (16, 16), (16, 16)]
    # the shrunken batch is the antialiased full-size batch: its mean colour is (almost) unchanged
    full = DeviceLoader(ims, 4, train=True, augment=AugmentConfig(crop_padding=1, alternate_flip=True))
    small, big = next(loader.epoch(0))[0], next(full.epoch(0))[0]
    assert torch.allclose(small.mean(dim=(2, 3)), big.mean(dim=(2, 3)), atol=0.05)
    assert next(loader.epoch(0))[0].is_contiguous(memory_format=torch.channels_last)
    # only training batches change size: evaluation keeps the images' own size
    assert next(DeviceLoader(ims, 4, train=False, augment=aug).epoch(0))[0].shape[-2:] == (16, 16)
    # epoch_sizes alone (no other augmentation) still applies
    only = DeviceLoader(ims, 4, train=True, augment=AugmentConfig(epoch_sizes=[8]))
    assert next(only.epoch(3))[0].shape[-2:] == (8, 8)


@pytest.mark.parametrize("bad", [[], [4], [16, "x"], [16, 2.5], [True]])
def test_epoch_sizes_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match="augment.epoch_sizes"):
        AugmentConfig(epoch_sizes=bad)


def test_bad_arguments():
    ims = _imageset(n=8)
    with pytest.raises(ConfigError, match="rank"):
        DeviceLoader(ims, 4, train=True, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch"):
        DeviceLoader(ims, 16, train=True)  # no full batch with drop_last


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_matches_cpu():
    ims = _imageset()
    cpu = _all(DeviceLoader(ims, 8, train=True, augment=AugmentConfig(crop_padding=2, flip=True, cutout=3), seed=1))
    gpu = _all(DeviceLoader(ims, 8, train=True, augment=AugmentConfig(crop_padding=2, flip=True, cutout=3), seed=1, device="cuda"))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.device.type == "cuda" and torch.allclose(xc, xg.cpu(), atol=1e-5) and yc.equal(yg.cpu())
