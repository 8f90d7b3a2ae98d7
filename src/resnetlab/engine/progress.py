"""Per-epoch progress: a live rich bar on a terminal, nothing (one line per epoch) otherwise."""

from __future__ import annotations

import sys
import time


class EpochProgress:
    """A context manager fed one record per step; shows loss, accuracy, images/s and ETA."""

    def __init__(self, epoch: int, steps_per_epoch: int, start_batch: int = 0, enabled: bool = True):
        self.enabled = enabled and sys.stdout.isatty()
        self.epoch = epoch
        self.total = steps_per_epoch
        self.start_batch = start_batch
        self._bar = None
        self._loss = self._correct = self._seen = 0.0

    def __enter__(self) -> "EpochProgress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(f"epoch {self.epoch + 1}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start_batch, stats="")
        self._start = time.perf_counter()
        return self

    def update(self, record: dict) -> None:
        if self._bar is None:
            return
        self._seen += record["seen"]
        self._correct += record["correct"]
        self._loss += record["loss"] * record["seen"]
        rate = self._seen / max(time.perf_counter() - self._start, 1e-9)
        stats = f"loss {self._loss / self._seen:.4f} acc {100 * self._correct / self._seen:.1f}% {rate:.0f} img/s"
        self._bar.update(self._task, advance=1, stats=stats)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
