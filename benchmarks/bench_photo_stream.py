"""Photo path in stream mode vs torchvision's reference pipeline: training images/s and peak RSS.

1. ``generate``: a folder of ~1-megapixel JPEGs (1152x864), each a CIFAR-10 training image upscaled
   (x9-x20) onto a random textured canvas, class = the CIFAR class. Written once into the git-ignored
   data-local/photo-bench/ in chunks of 500: each chunk is written to a temporary folder and renamed
   when complete, so an interrupted or concurrent generation never leaves half a chunk, and a rerun
   only writes the missing chunks. Generation time is measured and printed on its own.
2. ``bench``: the same model (resnet18, random init), the same batch size and image size, trained for
   a fixed number of steps from (a) resnetlab's PhotoLoader in stream mode (RandomResizedCrop +
   flip, DataLoader workers decoding the files) and (b) torchvision's reference: ImageFolder +
   RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize + DataLoader workers. The two
   alternate in repeats within one run, each going first in every other repeat (machine load hits both alike); the median images/s is
   reported. Peak memory is sampled every 50 ms over this process and its children (the loader
   workers included): the sum of PSS (shared pages split between the processes sharing them: the
   memory the tree really holds) and the sum of VmRSS (counts the pages forked workers share with
   the parent once per process, so it over-states the total).

    .venv/bin/python benchmarks/bench_photo_stream.py generate --count 20000
    .venv/bin/python benchmarks/bench_photo_stream.py bench --size 160 --batch 32 --steps 20 --repeats 3
    .venv/bin/python benchmarks/bench_photo_stream.py per-image   # CPU cost per sample, no training
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "data-local" / "cifar10-jpeg" / "train"
TARGET = REPO / "data-local" / "photo-bench"
CHUNK = 500
CANVAS = (1152, 864)  # ~1.0 megapixel, 4:3


# --------------------------------------------------------------------------- generation
def _sources() -> list[tuple[Path, str]]:
    if not SOURCE.is_dir():
        sys.exit(f"{SOURCE}: missing; extract ../shared/data/cifar10-jpeg-train.tar.gz there first")
    return [(p, c.name) for c in sorted(SOURCE.iterdir()) if c.is_dir() for p in sorted(c.iterdir())]


def _texture(rng: np.random.Generator) -> Image.Image:
    """A JPEG-realistic background: smooth colour blobs (upsampled noise) plus fine grain."""
    low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(low).resize(CANVAS, Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-18, 19, (CANVAS[1], CANVAS[0], 1), dtype=np.int16)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def _write_chunk(args: tuple[int, list[tuple[Path, str]]]) -> int:
    index, items = args
    done = TARGET / f".chunk-{index:04d}.done"
    if done.exists():
        return 0
    tmp = TARGET / f".tmp-chunk-{index:04d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(index)
    for i, (src, cls) in enumerate(items):
        canvas = _texture(rng)
        side = int(rng.integers(288, 641))  # the CIFAR picture covers 1/3 to 3/4 of the height
        picture = Image.open(src).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        canvas.paste(picture, (int(rng.integers(0, CANVAS[0] - side)), int(rng.integers(0, CANVAS[1] - side))))
        (tmp / cls).mkdir(parents=True, exist_ok=True)
        canvas.save(tmp / cls / f"{index:04d}-{i:04d}.jpg", quality=int(rng.integers(80, 93)))
    for cls_dir in tmp.iterdir():  # move the finished chunk in, then mark it done
        (TARGET / "train" / cls_dir.name).mkdir(parents=True, exist_ok=True)
        for f in cls_dir.iterdir():
            os.replace(f, TARGET / "train" / cls_dir.name / f.name)
    shutil.rmtree(tmp, ignore_errors=True)
    done.touch()
    return len(items)


def generate(count: int, workers: int) -> None:
    import multiprocessing

    sources = _sources()[:count]
    if len(sources) < count:
        sys.exit(f"only {len(sources)} source images under {SOURCE}")
    TARGET.mkdir(parents=True, exist_ok=True)
    chunks = [(i // CHUNK, sources[i:i + CHUNK]) for i in range(0, count, CHUNK)]
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        written = sum(pool.imap_unordered(_write_chunk, chunks))
    elapsed = time.perf_counter() - start
    total = sum(1 for _ in (TARGET / "train").rglob("*.jpg"))
    size = sum(f.stat().st_size for f in (TARGET / "train").rglob("*.jpg"))
    print(f"generate: wrote {written} images in {elapsed:.1f} s ({written / max(elapsed, 1e-9):.1f} img/s, {workers} "
          f"processes); folder holds {total} images, {size / 2**30:.2f} GiB, {CANVAS[0]}x{CANVAS[1]} JPEG")


# --------------------------------------------------------------------------- measuring
class PeakRSS:
    """Largest sums of PSS and of VmRSS over this process and its descendants, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak, self.peak_pss, self._stop = interval, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = tree_rss(os.getpid())
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            time.sleep(self.interval)


