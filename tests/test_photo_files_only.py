"""Stream mode does not decode the whole folder first (issue 23, item 1).

On the photo path the splits are loaded files-only: the folder is walked and split as for the
decoded load, but no image is decoded to one fixed size (nor cached); mean/std come from a sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import load_splits
from resnetlab.data.photo import decode_capped
from resnetlab.data.splits import file_channel_stats
from resnetlab.errors import DataError


def _varied_folder(root: Path, per_class: int = 12, test_per_class: int = 3, seed: int = 0) -> Path:
    """``<class>/`` folders (no val/: the val split is carved out) plus test/, of 30-70 px JPEGs of
    varied aspect whose brightness varies per image, so a sample's statistics differ from the whole's."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c, name in enumerate(("red", "green", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = int(rng.integers(30, 71)), int(rng.integers(30, 71))
                pixels = rng.integers(0, int(rng.integers(40, 120)), (h, w, 3)).astype(np.uint8)
                pixels[..., c] += 120
                Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _varied_folder(tmp_path_factory.mktemp("files-only") / "data")


def test_files_only_load_gives_the_decoded_loads_classes_splits_and_labels(folder):
    options = dict(image_size=24, seed=3, limit_train=20)
    decoded = load_splits(folder, **options)
    files = load_splits(folder, decode=False, **options)
    for name in ("train", "val", "test"):
        a, b = getattr(decoded, name), getattr(files, name)
        assert a.images is not None and b.images is None and b.files_only
        assert b.classes == a.classes == ["blue", "green", "red"]
        assert b.paths == a.paths  # same files in the same order: same stratified carve-out and limit
        assert torch.equal(b.labels, a.labels)
        assert len(b) == len(a)
    assert len(files.val) == 4 and len(files.train) == 20  # 10% of 36 carved out, then --limit-train
    with pytest.raises(DataError, match="image-size"):
        files.train.image_size  # no fixed size to report: the caller must choose one


def test_files_only_load_reports_a_bad_file_like_the_decoded_load(folder, tmp_path):
    bad = _varied_folder(tmp_path / "bad", per_class=3, test_per_class=1)
    (bad / "train" / "red" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"broken\.jpg.*--skip-bad"):
        load_splits(bad, image_size=24, decode=False)
    kept = load_splits(bad, image_size=24, decode=False, skip_bad=True, val_size=0)
    assert not any("broken" in p for p in kept.train.paths) and len(kept.train) == 9


def test_sampled_mean_std_agree_with_the_whole_set(folder):
    paths = sorted(str(p) for p in (folder / "train").rglob("*.jpg"))
    side = round(24 * 1.15)  # what file_channel_stats decodes at for image_size 24 (CACHE_SIDE_FACTOR)
    # Independent reference: every file decoded, per-channel float64 mean/std over all pixels.
    pixels = np.concatenate([decode_capped(p, side).numpy().reshape(3, -1) for p in paths], axis=1) / 255.0
    ref_mean, ref_std = pixels.mean(1), pixels.std(1)
    full_mean, full_std = file_channel_stats(paths, 24, seed=0, sample=len(paths))
    np.testing.assert_allclose(full_mean, ref_mean, atol=1e-5)
    np.testing.assert_allclose(full_std, ref_std, atol=1e-5)
    sample_mean, sample_std = file_channel_stats(paths, 24, seed=0, sample=12)  # a third of the files
    assert not np.allclose(sample_mean, ref_mean, atol=1e-4)  # a real sample, not the whole set again
    np.testing.assert_allclose(sample_mean, ref_mean, atol=0.03)
    np.testing.assert_allclose(sample_std, ref_std, atol=0.03)
    assert file_channel_stats(paths, 24, seed=0, sample=12) == (sample_mean, sample_std)  # seeded
    # ...and near what the decoded (fixed-size) load computes for the same training split.
    decoded = load_splits(folder, image_size=24, val_size=0)
    np.testing.assert_allclose(load_splits(folder, image_size=24, val_size=0, decode=False).train.mean,
                               decoded.train.mean, atol=0.03)


@pytest.mark.slow  # ~5-9 s: a short in-process run
def test_memory_mode_run_never_decodes_the_folder_to_a_fixed_size(folder, tmp_path, monkeypatch):
    """In process, with the fixed-size decoder replaced by a tripwire: today's code calls it."""
    from resnetlab.config import build_config
    from resnetlab.data import folders
    from resnetlab.engine import train

    def tripwire(*args, **kwargs):
        raise AssertionError("the folder was decoded to a fixed size on the photo path")

    monkeypatch.setattr(folders, "_decode", tripwire)
    config = build_config(None, {
        "model.name": "resnet20", "data.spec": str(folder), "data.image_size": 16, "data.mode": "memory",
        "batch_size": 8, "max_steps": 2, "device": "cpu", "run_dir": str(tmp_path / "run"), "eval_report": False,
    })
    result = train(config)
    assert result.test_split == "test" and result.test_acc is not None  # the final evaluation decoded test/


@pytest.mark.slow  # ~5-10 s on 2 shared cores: a real CLI process with stream workers
def test_cli_stream_run_trains_evaluates_and_writes_no_decoded_cache(folder, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, OMP_NUM_THREADS="1", RESNETLAB_CACHE=str(cache))
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", "train", "--model", "resnet20", "--data", str(folder), "--image-size", "16",
         "--max-steps", "3", "--batch-size", "8", "--device", "cpu", "--data-mode", "stream", "--run-dir", str(run),
         "--set", "eval_report=false"],
        capture_output=True, text=True, env=env, timeout=300, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "data: photo path, stream mode" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["test_split"] == "test" and summary["test_acc"] is not None
    assert summary["best_val_acc"] is not None  # the carved-out val split was evaluated
    # The decoded load writes its fixed-size arrays to $RESNETLAB_CACHE/decoded/; files-only writes none.
    assert not (cache / "decoded").exists() or not any((cache / "decoded").iterdir())
