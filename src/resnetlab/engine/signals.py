"""Graceful interruption: SIGTERM/SIGINT ask training to stop at the next step boundary.

The handler only records the request; the training loop checks it between steps, saves a
checkpoint and raises :class:`TrainingInterrupted` (the CLI exits 128 + signal number: 143 for
SIGTERM, 130 for SIGINT). A second signal while the checkpoint is written is recorded and
ignored, so it cannot leave a half-written file (the write is atomic anyway).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum = signum
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        where = f"; checkpoint saved to {checkpoint}, continue with --resume" if checkpoint else ""
        super().__init__(f"interrupted by {name}{where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Records SIGTERM/SIGINT while installed; ``signum`` is the first one received."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            log.warning("received %s: stopping at the next step boundary after saving a checkpoint", signal.Signals(signum).name)
        else:
            log.warning("received %s again: already stopping, please wait for the checkpoint", signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def installed(self):
        """Install the handlers (main thread only; elsewhere signals keep their defaults)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
