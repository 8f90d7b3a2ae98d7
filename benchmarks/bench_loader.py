"""Augmented batches/s: resnetlab's DeviceLoader vs a standard torchvision DataLoader.

Same decoded CIFAR-10 training images (the shared JPEG archive, decoded once and cached), same
batch size, same augmentation (pad-4 random crop with zero fill, horizontal flip, normalize).
The two are measured in alternating windows in one process, so machine load hits both alike;
we report the median of the windows after a warm-up.

    .venv/bin/python benchmarks/bench_loader.py [--archive PATH] [--out benchmarks/loader.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from resnetlab.data import AugmentConfig, DeviceLoader
from resnetlab.data.folders import load_image_folder

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class ArrayDataset(Dataset):
    """The usual per-image pipeline: uint8 array -> PIL image -> torchvision transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def baseline_loader(images: np.ndarray, labels: np.ndarray, batch_size: int, workers: int) -> DataLoader:
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    return DataLoader(ArrayDataset(images, labels, transform), batch_size=batch_size, shuffle=True,
                      num_workers=workers, drop_last=True, prefetch_factor=4)


def endless(make_epoch):
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def time_window(batches, n: int) -> float:
    """Batches per second over the next n batches."""
    start = time.perf_counter()
    for _ in range(n):
        x, y = next(batches)
    assert x.shape[1:] == (3, 32, 32)
    return n / (time.perf_counter() - start)


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores usable, Python {platform.python_version()}, torch {torch.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", default=str(ARCHIVE), help="image-folder archive (default: the shared CIFAR-10 JPEGs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (baseline)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the DeviceLoader process")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per loader")
    parser.add_argument("--ours-batches", type=int, default=200, help="batches per DeviceLoader window")
    parser.add_argument("--base-batches", type=int, default=40, help="batches per DataLoader window")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches first (workers start, caches warm)")
    parser.add_argument("--out", default=None, help="write the results table (markdown) here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:  # a fresh cache: first decode, then a hit
        t0 = time.perf_counter()
        load_image_folder(args.archive, data_dir=cache)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        train = load_image_folder(args.archive, data_dir=cache)["train"]
        cached_s = time.perf_counter() - t0
    images, labels = train.images.numpy(), train.labels.numpy()
    print(f"data: {len(images)} images {images.shape[1:]} from {args.archive}: "
          f"first load (decode) {first_s:.1f} s, cached load {cached_s:.2f} s")

    ours_loader = DeviceLoader(train, args.batch_size, train=True, device="cpu", seed=0, mean=MEAN, std=STD,
                               augment=AugmentConfig(crop_padding=4, pad_mode="zeros", flip=True))
    ours = endless(ours_loader.epoch)
    base_loader = baseline_loader(images, labels, args.batch_size, args.workers)
    load_before = os.getloadavg()
    time_window(ours, args.warmup)
    ours_runs, base_runs = [], []
    for r in range(args.repeats):
        # Alternate the two so background load hits both alike. The baseline's workers are started,
        # warmed up, timed and shut down each round, so they never steal CPU from our window.
        base = iter(base_loader)
        time_window(base, args.warmup)
        base_runs.append(time_window(base, args.base_batches))
        del base
        ours_runs.append(time_window(ours, args.ours_batches))
        print(f"run {r + 1}: DataLoader {base_runs[-1]:.1f} batches/s, DeviceLoader {ours_runs[-1]:.1f} batches/s")
    load_after = os.getloadavg()
    ours_med, base_med = statistics.median(ours_runs), statistics.median(base_runs)
    ratio = ours_med / base_med
    print(f"median: DataLoader {base_med:.1f} batches/s, DeviceLoader {ours_med:.1f} batches/s, ratio {ratio:.1f}x")

    if args.out:
        command = " ".join([".venv/bin/python", "benchmarks/bench_loader.py", *sys.argv[1:]])
        fmt = lambda runs: ", ".join(f"{v:.1f}" for v in runs)  # noqa: E731
        text = f"""# Loader benchmark: DeviceLoader vs torchvision DataLoader

Augmented training batches per second on the same decoded CIFAR-10 training images (50,000 x
32x32, from the shared JPEG archive), batch {args.batch_size}, pad-4 random crop (zero fill) +
horizontal flip + normalize. Measured side by side in one run: {args.repeats} rounds, each timing
{args.base_batches} DataLoader batches (workers started and warmed up with {args.warmup} batches
first, shut down after, so they never compete with the other loader) then {args.ours_batches}
DeviceLoader batches; medians over the rounds.

- Machine: {machine()}
- Command: `{command}`
- Load average (1, 5, 15 min) before: {load_before[0]:.1f}, {load_before[1]:.1f}, {load_before[2]:.1f}; after: {load_after[0]:.1f}, {load_after[1]:.1f}, {load_after[2]:.1f}.
  Other engineers were running test suites on the same 2 cores, so absolute numbers are low
  and noisy; the alternating windows keep the comparison fair.
- Loading the archive (`load_image_folder`, fresh cache): first load, decoding all 50,000 JPEGs on
  all cores, {first_s:.1f} s; second load from the decoded-image cache {cached_s:.2f} s.

| loader | setup | median batches/s | median images/s | runs (batches/s) |
| --- | --- | ---: | ---: | --- |
| torchvision DataLoader | Dataset over the uint8 array -> PIL, RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize; num_workers={args.workers} | {base_med:.1f} | {base_med * args.batch_size:,.0f} | {fmt(base_runs)} |
| resnetlab DeviceLoader | whole set as uint8 on the device, batched crop+flip gather, normalize; {args.threads} torch thread(s), no workers | {ours_med:.1f} | {ours_med * args.batch_size:,.0f} | {fmt(ours_runs)} |

**Ratio (medians): {ratio:.1f}x** (target: at least 10x).
"""
        from resnetlab.utils.atomic import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
