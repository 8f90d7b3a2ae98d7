"""Continuing a run: the config a ``--resume`` runs with, shared by ``train`` and ``finetune``.

A resumed run keeps its own ``config.yaml``; options given with ``--resume`` override it and are
recorded there, so the run directory always says what the run last did.
"""

from __future__ import annotations

from pathlib import Path

from resnetlab.config import TrainConfig, build_config, load_recipe, write_config
from resnetlab.engine import distributed
from resnetlab.errors import ConfigError


def resume_config(run_dir: str | Path, overrides: dict) -> TrainConfig:
    """The saved config of ``run_dir`` with ``overrides`` applied, written back on rank 0.

    Raises ``ConfigError`` when ``run_dir`` has no ``config.yaml`` (not a run directory).
    """
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
    data = load_recipe(saved)
    config = build_config(data, {**overrides, "run_dir": str(run_dir)})
    if distributed.detect().is_main:  # one writer under torchrun
        write_config(config, saved)
    return config