def tree_rss(pid: int) -> tuple[int, int]:
    """(sum of VmRSS, sum of PSS) in bytes over ``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    total, pss, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total, pss


def train_steps(model, batches, steps: int, optimizer) -> tuple[float, int]:
    """Images/s over ``steps`` SGD steps after one warm-up step (worker start-up excluded)."""
    criterion = torch.nn.CrossEntropyLoss()
    it = iter(batches)
    seen, start = 0, None
    for step in range(steps + 1):
        x, y = next(it)
        if step == 1:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()
        if step >= 1:
            seen += len(y)
    return seen / (time.perf_counter() - start), seen


def bench(size: int, batch: int, steps: int, repeats: int, workers: int) -> None:
    from torchvision import datasets, transforms

    from resnetlab.data.augment import AugmentConfig
    from resnetlab.data.photo import PhotoFiles, PhotoLoader
    from resnetlab.models import create_model

    root = TARGET / "train"
    reference_set = datasets.ImageFolder(str(root), transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]))
    files = PhotoFiles([p for p, _ in reference_set.samples], torch.tensor(reference_set.targets), reference_set.classes)
    print(f"bench: {len(files.paths)} images in {root}, resnet18 at {size}px, batch {batch}, {steps} steps x {repeats} "
          f"repeats, {workers} loader workers, torch threads {torch.get_num_threads()}")
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=len(files.classes)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    results: dict[str, list[float]] = {"resnetlab stream": [], "torchvision reference": []}
    peaks, peaks_pss = dict.fromkeys(results, 0), dict.fromkeys(results, 0)
    for r in range(repeats):
        for name in (list(results) if r % 2 == 0 else list(results)[::-1]):  # alternate who goes first
            with PeakRSS() as rss:
                if name == "resnetlab stream":
                    loader = PhotoLoader(files, batch, size=size, augment=AugmentConfig(rrc_scale=[0.08, 1.0], flip=True),
                                         mode="stream", seed=r, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                         workers=workers)
                    rate, _ = train_steps(model, loader.epoch(r), steps, optimizer)
                    loader.close()
                else:
                    loader = torch.utils.data.DataLoader(reference_set, batch_size=batch, shuffle=True, drop_last=True,
                                                         num_workers=workers, persistent_workers=False)
                    rate, _ = train_steps(model, loader, steps, optimizer)
                    del loader
            results[name].append(rate)
            peaks[name], peaks_pss[name] = max(peaks[name], rss.peak), max(peaks_pss[name], rss.peak_pss)
            print(f"  repeat {r + 1} {name}: {rate:.1f} img/s, peak PSS {rss.peak_pss / 2**30:.2f} GiB, "
                  f"peak RSS sum {rss.peak / 2**30:.2f} GiB", flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name, rates in results.items():
        print(f"{name}: median {statistics.median(rates):.1f} img/s (repeats {', '.join(f'{v:.1f}' for v in rates)}), "
              f"peak PSS {peaks_pss[name] / 2**30:.2f} GiB, peak RSS sum {peaks[name] / 2**30:.2f} GiB")


def per_image(size: int, count: int, repeats: int) -> None:
    """One sample at a time in this process on one thread: the CPU cost of each pipeline per image."""
    from torchvision import datasets, transforms

    from resnetlab.data.augment import AugmentConfig
    from resnetlab.data.photo import PhotoFiles, PhotoLoader

    torch.set_num_threads(1)
    reference = datasets.ImageFolder(str(TARGET / "train"), transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]))
    files = PhotoFiles([p for p, _ in reference.samples], torch.tensor(reference.targets), reference.classes)
    ours = PhotoLoader(files, 32, size=size, augment=AugmentConfig(rrc_scale=[0.08, 1.0], flip=True), mode="stream",
                       workers=1)
    n = len(files.paths)
    for r in range(repeats):
        picks = [(i * 37 + r) % n for i in range(count)]
        start = time.perf_counter()
        for i in picks:
            reference[i]
        a = count / (time.perf_counter() - start)
        start = time.perf_counter()
        for k, i in enumerate(picks):
            ours._samples[(i, r, k)]
        b = count / (time.perf_counter() - start)
        print(f"per-image, one thread: torchvision {a:.0f} img/s, resnetlab {b:.0f} img/s", flush=True)
    ours.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--count", type=int, default=20000)
    g.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    b = sub.add_parser("bench")
    b.add_argument("--size", type=int, default=160)
    b.add_argument("--batch", type=int, default=32)
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    c = sub.add_parser("per-image")
    c.add_argument("--size", type=int, default=160)
    c.add_argument("--count", type=int, default=48)
    c.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.count, args.workers)
    elif args.command == "per-image":
        per_image(args.size, args.count, args.repeats)
    else:
        bench(args.size, args.batch, args.steps, args.repeats, args.workers)


if __name__ == "__main__":
    main()
