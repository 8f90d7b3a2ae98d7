"""The real CIFAR-10 JPEG archive in ../shared: decoded once per session (slow), then cached."""

from __future__ import annotations

import pytest
import torch

from resnetlab.data import AugmentConfig, DeviceLoader, load_splits
from resnetlab.data import folders

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    # Session fixtures run before conftest's per-test RESNETLAB_CACHE, so name the cache explicitly.
    return tmp_path_factory.getbasetemp() / "resnetlab-cache"


@pytest.fixture(scope="session")
def cifar_jpeg(cifar_jpeg_archive, real_cache):
    return folders.load_image_folder(cifar_jpeg_archive, data_dir=real_cache)


@pytest.mark.slow
def test_shared_archive_is_cifar10_train(cifar_jpeg):
    assert list(cifar_jpeg) == ["train"]
    train = cifar_jpeg["train"]
    assert train.images.shape == (50_000, 32, 32, 3) and train.images.dtype == torch.uint8
    assert train.classes == CIFAR10_CLASSES
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert train.paths[0] == "train/airplane/0000.jpg"


@pytest.mark.slow
def test_cached_splits_and_loader(cifar_jpeg, cifar_jpeg_archive, real_cache, monkeypatch):
    monkeypatch.setattr(folders, "decode_all", lambda *a, **k: pytest.fail("decoded twice"))
    splits = load_splits(cifar_jpeg_archive, data_dir=real_cache, seed=0)
    assert (len(splits.train), len(splits.val), splits.test) == (45_000, 5_000, None)
    assert torch.bincount(splits.val.labels).tolist() == [500] * 10
    # the well-known CIFAR-10 training statistics (JPEG adds a little noise)
    assert all(abs(a - b) < 0.01 for a, b in zip(splits.train.mean, (0.4914, 0.4822, 0.4465)))
    assert all(abs(a - b) < 0.01 for a, b in zip(splits.train.std, (0.2470, 0.2435, 0.2616)))
    loader = DeviceLoader(splits.train, 512, train=True, augment=AugmentConfig(crop_padding=4, flip=True))
    x, y = next(loader.epoch(0))
    assert x.shape == (512, 3, 32, 32) and abs(float(x.mean())) < 0.2 and 0.7 < float(x.std()) < 1.3
