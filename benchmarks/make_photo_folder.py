"""Rebuild the small photo folder behind docs/guide.md's "Fine-tune on your photos".

    python benchmarks/make_photo_folder.py /tmp/photos [--source data-local/cifar10-jpeg/train]

Shaped like the ants/bees folder of the issue (2 classes, 245 train, 153 val) so the guide's
figures can be reproduced: each photo is a CIFAR-10 training image (the subject) upscaled to fill
70-100% of the shorter side of a canvas of 300-1600 px at an aspect of 0.5-2, on a random colour
texture, at a random place: the subject is what the photo shows, as in a photo people take, and
the folder has the mixed sizes of real photos. A few are saved as PNG, a few as grayscale, and a
few as portrait JPEGs whose pixels are stored sideways with an EXIF orientation tag (the way phones
save them), to exercise those decode paths. Never commit it.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image

CLASSES = ("bird", "cat")  # two animal classes, like ants/bees
COUNTS = {"train": (112, 133), "val": (70, 83)}  # the split sizes per class


def one_photo(source: Path, rng: random.Random) -> Image.Image:
    aspect = rng.uniform(0.5, 2.0)  # width / height
    long_side = rng.randint(300, 1600)
    w, h = (long_side, max(1, int(long_side / aspect))) if aspect >= 1 else (max(1, int(long_side * aspect)), long_side)
    # Background: smooth colour blobs (a few random colours upsampled), like an out-of-focus scene.
    blobs = Image.new("RGB", (4, 3))
    blobs.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(12)])
    canvas = blobs.resize((w, h), Image.BICUBIC)
    side = max(1, int(min(w, h) * rng.uniform(0.7, 1.0)))
    subject = Image.open(source).convert("RGB").resize((side, side), Image.BICUBIC)
    canvas.paste(subject, (rng.randint(0, w - side), rng.randint(0, h - side)))
    return canvas


def save(image: Image.Image, path: Path, kind: str) -> None:
    if kind == "png":
        image.save(path.with_suffix(".png"))
    elif kind == "gray":
        image.convert("L").save(path, quality=90)
    elif kind == "exif":
        # Stored turned 90 degrees counter-clockwise with Orientation=6 ("rotate 90 CW to display"):
        # a reader that ignores EXIF sees the object on its side.
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
    else:
        image.save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=Path("data-local/cifar10-jpeg/train"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for c, name in enumerate(CLASSES):
        files = sorted((args.source / name).glob("*.jp*g"))
        if len(files) < sum(n[c] for n in COUNTS.values()):
            raise SystemExit(f"{args.source / name}: too few images ({len(files)})")
        picked = iter(rng.sample(files, len(files)))
        for split, counts in COUNTS.items():
            folder = args.out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(counts[c]):
                kind = "png" if i % 25 == 3 else "gray" if i % 25 == 7 else "exif" if i % 25 == 11 else "jpeg"
                save(one_photo(next(picked), rng), folder / f"{name}_{i:03d}.jpg", kind)
    print(f"wrote {args.out} ({', '.join(f'{s} {sum(n)}' for s, n in COUNTS.items())} images)")


if __name__ == "__main__":
    main()
