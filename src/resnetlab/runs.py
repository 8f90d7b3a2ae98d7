"""The run directory: everything a training run leaves behind (layout in ARCHITECTURE.md).

``RunDir`` writes files (atomically; the engine decides what goes in them) and is the one reader of
them for every other module.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from resnetlab.errors import ConfigError, DataError
from resnetlab.utils.atomic import atomic_write_text, remove_stale_temporaries

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
    "images_per_sec", "epoch_time_s", "elapsed_s", "skipped_steps",
]


# Records an attempt that failed before its first checkpoint may have left; a reuse starts them afresh.
STALE_RECORDS = ("metrics.jsonl", "metrics.csv", "steps.jsonl", "grad_norms.jsonl", "summary.json", "curves.png")


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

    def holds_run(self) -> bool:
        """True when the directory holds a run worth keeping: a checkpoint or a model file."""
        if self.model_path.exists():
            return True
        try:
            return any(p.suffix == ".pt" for p in self.checkpoints.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return False

    def create(self, files: dict[str, str]) -> "RunDir":
        """Make the run directory holding ``files`` (name -> text) and ``checkpoints/``, all or nothing.

        A new directory is assembled under a temporary sibling and renamed into place, so a failure
        (a full disk, a read-only parent) leaves no stub for the retry to trip over. An existing
        directory without a checkpoint or model file (a run that failed before its first
        checkpoint, or an empty folder) is reused; one with either is refused.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run directory {self.path}: exists and is not a directory; choose another --run-dir")
        if self.holds_run():
            raise ConfigError(f"run directory {self.path} already holds a run: continue it with --resume {self.path} or choose another --run-dir")
        if self.path.is_dir():
            if self.config_path.exists():  # an attempt that stopped before its first checkpoint
                log.warning("reusing %s: it holds no checkpoint (an earlier attempt stopped before its first one)", self.path)
                for name in STALE_RECORDS:  # its rows must not mix with this run's
                    (self.path / name).unlink(missing_ok=True)
            self.checkpoints.mkdir(exist_ok=True)
            for directory in (self.path, self.checkpoints):
                remove_stale_temporaries(directory)
            for name, text in files.items():
                atomic_write_text(self.path / name, text)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.{os.getpid()}.", suffix=".tmp", dir=self.path.parent))
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        try:
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700; a run directory is an ordinary one
            (staging / "checkpoints").mkdir()
            for name, text in files.items():
                try:
                    atomic_write_text(staging / name, text)
                except OSError as exc:  # name the file the user will look for, not the staging one
                    raise OSError(exc.errno, exc.strerror, str(self.path / name)) from exc
            try:
                os.rename(staging, self.path)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise ConfigError(f"run directory {self.path} was created by another process meanwhile; choose another --run-dir") from exc
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self

    # reading: every module that looks into a run (compare, evaluate, experiments, finetune) goes through these
    @classmethod
    def find(cls, path: str | Path) -> "RunDir | None":
        """The run directory holding ``path`` (itself, its model file, or a checkpoint under checkpoints/)."""
        path = Path(path)
        for candidate in (path, path.parent, path.parent.parent):
            if candidate.is_dir() and (candidate / "config.yaml").is_file():
                return cls(candidate)
        return None

    def is_run(self) -> bool:
        """True when any of the engine's records is there (a finished, running or failed run)."""
        return any((self.path / name).is_file() for name in ("summary.json", "metrics.jsonl", "config.yaml"))

    @property
    def model_path(self) -> Path:
        return self.path / "model.safetensors"

    def read_config(self) -> dict:
        """config.yaml as written (a plain dict; {} when absent). Not validated: old runs stay readable."""
        if not self.config_path.is_file():
            return {}
        try:
            config = yaml.safe_load(self.config_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{self.config_path}: unreadable run config ({exc})") from exc
        return config if isinstance(config, dict) else {}

    def read_json(self, name: str) -> dict | None:
        """A JSON object under the run (``summary.json``, ``eval/metrics.json``); None when absent."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: unreadable JSON ({exc})") from exc
        return data if isinstance(data, dict) else None

    def read_summary(self) -> dict:
        return self.read_json("summary.json") or {}

    def read_eval(self) -> dict | None:
        """The test split's evaluation report (eval/metrics.json), when the run made one."""
        return self.read_json("eval/metrics.json")

    def read_predictions(self) -> list[dict] | None:
        """The per-image rows of the test report (eval/predictions.csv: index, path, true, predicted,
        confidence, correct); None unless the report is complete (its metrics.json is written last)."""
        path = self.eval_dir / "predictions.csv"
        if not (self.eval_dir / "metrics.json").is_file() or not path.is_file():
            return None
        try:
            rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path}: unreadable per-image predictions ({exc})") from exc
        if rows and not {"index", "path", "correct"} <= set(rows[0]):
            raise DataError(f"{path}: not a resnetlab predictions file (needs the columns index, path and correct)")
        return rows

    def read_jsonl(self, name: str) -> list[dict]:
        """The records of ``name`` (metrics.jsonl, grad_norms.jsonl) up to the first line cut by a crash."""
        path = self.path / name
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a crash: everything after it is not trusted
        return records

    # metrics
    def read_metrics(self) -> list[dict]:
        return self.read_jsonl("metrics.jsonl")

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
        atomic_write_text(self.path / name, self.json_text(data))

    def write_env(self, device: str, seed: int, world_size: int = 1) -> None:
        self.write_json("env.json", environment_record(device, seed, world_size))

    @staticmethod
    def json_text(data: dict) -> str:
        """How ``write_json`` lays out a record (for files handed to ``create``)."""
        return json.dumps(data, indent=2, default=str) + "\n"

    def plot_curves(self, rows: list[dict]) -> Path | None:
        """curves.png: loss and accuracy per epoch (train and validation) and the learning rate."""
        if not rows:
            return None
        from resnetlab.utils.figures import plt, png_bytes

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
        from resnetlab.utils.atomic import atomic_write_bytes

        path = self.path / "curves.png"
        atomic_write_bytes(path, png_bytes(fig, dpi=110, tight=False))
        return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
