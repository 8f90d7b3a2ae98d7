"""Validation split, quick-run limits and training statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import class_folder

from resnetlab.data import load_splits
from resnetlab.data.splits import CIFAR_VAL_SIZE, channel_stats, default_val_size, stratified_order, stratified_split
from resnetlab.data.imageset import ImageSet
from resnetlab.errors import ConfigError

LABELS = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)


def test_split_is_disjoint_complete_and_stratified():
    train, val = stratified_split(LABELS, 10, seed=0)
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert torch.bincount(LABELS[val]).tolist() == [5, 3, 2]


def test_split_is_seeded():
    a = stratified_split(LABELS, 10, seed=0)[1]
    assert a.equal(stratified_split(LABELS, 10, seed=0)[1])
    assert not a.equal(stratified_split(LABELS, 10, seed=1)[1])


def test_small_val_gets_one_per_class_and_train_keeps_one():
    labels = torch.tensor([0] * 96 + [1, 1, 2, 2])
    train, val = stratified_split(labels, 3, seed=0)
    assert torch.bincount(labels[val], minlength=3).tolist() == [1, 1, 1]  # not [3, 0, 0]
    assert torch.bincount(labels[train], minlength=3).tolist() == [95, 1, 1]
    labels = torch.tensor([0, 1, 1, 1])
    train, val = stratified_split(labels, 2, seed=0)
    assert len(val) == 2 and labels[train].tolist().count(0) == 1  # the single class-0 image stays in train


@pytest.mark.parametrize("size", [0, 98, -1])
def test_impossible_val_size(size):
    with pytest.raises(ConfigError, match="--val-size"):
        stratified_split(LABELS, size, seed=0)


def test_stratified_order_prefixes_keep_proportions():
    order = stratified_order(LABELS, seed=3)
    assert sorted(order.tolist()) == list(range(100))
    for n in (10, 20, 50):
        counts = torch.bincount(LABELS[order[:n]], minlength=3).float()
        expected = torch.tensor([0.5, 0.3, 0.2]) * n
        assert (counts - expected).abs().max() <= 1.0
    assert not order.equal(stratified_order(LABELS, seed=4))


def test_channel_stats_are_exact():
    images = torch.randint(0, 256, (20, 5, 6, 3), dtype=torch.uint8)
    mean, std = channel_stats(images)
    as_float = images.double() / 255
    np.testing.assert_allclose(mean, as_float.mean((0, 1, 2)).numpy(), atol=1e-6)
    np.testing.assert_allclose(std, as_float.std((0, 1, 2), unbiased=False).numpy(), atol=1e-6)


def test_default_val_sizes():
    ims = ImageSet(torch.zeros(200, 2, 2, 3, dtype=torch.uint8), torch.arange(200) % 40, [str(i) for i in range(40)])
    assert default_val_size(ims, is_cifar=True) == CIFAR_VAL_SIZE == 5000  # He et al. 2016
    assert default_val_size(ims, is_cifar=False) == 40  # 10% = 20, but at least one per class


def test_load_splits_stats_from_train_only_and_limit(tmp_path):
    class_folder(tmp_path / "ds", ("c0", "c1"), per_class=(12, 8), size=4)
    splits = load_splits(tmp_path / "ds", val_size=5, seed=2)
    assert (len(splits.train), len(splits.val)) == (15, 5)
    assert splits.train.mean == channel_stats(splits.train.images)[0]
    assert splits.val.mean == splits.train.mean and splits.val.std == splits.train.std
    assert splits.train.mean != channel_stats(splits.val.images)[0]
    limited = load_splits(tmp_path / "ds", val_size=5, seed=2, limit_train=6)
    assert len(limited.train) == 6
    assert torch.bincount(limited.train.labels).tolist() in ([4, 2], [3, 3])
    assert limited.val.labels.equal(splits.val.labels)  # the limit never touches val
    assert limited.train.mean == splits.train.mean  # normalization of the full train split
    with pytest.raises(ConfigError, match="--limit-train"):
        load_splits(tmp_path / "ds", limit_train=0)


def test_val_size_zero_means_no_validation(tmp_path):
    class_folder(tmp_path / "ds", ("c0", "c1"), per_class=(12, 8), size=4)
    splits = load_splits(tmp_path / "ds", val_size=0)
    assert splits.val is None and len(splits.train) == 20
