"""Batch size, learning rate and drop_last that fit the training set's size (issue 23).

The recipes' batch of 128 with the last partial batch dropped suits CIFAR (45,000 images: 351
steps per epoch, 0.2% of the images left out per epoch). On a folder of 245 photos the same
settings give one step per epoch that sees 128 images: the model stays at chance. So, when the
user set neither (``small_data: batch+lr`` as ``build_config`` resolves it):

- the batch shrinks to a power of two giving at least ``MIN_STEPS`` steps per epoch, never below
  ``MIN_BATCH`` (nor above the configured one, so CIFAR-size data keeps its recipe unchanged);
- the learning rate follows the batch linearly (Goyal et al. 2017, "linear scaling rule");
- the last partial batch is kept when dropping it would hide more than ``MAX_DROPPED`` of the data.

``small_data: batch`` adapts the batch but keeps the user's lr; ``off`` changes nothing but still
warns about too few steps or a large dropped share. ``applied`` is what the run directory records
once the values above were resolved, so ``--resume`` never adapts twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from resnetlab.config import TrainConfig

log = logging.getLogger(__name__)

MIN_STEPS = 16  # steps per epoch the adapted batch aims for
MIN_BATCH = 16  # BatchNorm statistics get noisy below this
FEW_STEPS = 10  # fewer steps per epoch than this earn a warning
MAX_DROPPED = 0.05  # largest share of the training set the dropped last batch may hide


@dataclass
class Batching:
    """What :func:`resolve_batching` decided, and the line that says so (None: nothing changed)."""

    batch_size: int
    lr: float
    drop_last: bool
    steps_per_epoch: int
    message: str | None = None
    warnings: tuple[str, ...] = ()


def adapted_batch(n: int, configured: int, world_size: int = 1) -> int:
    """Largest power of two <= n / MIN_STEPS, at least MIN_BATCH, at most ``configured``, a multiple of ``world_size``."""
    batch = MIN_BATCH
    while batch * 2 * MIN_STEPS <= n:
        batch *= 2
    batch = min(batch, configured, n)
    return max(world_size, batch - batch % world_size)


def _dropped(n: int, batch: int) -> int:
    return n % batch if n >= batch else 0


def resolve_batching(config: TrainConfig, n: int, world_size: int = 1, *, say_lr: bool = True) -> Batching:
    """Decide batch size, lr and drop_last for ``n`` training images; write them into ``config``.

    ``config`` is changed in place (the caller records it as ``config.yaml``). ``say_lr=False``
    leaves the lr out of the message (the lr range test varies it anyway).
    """
    mode = config.small_data
    batch, lr = config.batch_size, config.optim.lr
    message = None
    if mode in ("batch+lr", "batch"):
        new_batch = adapted_batch(n, batch, world_size)
        if new_batch != batch:
            new_lr = lr * new_batch / batch if mode == "batch+lr" else lr
            lr_text = "" if not say_lr else f", lr {lr:g} -> {new_lr:g} (scaled with the batch)" if mode == "batch+lr" else f", lr {lr:g} (yours)"
            message = (f"small data: {n} training images, so batch {batch} -> {new_batch}{lr_text}; "
                       f"set {'--batch-size/--lr' if say_lr else '--batch-size'} to choose {'them' if say_lr else 'it'}")
            batch, lr = new_batch, new_lr
        config.small_data = "applied"
    drop_last = config.drop_last
    if drop_last == "auto":
        rest = _dropped(n, batch)
        # A last batch of one image cannot train BatchNorm; otherwise keep it when it is a large share.
        drop_last = not (rest > 1 and rest > MAX_DROPPED * n)
        if not drop_last and message is not None:
            message += f"; the last partial batch ({rest} images) is kept"
    config.batch_size, config.optim.lr, config.drop_last = batch, lr, drop_last
    steps = n // batch if drop_last else -(-n // batch)
    warnings = []
    if steps < FEW_STEPS:
        smaller = adapted_batch(n, batch, world_size)
        advice = (f"lower --batch-size (e.g. {smaller})" if smaller < batch
                  else "the training set is very small: expect a weak model, and compare it with the majority baseline")
        warnings.append(f"only {steps} step(s) per epoch ({n} training images, batch {batch}): too few to train well; {advice}")
    if drop_last and _dropped(n, batch) > MAX_DROPPED * n:
        warnings.append(f"batch {batch} with drop_last leaves out {_dropped(n, batch)} of {n} training images "
                        "every epoch; choose a batch size that divides it, or --set drop_last=false")
    return Batching(batch, lr, drop_last, steps, message, tuple(warnings))


def announce(batching: Batching, is_main: bool = True) -> None:
    """Print the one line saying what was adapted, and log the warnings (rank 0 only under DDP)."""
    if not is_main:
        return
    if batching.message:
        print(batching.message, flush=True)
    for warning in batching.warnings:
        log.warning("warning: %s", warning)


def baseline_summary(splits, best_val_acc: float | None, test_acc: float | None, split_name: str) -> dict:
    """summary.json's majority-class baselines and the verdict on the run's held-out accuracy.

    The baseline of each split is that split's own most common class (what a constant predictor
    scores there); the verdict judges ``test_acc`` (else the best validation accuracy).
    """
    from resnetlab.stats import baseline_verdict, majority_baseline

    held_out = splits.test if split_name == "test" else splits.val
    baselines = {name: majority_baseline(part.labels.numpy(), part.classes)
                 for name, part in (("val", splits.val), (split_name, held_out)) if part is not None and len(part) > 0}
    judged, judged_split = (test_acc, split_name) if test_acc is not None else (best_val_acc, "val")
    verdict = baseline_verdict(judged, baselines.get(judged_split))
    return {"majority_baseline": baselines,
            "baseline_verdict": None if verdict is None else {"split": judged_split, **verdict}}


def done_note(summary: dict) -> str:
    """The done line's words on the baseline: '' when unknown."""
    verdict = summary.get("baseline_verdict")
    return "" if not verdict else f" ({verdict['text']})"
