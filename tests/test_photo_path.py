"""The photo path (issue 23 items 1-2): capped native-resolution cache, per-sample RandomResizedCrop,
seeded photo augmentation, memory == stream, crop_pct recorded and honoured, bit-exact resume."""

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

from resnetlab import imaging
from resnetlab.data.augment import AugmentConfig
from resnetlab.data.imageset import ImageSet
from resnetlab.data.photo import PhotoFiles, PhotoLoader, choose_mode, decode_capped, eval_imageset
from resnetlab.errors import CheckpointError, ConfigError, DataError


def _photo_folder(root: Path, per_class: int = 8, seed: int = 0) -> Path:
    """train/ and val/ of 40-90 px JPEGs of varied aspect; the class is the dominant colour."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(2, per_class // 2))):
        for c, name in enumerate(("red", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = int(rng.integers(40, 91)), int(rng.integers(40, 91))
                pixels = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
                pixels[..., 2 * c] += 150
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _photo_folder(tmp_path_factory.mktemp("photos") / "data")


@pytest.fixture(scope="module")
def files(folder):
    paths = sorted(str(p) for p in (folder / "train").rglob("*.jpg"))
    labels = torch.tensor([0 if "/red/" in p else 1 for p in paths])
    return PhotoFiles(paths, labels, ["red", "blue"])


def _batches(loader, epoch, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch, start)]


def test_cache_keeps_aspect_and_caps_shorter_side(tmp_path):
    Image.new("RGB", (90, 45), (10, 20, 30)).save(tmp_path / "wide.png")
    Image.new("RGB", (30, 50), (10, 20, 30)).save(tmp_path / "small.png")
    assert tuple(decode_capped(str(tmp_path / "wide.png"), 20).shape) == (3, 20, 40)  # shorter side capped, 2:1 kept
    assert tuple(decode_capped(str(tmp_path / "small.png"), 40).shape) == (3, 50, 30)  # never enlarged
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        decode_capped(str(tmp_path / "bad.jpg"), 20)
    with pytest.raises(DataError, match=r"^.*gone\.jpg: cannot be read"):  # removed after the folder was read
        decode_capped(str(tmp_path / "gone.jpg"), 20)


def test_random_resized_crop_is_seeded_and_differs_across_epochs(files):
    aug = AugmentConfig(rrc_scale=[0.3, 1.0], flip=True)
    loader = PhotoLoader(files, 4, size=24, augment=aug, mode="memory", seed=5, workers=1)
    # The cache holds each image at its own aspect, shorter side <= 1.15 x 24.
    assert {min(t.shape[1:]) for t in loader._samples.cache} <= set(range(1, 29))
    assert len({tuple(t.shape[1:]) for t in loader._samples.cache}) > 3
    first = _batches(loader, 0)
    assert len(first) == len(files.paths) // 4 and first[0][0].shape == (4, 3, 24, 24)
    again = _batches(PhotoLoader(files, 4, size=24, augment=aug, mode="memory", seed=5, workers=1), 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    # Same images in another epoch (order ignored): other crops.
    by_label = lambda batches: torch.cat([x for x, _ in batches]).sum(dim=(1, 2, 3)).sort().values
    assert not torch.allclose(by_label(first), by_label(_batches(loader, 1)))
    other_seed = _batches(PhotoLoader(files, 4, size=24, augment=aug, mode="memory", seed=6, workers=1), 0)
    assert not torch.equal(first[0][0], other_seed[0][0])


@pytest.mark.slow  # ~3 s: two worker processes start
def test_stream_gives_the_memory_batches_and_replays_from_a_start_batch(files):
    aug = AugmentConfig(rrc_scale=[0.2, 1.0], flip=True, policy="trivialaugment", color_jitter=0.4, random_erasing=0.5)
    memory = PhotoLoader(files, 4, size=24, augment=aug, mode="memory", seed=1, workers=1)
    with PhotoLoader(files, 4, size=24, augment=aug, mode="stream", seed=1, workers=2) as stream:
        assert stream._samples.cache is None and stream._loader.num_workers == 2
        for epoch in (0, 1):
            a, b = _batches(memory, epoch), _batches(stream, epoch)
            assert len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
        tail = _batches(stream, 1, start=2)  # a resumed epoch: batches 2.. exactly as uninterrupted
    assert all(torch.equal(x[0], y[0]) for x, y in zip(tail, _batches(memory, 1)[2:]))


def test_mixup_cutmix_give_seeded_soft_targets(files):
    aug = AugmentConfig(rrc_scale=[0.5, 1.0], mixup=0.4, cutmix=1.0)
    loader = PhotoLoader(files, 8, size=16, augment=aug, mode="memory", seed=2, workers=1)
    (x, y), = _batches(loader, 0)[:1]
    assert y.dtype == torch.float32 and y.shape == (8, 2)
    assert torch.allclose(y.sum(1), torch.ones(8)) and not bool(((y == 0) | (y == 1)).all())  # mixed, not one-hot
    (x2, y2), = _batches(PhotoLoader(files, 8, size=16, augment=aug, mode="memory", seed=2, workers=1), 0)[:1]
    assert torch.equal(x, x2) and torch.equal(y, y2)
    plain = PhotoLoader(files, 8, size=16, augment=AugmentConfig(rrc_scale=[0.5, 1.0]), mode="memory", seed=2, workers=1)
    assert _batches(plain, 0)[0][1].dtype == torch.int64


def test_eval_transform_matches_a_hand_computation(tmp_path):
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (60, 90, 3)).astype(np.uint8))
    # crop_pct 0.5 at 32: shorter side 60 -> 64 (90 -> 96), then the centre 32x32.
    hand = image.resize((96, 64), Image.Resampling.BICUBIC).crop((32, 16, 64, 48))
    assert np.array_equal(np.asarray(imaging.fit(image, (32, 32), 0.5)), np.asarray(hand))
    # An image already at the size is still resized and cropped when crop_pct < 1.
    square = image.crop((0, 0, 32, 32))
    assert np.array_equal(np.asarray(imaging.fit(square, (32, 32), 0.5)),
                          np.asarray(square.resize((64, 64), Image.Resampling.BICUBIC).crop((16, 16, 48, 48))))
    # torchvision's resize + centre crop (tensor, antialiased bicubic) is the same geometry within rounding.
    from torchvision.transforms.v2 import functional as F

    t = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    ref = F.center_crop(F.resize(t, [64], interpolation=F.InterpolationMode.BICUBIC, antialias=True), [32, 32])
    ours = torch.from_numpy(np.array(imaging.fit(image, (32, 32), 0.5))).permute(2, 0, 1)
    assert (ref.float() - ours.float()).abs().mean() < 3.0


def test_crop_pct_recorded_and_honoured_by_predict_and_evaluate(tmp_path):
    from resnetlab.data.photo import for_model
    from resnetlab.inference.predictor import Predictor
    from resnetlab.models import create_model
    from resnetlab.models.files import load_model_file, save_model_file

    torch.manual_seed(0)
    net = create_model("cnn_baseline", num_classes=2)
    net.meta.classes = ["a", "b"]
    net.meta.crop_pct = 0.5
    path = save_model_file(net, tmp_path / "m" / "model.safetensors")
    assert load_model_file(path).meta.crop_pct == 0.5
    # Centre 32x32 red, the rest blue: at crop_pct 0.5 the model must see only red.
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[..., 2] = 255
    pixels[16:48, 16:48] = (255, 0, 0)
    (tmp_path / "a").mkdir()
    Image.fromarray(pixels).save(tmp_path / "a" / "x.png")
    seen = []
    predictor = Predictor.load(path)
    predictor.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    predictor.predict([str(tmp_path / "a" / "x.png")])
    expected = imaging.normalize(torch.from_numpy(np.array(imaging.fit(Image.fromarray(pixels), (32, 32), 0.5)))[None],
                                 net.meta.mean, net.meta.std)
    assert torch.equal(seen[0], expected)
    assert np.asarray(imaging.fit(Image.fromarray(pixels), (32, 32), 0.5))[..., 2].max() == 0  # no blue border
    # evaluate's split is re-fitted from the files with the model's crop_pct, to the same pixels.
    whole = ImageSet(images=torch.from_numpy(np.array(imaging.fit(Image.fromarray(pixels), (32, 32))))[None],
                     labels=torch.tensor([0]), classes=["a", "b"], source=str(tmp_path), paths=["a/x.png"])
    refit = for_model(whole, load_model_file(path).meta)
    assert torch.equal(imaging.normalize(refit.images, net.meta.mean, net.meta.std), expected)


def test_bad_values_give_one_line_errors(tmp_path, files, capsys):
    from resnetlab.models.metadata import validate_meta

    for bad in (0, 1.5, "x", float("nan")):
        with pytest.raises(CheckpointError, match="crop_pct must be a number in \\(0, 1\\]"):
            validate_meta({"name": "resnet20", "num_classes": 2, "crop_pct": bad}, "model.json")
        with pytest.raises(DataError, match="--crop-pct"):
            imaging.check_crop_pct(bad, "config data.crop_pct (--crop-pct)")
    with pytest.raises(ConfigError, match="rrc_scale=\\[0.9, 0.1\\]: expected 0 < min <= max <= 1"):
        AugmentConfig(rrc_scale=[0.9, 0.1])
    with pytest.raises(ConfigError, match="random_erasing"):
        AugmentConfig(random_erasing=2)
    with pytest.raises(ConfigError, match="data.mode"):
        choose_mode("fast", files, 32)
    assert choose_mode("auto", files, 32, budget_bytes=10)[0] == "stream"
    assert choose_mode("auto", files, 32, budget_bytes=10**9)[0] == "memory"
    from resnetlab.cli import main

    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path), "--data-mode", "fast", "--run-dir", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err.strip()
    assert "data.mode" in err and "fast" in err and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()
    assert main(["train", "--data", str(tmp_path), "--crop-pct", "0", "--run-dir", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err.strip()
    assert "--crop-pct" in err and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.slow  # ~6-15 s on 2 shared cores: a real CLI process with two stream workers
def test_cli_trains_in_stream_mode_end_to_end(folder, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", "train", "--model", "resnet20", "--data", str(folder), "--image-size", "16",
         "--max-steps", "2", "--batch-size", "4", "--device", "cpu", "--data-mode", "stream", "--mixup", "0.2",
         "--random-erasing", "0.25", "--run-dir", str(tmp_path / "run"), "--set", "eval_report=false"],
        capture_output=True, text=True, env=env, timeout=300, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "data: photo path, stream mode" in proc.stdout
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    meta = meta.get("meta", meta)
    assert meta["crop_pct"] == 0.875


@pytest.mark.slow  # ~8 s: three short in-process runs
def test_resume_mid_epoch_is_bit_exact_on_the_photo_path(folder, tmp_path):
    from helpers import debug_hooks

    from resnetlab.config import build_config
    from resnetlab.engine import train
    from resnetlab.engine.resume import resume_config
    from resnetlab.models.files import load_checkpoint_dict

    def config(run_dir):
        return build_config(None, {
            "model.name": "resnet20", "data.spec": str(folder), "data.image_size": 16, "data.mode": "stream",
            "batch_size": 4, "max_steps": 5, "device": "cpu", "seed": 4, "run_dir": str(run_dir), "eval_report": False,
            "log_step_loss": True, "small_data": "off", "drop_last": True,
            "augment.rrc_scale": [0.3, 1.0], "augment.flip": True, "augment.policy": "trivialaugment",
            "augment.color_jitter": 0.3, "augment.random_erasing": 0.5, "augment.mixup": 0.4, "augment.cutmix": 1.0,
        })

    losses = lambda d: [json.loads(r)["loss"] for r in (d / "steps.jsonl").read_text().splitlines()]
    with torch.random.fork_rng():
        train(config(tmp_path / "straight"))
        stopped = tmp_path / "stopped"
        result = train(config(stopped), hooks=debug_hooks(stop_after_steps=3))  # 4 steps per epoch: mid-epoch
        assert not result.completed
        train(resume_config(stopped, {}), resume_from=stopped)
    assert losses(stopped) == losses(tmp_path / "straight") and len(losses(stopped)) == 5
    last = lambda d: load_checkpoint_dict(d / "checkpoints" / "last-00000005.pt")["model"]
    a, b = last(stopped), last(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_imageset_equals_the_predict_path(folder):
    from resnetlab.inference.preprocess import image_to_array

    paths = sorted((folder / "val").rglob("*.jpg"))
    names = [str(p.relative_to(folder)) for p in paths]
    base = ImageSet(images=torch.zeros(len(paths), 8, 8, 3, dtype=torch.uint8), labels=torch.zeros(len(paths), dtype=torch.long),
                    classes=["red", "blue"], source=str(folder), paths=names)
    refit = eval_imageset(base, 24, 0.875)
    for row, p in zip(refit.images, paths):
        assert torch.equal(row, torch.from_numpy(image_to_array(str(p), (24, 24), crop_pct=0.875)))


def test_auto_takes_the_photo_path_for_photos_and_keeps_fixed_size_arrays_for_a_cifar_like_folder(folder, tmp_path):
    from resnetlab.data.photo import folder_holds_photos, photo_path_wanted

    same = tmp_path / "same"
    for name in ("a", "b"):
        (same / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(same / name / f"{i}.png")
    assert folder_holds_photos(str(folder), 16)  # 40-90 px of varied aspect
    assert not folder_holds_photos(str(same), 32)  # one size, the train size: a CIFAR export
    assert folder_holds_photos(str(same), 16)  # one size, but twice the train size: crop from the picture
    assert not folder_holds_photos(str(tmp_path / "missing"), 16)
    assert not folder_holds_photos("cifar10", 32)

    class Data:
        spec, image_size = str(same), 32

    assert not photo_path_wanted("auto", AugmentConfig(), Data)
    assert photo_path_wanted("memory", AugmentConfig(), Data)  # the flag always wins


def test_cli_auto_trains_a_photo_folder_on_the_photo_path(folder, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", "train", "--model", "resnet20", "--data", str(folder), "--image-size", "16",
         "--max-steps", "2", "--batch-size", "4", "--device", "cpu", "--run-dir", str(tmp_path / "run"),
         "--set", "eval_report=false"],
        capture_output=True, text=True, env=env, timeout=300, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "data: photo path, memory mode" in proc.stdout and "chosen for photos" in proc.stdout
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta.get("meta", meta)["crop_pct"] == 0.875


def test_evaluation_batch_is_capped_by_pixels_for_large_images():
    from resnetlab.engine.trainer import eval_batch_for

    assert eval_batch_for(512, (32, 32)) == 512  # CIFAR keeps its configured batch
    assert eval_batch_for(512, (160, 160)) == 64 and eval_batch_for(512, (224, 224)) == 32
    assert eval_batch_for(16, (224, 224)) == 16 and eval_batch_for(512, (4000, 4000)) == 1


def test_class_balance_sampler_applies_on_the_photo_path(files):
    # 1 blue image against 8 red: inverse-frequency weights draw the classes about evenly.
    red = [i for i, y in enumerate(files.labels.tolist()) if y == 0]
    blue = [i for i, y in enumerate(files.labels.tolist()) if y == 1][:1]
    keep = red + blue
    skewed = PhotoFiles([files.paths[i] for i in keep], files.labels[keep], files.classes)
    counts = torch.bincount(skewed.labels, minlength=2).double()
    weights = (1.0 / counts)[skewed.labels]
    aug = AugmentConfig(rrc_scale=[0.5, 1.0])
    loader = PhotoLoader(skewed, 3, size=16, augment=aug, mode="memory", seed=2, workers=1, sample_weights=weights)
    drawn = torch.cat([loader.order(e) for e in range(40)])
    share_blue = float((skewed.labels[drawn] == 1).double().mean())
    assert 0.4 < share_blue < 0.6  # a plain shuffle gives exactly 1/9
    unweighted = PhotoLoader(skewed, 3, size=16, augment=aug, mode="memory", seed=2, workers=1)
    assert torch.equal(unweighted.order(0).sort().values, torch.arange(len(keep)))
    # The batches follow the drawn order, labels included.
    order = loader.order(0).tolist()
    labels = torch.cat([y for _, y in loader.epoch(0)])
    assert labels.tolist() == skewed.labels[order[: len(labels)]].tolist()
    with pytest.raises(ConfigError, match="sample_weights must be 9 non-negative"):
        PhotoLoader(skewed, 3, size=16, augment=aug, mode="memory", seed=2, workers=1, sample_weights=weights[:-1])


@pytest.fixture()
def files_with_a_corrupt_body(files, tmp_path):
    """The ``files`` set with one JPEG cut to a third: its header reads, its pixels do not."""
    bad = tmp_path / "truncated.jpg"
    data = Path(files.paths[0]).read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    paths = [str(bad)] + files.paths[1:]
    return PhotoFiles(paths, files.labels.clone(), files.classes)


@pytest.mark.slow  # ~3 s: two worker processes start
@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_a_corrupt_training_image_fails_in_one_line_or_is_skipped_with_skip_bad(files_with_a_corrupt_body, mode):
    files = files_with_a_corrupt_body
    aug = AugmentConfig(rrc_scale=[0.5, 1.0])
    with pytest.raises(DataError) as failure:
        with PhotoLoader(files, 4, size=16, augment=aug, mode=mode, seed=3, workers=2) as loader:
            _batches(loader, 0)
    message = str(failure.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(files.paths[0]) and "--skip-bad" in message
    with PhotoLoader(files, 4, size=16, augment=aug, mode=mode, seed=3, workers=2, skip_bad=True) as loader:
        order = loader.order(0).tolist()
        batches = _batches(loader, 0)
        again = _batches(loader, 0)
    # The bad file's sample is replaced by the next file in the folder's order: same batch sizes.
    assert [len(y) for _, y in batches] == [4] * len(loader)
    expected = [files.labels[1 if i == 0 else i].item() for i in order[: len(loader) * 4]]
    assert torch.cat([y for _, y in batches]).tolist() == expected
    assert loader.skipped == {0}
    shown = torch.cat([x for x, _ in batches])
    replaced = [p for p, i in enumerate(order[: len(shown)]) if i == 0]
    assert replaced and all(shown[p].abs().sum() > 0 for p in replaced)  # a real image, not the zero placeholder
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))  # the same samples each time


def test_evaluation_set_skips_a_corrupt_image_only_with_skip_bad(folder, tmp_path):
    paths = sorted(str(p) for p in (folder / "val").rglob("*.jpg"))
    bad = tmp_path / "truncated.jpg"
    data = Path(paths[0]).read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    labels = torch.tensor([0 if "/red/" in p else 1 for p in paths])
    imageset = ImageSet(images=None, labels=labels, classes=["red", "blue"], source=str(folder),
                        paths=[str(bad)] + paths[1:])
    with pytest.raises(DataError, match="truncated.jpg.*--skip-bad"):
        eval_imageset(imageset, 16, 0.875)
    kept = eval_imageset(imageset, 16, 0.875, skip_bad=True)
    assert len(kept) == len(paths) - 1 and kept.paths == paths[1:]
    assert kept.labels.tolist() == labels[1:].tolist()


@pytest.mark.slow  # ~10-20 s on 2 shared cores: two real CLI processes with stream workers
def test_cli_reports_corrupt_photos_in_one_line_and_skip_bad_finishes_the_run(tmp_path):
    root = _photo_folder(tmp_path / "data", per_class=6, seed=4)
    for bad in (root / "train" / "red" / "2.jpg", root / "val" / "blue" / "1.jpg"):
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 3])  # the header reads, the body does not
    command = [sys.executable, "-m", "resnetlab", "train", "--model", "resnet20", "--data", str(root), "--image-size", "16",
               "--max-steps", "3", "--batch-size", "4", "--device", "cpu", "--data-mode", "stream",
               "--set", "eval_report=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    failed = subprocess.run(command + ["--run-dir", str(tmp_path / "fails")], capture_output=True, text=True, env=env,
                            timeout=300, start_new_session=True)
    assert failed.returncode != 0
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("resnetlab: error: ") and ".jpg: " in error and "truncated" in error and "--skip-bad" in error
    assert "Traceback" not in failed.stderr
    done = subprocess.run(command + ["--skip-bad", "--run-dir", str(tmp_path / "skips")], capture_output=True, text=True,
                          env=env, timeout=300, start_new_session=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "val/blue/1.jpg" in done.stderr and "skipped an evaluation image" in done.stderr
    assert "train/red/2.jpg" in done.stderr and "skipped a training image" in done.stderr
    summary = json.loads((tmp_path / "skips" / "summary.json").read_text())
    assert summary["test_split"] == "val" and summary["test_acc"] is not None


@pytest.mark.slow  # ~5 s: 600 tiny files decoded by two worker processes, in a child with few descriptors
def test_worker_decodes_hold_no_descriptor_per_image(tmp_path):
    for i in range(600):
        Image.new("RGB", (12 + i % 7, 10), (i % 255, 0, 0)).save(tmp_path / f"{i}.png")
    script = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from pathlib import Path
import torch
from resnetlab.data.imageset import ImageSet
from resnetlab.data.photo import decode_cache, eval_imageset
paths = sorted(str(p) for p in Path({str(tmp_path)!r}).glob("*.png"))
cache = decode_cache(paths, 8, 2)
assert len(cache) == 600 and all(isinstance(t, torch.Tensor) for t in cache)
val = ImageSet(images=None, labels=torch.zeros(600, dtype=torch.long), classes=["a"], source={str(tmp_path)!r}, paths=paths)
assert tuple(eval_imageset(val, 8, 0.875, workers=2).images.shape) == (600, 8, 8, 3)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          start_new_session=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_skip_bad_ends_the_run_when_no_nearby_file_can_replace_a_bad_one(files, tmp_path, monkeypatch):
    import resnetlab.data.photo as photo

    paths = list(files.paths)
    for i in (0, 1):  # two bad files in a row, and only one replacement tried
        bad = tmp_path / f"truncated{i}.jpg"
        data = Path(paths[i]).read_bytes()
        bad.write_bytes(data[: len(data) // 3])
        paths[i] = str(bad)
    monkeypatch.setattr(photo, "SUBSTITUTE_TRIES", 1)
    loader = PhotoLoader(PhotoFiles(paths, files.labels.clone(), files.classes), 4, size=16,
                         augment=AugmentConfig(rrc_scale=[0.5, 1.0]), mode="memory", seed=3, workers=1, skip_bad=True)
    assert loader.skipped == {0, 1}
    with pytest.raises(DataError, match=r"truncated[01]\.jpg.*and the next 1 files cannot be decoded either"):
        _batches(loader, 0)
