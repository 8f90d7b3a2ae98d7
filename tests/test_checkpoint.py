"""Checkpoints: atomic writes, keep-last-K, completeness check, fallback, finite weights, RNG state."""

import errno
import logging
import random

import numpy as np
import pytest
import torch
from helpers import checkpoint_dict as _checkpoint

from resnetlab.engine import checkpoint as ckpt
from resnetlab.errors import CheckpointError


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_save_load_round_trip_and_keep_last(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        manager.save_last(_checkpoint(step, float(step)))
    assert _listing(tmp_path) == ["last-00000020.pt", "last-00000030.pt"]
    loaded, path = manager.load_newest_intact()
    assert path.name == "last-00000030.pt" and loaded["step"] == 30
    assert torch.equal(loaded["model"]["w"], torch.full((4, 4), 30.0))
    assert loaded["kind"] == "resnetlab-checkpoint" and loaded["complete"] is True


@pytest.mark.parametrize("failure", ["exception", "disk-full"])
def test_failed_save_leaves_previous_checkpoint_untouched(tmp_path, monkeypatch, failure):
    manager = ckpt.CheckpointManager(tmp_path, keep_last=1)
    first = manager.save_last(_checkpoint(10))
    before = first.read_bytes()

    real_save = torch.save

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the temporary file...
        if failure == "disk-full":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("serialization failed half-way")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises((OSError, RuntimeError)):
        manager.save_last(_checkpoint(20))
    monkeypatch.setattr(torch, "save", real_save)
    assert _listing(tmp_path) == ["last-00000010.pt"]  # no temporary file, no half-written checkpoint
    assert first.read_bytes() == before
    assert manager.load_newest_intact()[0]["step"] == 10


def test_failed_overwrite_of_best_keeps_the_old_file(tmp_path, monkeypatch):
    manager = ckpt.CheckpointManager(tmp_path)
    manager.save_best(_checkpoint(10, 1.0))
    before = manager.best_path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        manager.save_best(_checkpoint(20, 2.0))
    monkeypatch.undo()
    assert manager.best_path.read_bytes() == before  # same name, old bytes: the write never touched it
    assert _listing(tmp_path) == ["best.pt"]
    assert ckpt.load_checkpoint(manager.best_path)["step"] == 10


def test_truncated_newest_falls_back_to_newest_intact(tmp_path, caplog):
    manager = ckpt.CheckpointManager(tmp_path, keep_last=3)
    for step in (10, 20, 30):
        manager.save_last(_checkpoint(step))
    newest = tmp_path / "last-00000030.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        loaded, path = manager.load_newest_intact()
    assert loaded["step"] == 20 and path.name == "last-00000020.pt"
    assert "last-00000030.pt" in caplog.text and "newest intact" in caplog.text


def test_no_intact_checkpoint_is_an_error(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match="no last"):
        manager.load_newest_intact()
    (tmp_path / "last-00000001.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        manager.load_newest_intact()


def test_incomplete_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last-00000001.pt"
    data = {"kind": "resnetlab-checkpoint", "format_version": 1, "model": {}, "meta": {}}
    torch.save(data, path)  # a plain dict without the rest of the training state
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_never_written(tmp_path, bad):
    state = _checkpoint(5)
    state["model"]["w"][1, 2] = bad
    with pytest.raises(CheckpointError, match="'w'"):
        ckpt.save_checkpoint(state, tmp_path / "last-00000005.pt")
    assert list(tmp_path.iterdir()) == []


def test_nan_metric_never_becomes_best():
    assert ckpt.is_better(0.5, None)
    assert ckpt.is_better(0.6, 0.5)
    assert not ckpt.is_better(0.5, 0.5)
    assert not ckpt.is_better(float("nan"), None)
    assert not ckpt.is_better(float("nan"), 0.1)
    assert not ckpt.is_better(float("inf"), 0.1)
    assert not ckpt.is_better(None, 0.1)


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    manager.save_last(_checkpoint(1))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loaded, _ = manager.load_newest_intact()
    ckpt.restore_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
