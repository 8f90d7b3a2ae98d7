"""Training checkpoints: plain dicts, written atomically, verified on load.

A checkpoint is a dict saved from the *unwrapped* model (torchvision's reference-script habit) with
everything needed to continue bit-identically: optimizer, schedule state, GradScaler, EMA, the RNG
states of python/numpy/torch/CUDA, and the position in the data (epoch, batch within the epoch).

Safety (issue 8): each file is written to a temporary sibling, fsynced and renamed
(``resnetlab.utils.atomic``), so a crash or signal mid-save leaves the previous checkpoint intact;
``complete=True`` plus the list of required keys is checked on load; a model with NaN/Inf
weights is never written; only the newest ``keep_last`` ``last-*.pt`` files are kept, and resume
falls back to the newest one that loads.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import numpy as np
import torch

from resnetlab.errors import CheckpointError
from resnetlab.models.files import CHECKPOINT_KIND, load_checkpoint_dict
from resnetlab.utils.atomic import atomic_write_with, remove_stale_temporaries

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "kind", "format_version", "model", "meta", "optimizer", "schedule", "scaler", "ema", "rng",
    "epoch", "step_in_epoch", "step", "best", "config", "complete",
)
_LAST_RE = re.compile(r"^last-(\d+)\.pt$")


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict:
    """python, numpy, torch and CUDA generator states, as types ``weights_only`` loading accepts."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict, skip: list[str] | tuple = ()) -> None:
    """Put every generator back; ``skip`` exists only for the resume test's negative control."""
    if "python" not in skip:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" not in skip:
        np_state = state["numpy"]
        np.random.set_state(
            (np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["gauss"])
        )
    if "torch" not in skip:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" not in skip and state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------- save / load


def check_finite_weights(model_state: dict, where: str) -> None:
    for key, value in model_state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"refusing to write {where}: weight {key!r} has NaN/Inf values")


def save_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    """Write ``checkpoint`` atomically; refuses a model with non-finite weights."""
    path = Path(path)
    checkpoint = dict(checkpoint, kind=CHECKPOINT_KIND, format_version=FORMAT_VERSION, complete=True)
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint is missing keys {missing}")
    check_finite_weights(checkpoint["model"], str(path))
    if checkpoint.get("ema") is not None:
        check_finite_weights(checkpoint["ema"], f"{path} (EMA)")
    atomic_write_with(path, lambda handle: torch.save(checkpoint, handle))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint (``weights_only=True``) and verify it is complete."""
    checkpoint = load_checkpoint_dict(path, map_location)
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {checkpoint.get('format_version')!r}, expected {FORMAT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing or checkpoint.get("complete") is not True:
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {', '.join(missing) or 'the completeness marker'})")
    return checkpoint


class CheckpointManager:
    """``last-<step>.pt`` (newest ``keep_last`` kept) and ``best.pt`` in one directory."""

    def __init__(self, directory: str | Path, keep_last: int = 2):
        self.directory = Path(directory)
        self.keep_last = max(int(keep_last), 1)

    def last_paths(self) -> list[Path]:
        """``last-*.pt`` files, newest (highest step) first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _LAST_RE.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def remove_stale_temporaries(self) -> None:
        """Delete the partial files a process killed mid-save left behind (each as large as a checkpoint)."""
        for path in remove_stale_temporaries(self.directory):
            log.info("removed %s, a partial checkpoint left by an interrupted save", path)

    def save_last(self, checkpoint: dict) -> Path:
        self.remove_stale_temporaries()
        path = save_checkpoint(checkpoint, self.directory / f"last-{int(checkpoint['step']):08d}.pt")
        for old in self.last_paths()[self.keep_last:]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, checkpoint: dict) -> Path:
        return save_checkpoint(checkpoint, self.directory / "best.pt")

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pt"

    def newest(self) -> Path | None:
        paths = self.last_paths()
        return paths[0] if paths else None

    def load_newest_intact(self, map_location: str | torch.device = "cpu") -> tuple[dict, Path]:
        """The newest ``last-*.pt`` that loads and is complete; logs every one skipped and why.

        ``best.pt`` holds the same complete state and is written just before the ``last-*.pt`` of
        the same step, so when no ``last-*.pt`` is usable (a full disk at the first save) it is
        the newest intact state, and the run continues from it rather than being lost.
        """
        self.remove_stale_temporaries()
        paths = self.last_paths() + ([self.best_path] if self.best_path.is_file() else [])
        if not paths:
            raise CheckpointError(f"{self.directory}: no last-*.pt checkpoint to resume from (the run stopped before its "
                                  "first checkpoint): start it again with the same command without --resume; "
                                  "a run directory without checkpoints is reused")
        problems = []
        for path in paths:
            try:
                checkpoint = load_checkpoint(path, map_location)
            except CheckpointError as exc:
                problems.append(str(exc))
                log.warning("skipping unusable checkpoint: %s", exc)
                continue
            if problems:
                log.warning("resuming from %s, the newest intact checkpoint", path.name)
            return checkpoint, path
        raise CheckpointError(f"{self.directory}: no intact checkpoint ({'; '.join(problems)})")


def is_better(value: float | None, best: float | None) -> bool:
    """A finite metric beats the best so far; NaN/Inf never becomes best."""
    if value is None or not np.isfinite(value):
        return False
    return best is None or value > best
