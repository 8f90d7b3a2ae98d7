"""Planted cross-split duplicates on real CIFAR-10 images: recall of each kind of copy and the
matches of unrelated images, for ``resnetlab data audit DATA --against OTHER``.

DATA: every class folder of the training JPEGs except the last ``--held-out`` files of each class
(linked, not copied). OTHER: ``--per-kind`` copies of seeded DATA images for each kind of change
(JPEG re-encoded at q=60; moved 1 px with a reflected edge; re-cropped 31x31 and resized back to
32x32; brightness +30), plus the held-out images unchanged (not in DATA: any match of theirs is
either a real CIFAR near-duplicate or a false positive; the script lists them for a look).

    .venv/bin/python benchmarks/bench_audit_planted.py [--data data-local/cifar10-jpeg/train]
        [--model ../shared/weights/resnet32-d509ac18.th] [--json benchmarks/results/audit-planted.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from resnetlab.audit import AuditOptions, audit_data

REPO = Path(__file__).resolve().parents[1]

KINDS = {
    "jpeg_q60": lambda a: a,  # saved at quality 60 below
    "shift_1px": lambda a: np.pad(a, ((1, 0), (1, 0), (0, 0)), mode="reflect")[:-1, :-1],
    "recrop_31": lambda a: np.asarray(Image.fromarray(a[1:, 1:]).resize(a.shape[1::-1], Image.Resampling.BICUBIC)),
    "brightness_+30": lambda a: np.clip(a.astype(np.int16) + 30, 0, 255).astype(np.uint8),
}


def build(src: Path, root: Path, per_kind: int, held_out: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    data, other = root / "data", root / "other"
    kept, held = [], []
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        (data / folder.name).mkdir(parents=True)
        (other / folder.name).mkdir(parents=True, exist_ok=True)
        for f in files[:-held_out]:
            os.symlink(f.resolve(), data / folder.name / f.name)
            kept.append(f"{folder.name}/{f.name}")
        held += [f for f in files[-held_out:]]
    truth = {}
    picks = rng.choice(len(kept), per_kind * len(KINDS), replace=False)
    for k, (kind, change) in enumerate(KINDS.items()):
        for n, pick in enumerate(picks[k * per_kind:(k + 1) * per_kind]):
            name = kept[pick]
            image = np.asarray(Image.open(data / name).convert("RGB"))
            target = f"{name.split('/')[0]}/{kind}_{n}.jpg"
            Image.fromarray(change(image)).save(other / target, quality=60 if kind == "jpeg_q60" else 95)
            truth[target] = (kind, name)
    for f in held:
        os.symlink(f.resolve(), other / f.parent.name / f"held_{f.name}")
    return {"truth": truth, "held": len(held), "data_images": len(kept)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO / "data-local" / "cifar10-jpeg" / "train"))
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--held-out", type=int, default=100, help="files per class kept out of DATA")
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        built = build(Path(args.data), Path(tmp), args.per_kind, args.held_out, args.seed)
        start = time.perf_counter()
        audit = audit_data(str(Path(tmp) / "data"), Path(tmp) / "out", against=str(Path(tmp) / "other"),
                           options=AuditOptions(label_errors=False, model=args.model))
        wall = time.perf_counter() - start
        cross = [p for p in audit["duplicates"]["pairs_listed"] if p["a"]["split"] != p["b"]["split"]]
    truth = built["truth"]
    found_by_copy: dict[str, set[str]] = {}
    for p in cross:
        ours, theirs = (p["a"], p["b"]) if p["b"]["name"].startswith("other/") else (p["b"], p["a"])
        found_by_copy.setdefault(theirs["name"].removeprefix("other/"), set()).add(ours["name"])
    recall = {kind: sum(1 for t, (k, src) in truth.items() if k == kind and src in found_by_copy.get(t, ()))
              for kind in KINDS}
    planted_wrong = sum(1 for t in truth if t in found_by_copy and truth[t][1] not in found_by_copy[t])
    held_matched = sorted(t for t in found_by_copy if t.split("/")[1].startswith("held_"))
    result = {
        "command": "python benchmarks/bench_audit_planted.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "machine": f"{platform.machine()}, {os.cpu_count()} vCPUs", "data_images": built["data_images"],
        "planted_per_kind": args.per_kind, "recall": {k: v / args.per_kind for k, v in recall.items()},
        "planted_matched_to_a_wrong_source": planted_wrong,
        "held_out_images": built["held"], "held_out_matched": len(held_matched), "held_out_matched_names": held_matched[:50],
        "thresholds": audit["duplicates"]["thresholds"], "cross_pairs": len(cross), "wall_s": round(wall, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
