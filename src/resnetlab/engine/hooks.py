"""``TrainHooks``: callbacks a caller passes to ``train(config, hooks=...)``.

They are code, not config: fine-tuning's gradual unfreezing uses ``on_epoch_start``, and tests use
the others for deterministic stops and fault injection (tests/helpers.py ``debug_hooks``). Nothing
here is ever written to a run's config.yaml, so a resumed run never inherits a test's stop.

Every hook is optional; ``TrainHooks()`` changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

if TYPE_CHECKING:  # only for annotations: context.py imports nothing from here at run time
    from resnetlab.engine.context import RunState, TrainContext


@dataclass(frozen=True)
class TrainHooks:
    # Before each epoch (also a resumed partial one), with the unwrapped model: e.g. to unfreeze layers.
    on_epoch_start: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None
    # After every optimizer step, with that step's record ({"step", "loss", "lr", ...}). A true
    # return stops the run at this step boundary as a signal would, after a checkpoint (at an
    # epoch's last step: after its evaluation), and train() returns with completed=False.
    after_step: Callable[["TrainContext", "RunState", dict], bool | None] | None = None
    # Just before each checkpoint is written (rank 0).
    before_save: Callable[["TrainContext", "RunState"], None] | None = None
    # (step, loss) -> loss, for each forward pass's loss before its backward.
    on_loss: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    # Random generators (python, numpy, torch, cuda) a resume leaves as they are instead of
    # restoring them from the checkpoint: the resume test's negative control.
    skip_rng_restore: tuple[str, ...] = ()


def with_epoch_start(hooks: TrainHooks | None, on_epoch_start) -> TrainHooks:
    """``hooks`` plus ``on_epoch_start``, which runs after the caller's own one, if any."""
    hooks = hooks or TrainHooks()
    first = hooks.on_epoch_start
    if first is None:
        return replace(hooks, on_epoch_start=on_epoch_start)

    def both(*args) -> None:
        first(*args)
        on_epoch_start(*args)

    return replace(hooks, on_epoch_start=both)
