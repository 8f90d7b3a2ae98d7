"""The transfer measurement: does fine-tuning beat training from scratch with few labels?

Protocol (CIFAR-10 from the JPEG archive or any 10-class DATA):
1. Pretrain ``model`` on classes 0-4 (``pretrain_per_class`` images each).
2. On classes 5-9, draw ``shots`` training images per class (seeded); hold out ``test_per_class``
   images per class as the test split (never seen by either arm) and ``val_per_class`` for model
   selection (the same for both arms).
3. Arm "finetune": ``resnetlab finetune`` from the pretrained run directory (new head, full strategy).
   Arm "scratch": ``resnetlab train`` of the same architecture on the same images, same epochs,
   same batch size, same augmentation.
4. Repeat over seeds (each seed redraws the few-shot training images and re-initialises the head /
   the scratch model); report mean and spread of the test accuracy.

    python -m resnetlab.finetune.transfer --data ../shared/data/cifar10-jpeg-train.tar.gz --out runs/transfer
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from resnetlab.data import DataSplits, ImageSet, load_splits

FIRST, SECOND = range(0, 5), range(5, 10)


def class_subset(images: ImageSet, classes: range, per_class: list[torch.Tensor]) -> ImageSet:
    """The given rows of ``classes``, relabelled 0..len(classes)-1, with their own mean/std."""
    rows = torch.cat(per_class)
    labels = torch.cat([torch.full((len(idx),), i, dtype=torch.long) for i, idx in enumerate(per_class)])
    pixels = images.images[rows]
    x = pixels.float().div(255).reshape(-1, 3)
    return ImageSet(pixels, labels, [images.classes[c] for c in classes], tuple(x.mean(0).tolist()), tuple(x.std(0).tolist()),
                    source=f"{images.source} classes {classes.start}-{classes.stop - 1}")


def shuffled_rows(images: ImageSet, classes: range, seed: int) -> list[torch.Tensor]:
    """Per class, the row indices of its images in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.nonzero(images.labels == c).flatten() for c in classes]
    return [r[torch.randperm(len(r), generator=g)] for r in rows]


def draw(images: ImageSet, classes: range, rows: list[torch.Tensor], sizes: list[int]) -> list[ImageSet]:
    """Consecutive, disjoint per-class slices of ``rows``; later sets share the first one's mean/std."""
    subsets, start = [], 0
    for size in sizes:
        subsets.append(class_subset(images, classes, [r[start : start + size] for r in rows]))
        start += size
    for subset in subsets[1:]:
        subset.mean, subset.std = subsets[0].mean, subsets[0].std
    return subsets


def run_transfer(data: str, out: str | Path, *, model: str = "resnet20", pretrain_per_class: int = 1000,
                 pretrain_epochs: int = 10, shots: int = 20, epochs: int = 30, val_per_class: int = 20,
                 test_per_class: int = 500, seeds: tuple[int, ...] = (0, 1, 2), device: str = "auto") -> dict:
    from resnetlab.engine import train
    from resnetlab.evaluation import evaluate_model
    from resnetlab.finetune.run import build_config as finetune_config, finetune
    from resnetlab.config import build_config

    out = Path(out)
    started = time.perf_counter()
    everything = load_splits(data, val_size=0).train
    common = {"device": device, "augment": {"crop_padding": 4, "flip": True}, "keep_last": 1}

    pre_train, pre_val = draw(everything, FIRST, shuffled_rows(everything, FIRST, seed=1234), [pretrain_per_class, 100])
    pre_run = out / "pretrain"
    if not (pre_run / "model.safetensors").exists():
        config = build_config({**common, "model": {"name": model}, "epochs": pretrain_epochs, "batch_size": min(128, len(pre_train) // 2),
                               "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                               "schedule": {"name": "cosine", "warmup": 1}, "run_dir": str(pre_run)})
        train(config, splits=DataSplits(pre_train, pre_val, None, "pretrain"), final_report=evaluate_model)
    pretrain = json.loads((pre_run / "summary.json").read_text())

    # One fixed test split (the first test_per_class of each target class); the few-shot train and
    # val images are drawn per seed from the rest, so no test image is ever trained on or selected with.
    target_rows = shuffled_rows(everything, SECOND, seed=999)
    test = draw(everything, SECOND, target_rows, [test_per_class])[0]
    pool = [r[test_per_class:] for r in target_rows]
    results = {"finetune": [], "scratch": []}
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        few_train, few_val = draw(everything, SECOND, [r[torch.randperm(len(r), generator=g)] for r in pool], [shots, val_per_class])
        test.mean, test.std = few_train.mean, few_train.std
        splits = DataSplits(few_train, few_val, test, f"few-shot seed {seed}")
        budget = {**common, "epochs": epochs, "batch_size": min(32, len(few_train) // 2), "seed": seed,
                  "schedule": {"name": "cosine", "warmup": 1}, "eval_batch_size": 500}
        # Each arm at its own usual lr: 0.01 for pretrained weights, 0.05 from scratch (batch 32).
        config, options = finetune_config(None, {**_dotted(budget), "optim.lr": 0.01, "finetune.source": str(pre_run),
                                                 "finetune.strategy": "full", "run_dir": str(out / f"finetune-seed{seed}")})
        results["finetune"].append(finetune(config, options, splits=splits).test_acc)
        config = build_config({**budget, "model": {"name": model}, "run_dir": str(out / f"scratch-seed{seed}"),
                               "optim": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}})
        results["scratch"].append(train(config, splits=splits, final_report=evaluate_model).test_acc)

    summary = {
        "protocol": {"data": str(data), "model": model, "pretrain_classes": [everything.classes[c] for c in FIRST],
                     "target_classes": [everything.classes[c] for c in SECOND], "pretrain_per_class": pretrain_per_class,
                     "pretrain_epochs": pretrain_epochs, "shots": shots, "val_per_class": val_per_class,
                     "test_per_class": test_per_class, "epochs": epochs, "seeds": list(seeds)},
        "pretrain_val_acc": pretrain.get("best_val_acc"),
        "test_acc": {arm: {"runs": accs, "mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0}
                     for arm, accs in results.items()},
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    (out / "transfer.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _dotted(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "options":
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/transfer")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--pretrain-per-class", type=int, default=1000)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--shots", type=int, default=20, help="training images per target class")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--test-per-class", type=int, default=500)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    summary = run_transfer(a.data, a.out, model=a.model, pretrain_per_class=a.pretrain_per_class, pretrain_epochs=a.pretrain_epochs,
                           shots=a.shots, epochs=a.epochs, test_per_class=a.test_per_class,
                           seeds=tuple(int(s) for s in a.seeds.split(",")), device=a.device)
    print(json.dumps(summary["test_acc"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
