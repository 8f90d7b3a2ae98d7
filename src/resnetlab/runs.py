"""The run directory: everything a training run leaves behind (layout in ARCHITECTURE.md).

``RunDir`` only writes files (atomically); the engine decides what goes in them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from resnetlab.errors import ConfigError
from resnetlab.utils.atomic import atomic_write_text

METRIC_COLUMNS = [
    "epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
    "images_per_sec", "epoch_time_s", "elapsed_s", "skipped_steps",
]


def default_run_dir(model_name: str, name: str | None = None, root: str | Path = "runs") -> Path:
    return Path(root) / (name or f"{model_name}-{time.strftime('%Y%m%d-%H%M%S')}")


class RunDir:
    """``runs/<name>/``: config.yaml, metrics.jsonl/.csv, checkpoints/, model file, summary, env, curves."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    def create(self) -> "RunDir":
        """Make a fresh run directory; refuses one that already holds a run."""
        if self.config_path.exists():
            raise ConfigError(f"run directory {self.path} already holds a run: continue it with --resume {self.path} or choose another --run-dir")
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return self

    # metrics
    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a crash: everything after it is not trusted
        return rows

    def write_metrics(self, rows: list[dict]) -> None:
        """Rewrite metrics.jsonl and metrics.csv from ``rows`` (small: one row per epoch)."""
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        buffer = io.StringIO()
        columns = METRIC_COLUMNS + sorted({k for r in rows for k in r} - set(METRIC_COLUMNS))
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path / "metrics.csv", buffer.getvalue())

    def append_metrics(self, row: dict) -> None:
        self.write_metrics(self.read_metrics() + [row])

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (written after the checkpoint a resume starts from)."""
        rows = self.read_metrics()
        kept = [r for r in rows if r.get("epoch", 0) <= last_epoch]
        if len(kept) != len(rows):
            self.write_metrics(kept)

    def truncate_jsonl(self, name: str, last_step: int) -> None:
        """Drop per-step records past ``last_step`` from ``name`` (steps.jsonl, grad_norms.jsonl)."""
        path = self.path / name
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if record.get("step", 0) < last_step:
                kept.append(line + "\n")
        atomic_write_text(path, "".join(kept))

    def append_jsonl(self, name: str, records: list[dict]) -> None:
        if not records:
            return
        with open(self.path / name, "a") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")

    # other records
    def write_json(self, name: str, data: dict) -> None:
        atomic_write_text(self.path / name, json.dumps(data, indent=2, default=str) + "\n")

    def write_env(self, device: str, seed: int, world_size: int = 1) -> None:
        self.write_json("env.json", environment_record(device, seed, world_size))

    def plot_curves(self, rows: list[dict]) -> Path | None:
        """curves.png: loss and accuracy per epoch (train and validation) and the learning rate."""
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            axes[0].plot(epochs, [r.get(key) for r in rows], style, label=key.replace("_", " "))
        for key, style in (("train_acc", "-"), ("val_acc", "--")):
            axes[1].plot(epochs, [r.get(key) for r in rows], style, label=key.replace("_", " "))
        axes[2].plot(epochs, [r.get("lr") for r in rows])
        for ax, title in zip(axes, ("loss", "accuracy", "learning rate (end of epoch)")):
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0].legend()
        axes[1].legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        from resnetlab.utils.atomic import atomic_write_bytes

        path = self.path / "curves.png"
        atomic_write_bytes(path, buffer.getvalue())
        return path


def environment_record(device: str, seed: int, world_size: int = 1) -> dict:
    import numpy
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    from importlib import metadata

    for name in ("torchvision", "resnetlab"):  # metadata, not import: importing torchvision costs seconds
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - optional
            pass
    info = {
        "versions": versions,
        "device": device,
        "device_name": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "git_commit": _git_commit(),
        "seed": seed,
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return info


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
