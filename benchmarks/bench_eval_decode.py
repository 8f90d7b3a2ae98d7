"""Validation decode of a photo folder (``data.photo.eval_imageset``): one process vs one worker per core.

    python benchmarks/bench_photo_stream.py generate --count 1000   # data-local/photo-bench, 1-MP JPEGs
    python benchmarks/bench_eval_decode.py --size 160 --repeats 3

The photo path decodes the validation split once at the evaluation geometry (resize, centre crop
with crop_pct 0.875) before training. Alternating runs, median of the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from resnetlab.data.imageset import ImageSet
from resnetlab.data.photo import default_workers, eval_imageset

FOLDER = Path(__file__).resolve().parent.parent / "data-local" / "photo-bench" / "train"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    paths = sorted(str(p) for p in FOLDER.rglob("*.jpg"))
    if not paths:
        raise SystemExit(f"no JPEGs under {FOLDER}: run bench_photo_stream.py generate first")
    images = ImageSet(images=None, labels=torch.zeros(len(paths), dtype=torch.long), classes=["x"], source=str(FOLDER),
                      paths=paths)
    cores = default_workers()
    times: dict[int, list[float]] = {1: [], cores: []}
    for _ in range(args.repeats):
        for workers in times:
            start = time.perf_counter()
            decoded = eval_imageset(images, args.size, 0.875, workers=workers)
            times[workers].append(time.perf_counter() - start)
            assert len(decoded) == len(paths)
    for workers, values in times.items():
        median = statistics.median(values)
        print(f"{workers} process(es): median {median:.2f} s ({len(paths) / median:.0f} img/s) over "
              f"{', '.join(f'{v:.2f}' for v in values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
