"""``train(config)``: data + model + optimizer + schedule -> a finished run directory.

This is the one entry point behind ``resnetlab train`` and ``resnetlab finetune``:

    train(config, *, model=None, splits=None, param_groups=None, on_epoch_start=None,
          resume_from=None, records=None, final_report=None) -> TrainResult

- ``model``: an ``nn.Module`` with ``.meta`` to train instead of ``create_model(config.model...)``;
  its ``meta.mean``/``meta.std`` are the normalization used (a pretrained model keeps its own).
- ``splits``: a ``DataSplits`` to use instead of ``load_splits(config.data...)``.
- ``param_groups``: optimizer parameter groups (dicts with ``params`` and optionally ``lr``,
  ``lr_scale``, ``weight_decay``); an ``lr`` is relative to ``config.optim.lr`` and follows the schedule.
- ``on_epoch_start(epoch, model, optimizer)``: called before each epoch (also a resumed partial
  one) with the unwrapped model, e.g. to unfreeze layers.
- ``resume_from``: a run directory to continue from its newest intact checkpoint.
- ``records``: extra text files (name -> content) written into a new run directory as it is
  created (fine-tuning's ``finetune.json``).
- ``final_report(model, imageset, out_dir, *, device, batch_size, tta, context) -> dict`` with an
  ``accuracy`` key: writes the held-out split's report into ``RUN_DIR/eval`` when
  ``config.eval_report`` is on (callers pass ``resnetlab.evaluation.evaluate_model``). It is passed
  in because the engine sits below evaluation and never imports it; without one the final
  evaluation is plain accuracy.

Everything that can be checked (config, model, data, batch size) is checked before the run
directory is created, and it is created all at once, so a mistake leaves no stub behind. At the
end the model file and ``summary.json`` are written before the evaluation report, whose failure
is only a warning: a trained model is never lost to its report.
"""

from __future__ import annotations

import copy
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from resnetlab.config import TrainConfig, check_model, config_text
from resnetlab.data.splits import load_splits_for
from resnetlab.engine import distributed
from resnetlab.engine.checkpoint import CheckpointManager, capture_rng_state, is_better, restore_rng_state
from resnetlab.engine.ema import create_ema
from resnetlab.engine.lookahead import Lookahead
from resnetlab.engine.loop import EpochStats, NonFiniteStep, StepOptions, TrainState, evaluate, train_one_epoch
from resnetlab.engine.optim import build_optimizer, param_groups as default_param_groups
from resnetlab.engine.host_memory import keep_freed_memory, resolve_keep_host_memory
from resnetlab.engine.precision import (COMPILE_CUDA_GRAPHS, Precision, compile_model, resolve_channels_last, resolve_compile,
                                        resolve_precision)
from resnetlab.engine.progress import EpochProgress
from resnetlab.engine.schedule import StepPlan, TrainErrorWarmup, lr_at
from resnetlab.engine.signals import StopRequest, TrainingInterrupted
from resnetlab.errors import CheckpointError, ConfigError, DataError, ResnetlabError
from resnetlab.models.files import unwrap, update_model_extra
from resnetlab.runs import RunDir, default_run_dir, environment_record
from resnetlab.stats import pct
from resnetlab.utils.atomic import remove_stale_temporaries
from resnetlab.utils.device import resolve_device

log = logging.getLogger(__name__)


class TrainingDiverged(ResnetlabError):
    """A NaN/Inf loss or gradient stopped training (``nonfinite: error``)."""


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module | None  # the best-on-validation model (unwrapped), None if stopped early
    completed: bool  # False when stopped by debug.stop_after_steps
    steps: int
    epochs: int
    best_val_acc: float | None = None
    test_acc: float | None = None
    test_split: str | None = None  # "test", or "val" when the data has no test split
    summary: dict = field(default_factory=dict)


class _StopAfterSteps(Exception):
    pass


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    splits=None,
    param_groups: list[dict] | None = None,
    on_epoch_start: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
    resume_from: str | Path | None = None,
    records: dict[str, str] | None = None,
    final_report: Callable[..., dict] | None = None,
) -> TrainResult:
    """Train per ``config`` and write the run directory; see the module docstring."""
    info = distributed.detect()
    device = resolve_device(config.device, info.local_rank)
    distributed.init(info, device)
    try:
        return _Trainer(config, info, device, final_report).run(model, splits, param_groups, on_epoch_start, resume_from, records)
    finally:
        distributed.shutdown(info)


class _Trainer:
    """One run's wiring. Kept as a class only to share the handful of objects between phases."""

    def __init__(self, config: TrainConfig, info: distributed.DistInfo, device: torch.device,
                 final_report: Callable[..., dict] | None = None):
        config = copy.deepcopy(config)
        # Decided once, and recorded resolved in the run's config.yaml.
        config.model.channels_last = resolve_channels_last(config.model.channels_last, device)
        config.model.compile = resolve_compile(config.model.compile, device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        config.keep_host_memory = resolve_keep_host_memory(config.keep_host_memory, device.type)
        if config.keep_host_memory:
            config.keep_host_memory = keep_freed_memory()  # records False where glibc is absent
        self.cfg = config
        self.info = info
        self.device = device
        self.precision: Precision = resolve_precision(config.precision, device)
        self.stop = StopRequest()
        self.step_records: list[dict] = []
        self.best: dict = {"val_acc": None, "epoch": None, "step": None}
        self.elapsed_before = 0.0
        self.last_checkpoint: Path | None = None
        self.final_report = final_report
        self.start_time: float | None = None  # set when the loop starts; before that no time has run

    # ------------------------------------------------------------------ setup
    def run(self, model, splits, param_groups, on_epoch_start, resume_from, records=None) -> TrainResult:
        cfg = self.cfg
        checkpoint = self._open_resumed(resume_from) if resume_from is not None else None
        if model is None and checkpoint is None:
            check_model(cfg)  # before the data loads, which can take minutes
        _seed_everything(cfg.seed)
        splits = splits if splits is not None else load_splits_for(cfg.data)
        _check_classes(splits.train, cfg.data.spec)
        raw = self._prepare_model(model, splits, fresh=checkpoint is None)
        self.raw = raw
        self._build_loaders(splits, raw)
        groups = param_groups if param_groups is not None else default_param_groups(raw, cfg.optim.weight_decay, cfg.optim.no_decay_bn_bias, cfg.optim.bias_lr_scale)
        optimizer = build_optimizer(groups, cfg.optim)
        ema = create_ema(raw, cfg.ema_decay)
        lookahead = Lookahead(raw, cfg.optim.lookahead_steps, cfg.optim.lookahead_alpha) if cfg.optim.lookahead_steps else None
        wrapped = distributed.wrap(raw, self.info, self.device, cfg.sync_bn)
        wrapped = compile_model(wrapped, cfg.model.compile)
        plan = StepPlan(total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch)
        sched = cfg.schedule
        self.state = TrainState(
            model=wrapped,
            optimizer=optimizer,
            criterion=_criterion(cfg, splits.train, self.device),
            precision=self.precision,
            lr_fn=lambda step: lr_at(step, cfg.optim.lr, sched, plan),
            warmup=TrainErrorWarmup(sched.warmup_until_train_error, sched.warmup_lr, sched.warmup_window),
            ema=ema,
            lookahead=lookahead,
        )
        self.options = StepOptions(
            grad_clip=cfg.optim.grad_clip,
            nonfinite=cfg.nonfinite,
            nan_at_step=cfg.debug.nan_at_step,
            probe_steps=frozenset(cfg.log_grad_norms),
            dist=self.info,
            micro_batch=cfg.micro_batch,
            cudagraphs=cfg.model.compile == COMPILE_CUDA_GRAPHS,
        )
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            self._create_run_dir(records or {})  # only now: every check above has passed
        self.tb = _tensorboard(self.run_dir.path) if cfg.tensorboard and self.info.is_main else None
        self.start_time = time.perf_counter()
        try:
            with self.stop.installed():
                self._loop(on_epoch_start)
        except _StopAfterSteps:
            return TrainResult(self.run_dir.path, None, False, self.state.step, self.state.epoch)
        except NonFiniteStep as exc:
            self._flush_records()
            where = str(self.last_checkpoint) if self.last_checkpoint else "none written yet"
            hint = "lower optim.lr, set optim.grad_clip, or --set nonfinite=skip"
            raise TrainingDiverged(
                f"non-finite {exc.what} at step {exc.step} (epoch {self.state.epoch}); last good checkpoint: {where}; {hint}"
            ) from None
        finally:
            if self.tb is not None:
                self.tb.close()
        return self._finish(splits)

    def _open_resumed(self, resume_from) -> dict:
        cfg = self.cfg
        self.run_dir = RunDir(resume_from)
        manager = CheckpointManager(self.run_dir.checkpoints, cfg.keep_last)
        checkpoint, path = manager.load_newest_intact(map_location="cpu")
        log.info("resuming %s from %s (step %d)", self.run_dir.path, path.name, checkpoint["step"])
        self.last_checkpoint = path
        self.manager = manager
        if self.info.is_main:
            remove_stale_temporaries(self.run_dir.path)  # e.g. a model file cut short by a kill
            self.run_dir.truncate_metrics(checkpoint["epoch"])  # rows count epochs from 1
            self.run_dir.truncate_jsonl("steps.jsonl", checkpoint["step"])
            self.run_dir.truncate_jsonl("grad_norms.jsonl", checkpoint["step"])
        return checkpoint

    def _create_run_dir(self, records: dict[str, str]) -> None:
        cfg = self.cfg
        path = cfg.run_dir or str(default_run_dir(cfg.model.name, cfg.name))
        path = distributed.broadcast_object(path, self.info)  # one name even with a timestamp
        self.run_dir = RunDir(path)
        if self.info.is_main:
            cfg.run_dir = str(path)
            env = environment_record(str(self.device), cfg.seed, self.info.world_size)
            self.run_dir.create({"config.yaml": config_text(cfg), "env.json": RunDir.json_text(env), **records})
        distributed.barrier(self.info)
        self.manager = CheckpointManager(self.run_dir.checkpoints, cfg.keep_last)

    def _prepare_model(self, model: nn.Module | None, splits, fresh: bool) -> nn.Module:
        cfg = self.cfg
        train_set = splits.train
        if model is None:
            from resnetlab.models import create_model

            model = create_model(cfg.model.name, num_classes=train_set.num_classes, **cfg.model.options)
            # The model file must carry the normalization it was trained with.
            model.meta.mean = tuple(float(v) for v in train_set.mean)
            model.meta.std = tuple(float(v) for v in train_set.std)
        model.meta.classes = list(train_set.classes)
        height, width = self.image_size = _train_size(cfg, train_set)
        model.meta.input_size = (3, height, width)
        model = unwrap(model).to(self.device)
        if cfg.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if fresh and hasattr(model, "init_from_data"):
            model.init_from_data(_first_batch(train_set, model, self.device, cfg))
        return model

    def _build_loaders(self, splits, raw: nn.Module) -> None:
        from resnetlab.data import DeviceLoader

        cfg, info = self.cfg, self.info
        if cfg.batch_size % info.world_size:
            raise ConfigError(f"config batch_size={cfg.batch_size}: must be divisible by the {info.world_size} DDP processes")
        mean, std = raw.meta.mean, raw.meta.std
        self.train_loader = DeviceLoader(
            splits.train, cfg.batch_size // info.world_size, train=True, augment=cfg.augment, device=self.device,
            seed=cfg.seed, mean=mean, std=std, rank=info.rank, world_size=info.world_size,
            sample_weights=_sample_weights(cfg, splits.train), channels_last=cfg.model.channels_last, resize_to=self.image_size,
        )
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(splits.train)} training images")
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        self.val_loader = None
        if splits.val is not None and len(splits.val) > 0:
            self.val_loader = DeviceLoader(
                splits.val, cfg.eval_batch_size, train=False, device=self.device, seed=cfg.seed, mean=mean, std=std,
                channels_last=cfg.model.channels_last, resize_to=self.image_size,
            )
        self.splits = splits

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> dict:
        state = self.state
        return {
            "model": self.raw.state_dict(),
            "meta": self.raw.meta.to_dict(),
            "optimizer": state.optimizer.state_dict(),
            "schedule": {"step": state.step, "warmup": state.warmup.state_dict()},
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler is not None else None,
            "ema": state.ema.state_dict() if state.ema is not None else None,
            "lookahead": state.lookahead.state_dict() if state.lookahead is not None else None,
            "rng": capture_rng_state(),
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "step": state.step,
            "epoch_stats": state.stats.to_dict(),
            "skipped_total": state.skipped_total,
            "best": dict(self.best),
            "elapsed_s": self._elapsed(),
            "config": self.cfg.to_dict(),
        }

    def _save_last(self) -> None:
        self._flush_records()
        if self.info.is_main:
            if self.cfg.debug.save_delay_s:
                time.sleep(self.cfg.debug.save_delay_s)
            self.last_checkpoint = self.manager.save_last(self._checkpoint())
        distributed.barrier(self.info)

    def _restore(self, checkpoint: dict) -> None:
        state = self.state
        saved, current = checkpoint.get("meta", {}), self.raw.meta
        saved_desc = f"{saved.get('name')!r} with {saved.get('num_classes')} classes"
        current_desc = f"{current.name!r} with {current.num_classes} classes"
        if saved_desc != current_desc:
            raise CheckpointError(f"{self.last_checkpoint or 'checkpoint'}: it holds {saved_desc}, but this run builds "
                                  f"{current_desc}; resume with the run's own model (drop --model) or start a new run")
        try:
            self.raw.load_state_dict(checkpoint["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint of {saved_desc} does not fit {current_desc}: {str(exc).splitlines()[0]}") from exc
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.precision.scaler is not None and checkpoint["scaler"] is not None:
            self.precision.scaler.load_state_dict(checkpoint["scaler"])
        if state.ema is not None and checkpoint["ema"] is not None:
            state.ema.load_state_dict(checkpoint["ema"])
        if state.lookahead is not None and checkpoint.get("lookahead") is not None:
            state.lookahead.load_state_dict(checkpoint["lookahead"])
        state.warmup.load_state_dict(checkpoint["schedule"]["warmup"])
        state.step = checkpoint["step"]
        state.epoch = checkpoint["epoch"]
        state.step_in_epoch = checkpoint["step_in_epoch"]
        state.stats = EpochStats(**checkpoint.get("epoch_stats", {}))
        state.skipped_total = checkpoint.get("skipped_total", 0)
        self.best = dict(checkpoint["best"])
        self.elapsed_before = float(checkpoint.get("elapsed_s", 0.0))
        # Last, so nothing above consumes random numbers after the restore.
        restore_rng_state(checkpoint["rng"], skip=self.cfg.debug.skip_rng_restore)

    # ------------------------------------------------------------------ the loop
    def _loop(self, on_epoch_start) -> None:
        state, cfg = self.state, self.cfg
        while state.step < self.total_steps:
            if on_epoch_start is not None:
                on_epoch_start(state.epoch, self.raw, state.optimizer)
            progress = EpochProgress(state.epoch, self.steps_per_epoch, state.step_in_epoch, enabled=self.info.is_main)
            self._progress = progress
            with progress:
                batches = self.train_loader.epoch(state.epoch, start_batch=state.step_in_epoch)
                metrics = train_one_epoch(state, batches, self.total_steps, self.options, self._after_step)
            row = self._end_epoch(metrics)
            if self.info.is_main:
                print(_epoch_line(row, self.total_steps), flush=True)
            if self.stop.requested:
                raise TrainingInterrupted(self.stop.signum, str(self.last_checkpoint))
            if cfg.debug.stop_after_steps is not None and state.step >= cfg.debug.stop_after_steps and state.step < self.total_steps:
                raise _StopAfterSteps()

    def _after_step(self, record: dict) -> None:
        state, cfg = self.state, self.cfg
        self._progress.update(record)
        if cfg.debug.sleep_per_step:
            time.sleep(cfg.debug.sleep_per_step)
        if self.info.is_main:
            if cfg.log_step_loss:
                self.step_records.append({"step": record["step"], "loss": record["loss"], "acc": record["correct"] / max(record["seen"], 1),
                                          "lr": record["lr"], "skipped": record["skipped"]})
            if "probe" in record:
                self.run_dir.append_jsonl("grad_norms.jsonl", [{"step": record["step"], "epoch": state.epoch, **record["probe"]}])
            if self.tb is not None and record["step"] % 10 == 0:
                self.tb.add_scalar("step/loss", record["loss"], record["step"])
                self.tb.add_scalar("step/lr", record["lr"], record["step"])
        at_epoch_end = state.step_in_epoch >= self.steps_per_epoch or state.step >= self.total_steps
        if at_epoch_end:
            return  # the epoch end evaluates, checkpoints and then honours a stop request
        stop_signal = self._agreed(self.stop.requested)
        stop_debug = cfg.debug.stop_after_steps is not None and state.step >= cfg.debug.stop_after_steps
        periodic = cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0
        if stop_signal or stop_debug or periodic:
            self._save_last()
        if stop_signal:
            raise TrainingInterrupted(self.stop.signum or 15, str(self.last_checkpoint))
        if stop_debug:
            raise _StopAfterSteps()

    def _agreed(self, flag: bool) -> bool:
        """Under DDP every process must stop at the same step: any process's signal stops all."""
        if not self.info.enabled:
            return flag
        return distributed.all_reduce_sum([float(flag)], self.info, self.device)[0] > 0

    def _end_epoch(self, metrics: dict) -> dict:
        state = self.state
        last_epoch = state.step >= self.total_steps
        due = (state.epoch + 1) % self.cfg.eval_every == 0 or last_epoch
        val = evaluate(self._eval_model(), self.val_loader.epoch(0), self.precision) if self.val_loader is not None and due else {}
        row = {
            "epoch": state.epoch + 1,  # epochs are counted from 1 in records
            "step": state.step,
            "train_loss": metrics["train_loss"],
            "train_acc": metrics["train_acc"],
            "val_loss": val.get("loss"),
            "val_acc": val.get("acc"),
            "lr": state.optimizer.param_groups[0]["lr"] / state.optimizer.param_groups[0].get("lr_scale", 1.0),
            "images_per_sec": metrics["images_per_sec"] * self.info.world_size,
            "epoch_time_s": metrics["epoch_time_s"],
            "elapsed_s": self._elapsed(),
            "skipped_steps": metrics["skipped_steps"],
        }
        if state.warmup.threshold is not None:
            row["warmup_done"] = state.warmup.done
        state.epoch += 1
        state.step_in_epoch = 0
        state.stats = EpochStats()
        if self.info.is_main:
            self.run_dir.append_metrics(row)
            if self.tb is not None:
                for key, value in row.items():
                    if key not in ("epoch",) and isinstance(value, (int, float)):
                        self.tb.add_scalar(f"epoch/{key}", value, row["epoch"])
        if is_better(row["val_acc"], self.best["val_acc"]):
            self.best = {"val_acc": row["val_acc"], "epoch": row["epoch"], "step": row["step"]}
            if self.info.is_main:
                self.manager.save_best(self._checkpoint())
        self._save_last()
        return row

    def _eval_model(self) -> nn.Module:
        return self.state.ema.module if self.state.ema is not None else self.raw

    def _flush_records(self) -> None:
        if self.info.is_main and self.step_records:
            self.run_dir.append_jsonl("steps.jsonl", self.step_records)
        self.step_records = []

    def _elapsed(self) -> float:
        running = 0.0 if self.start_time is None else time.perf_counter() - self.start_time
        return self.elapsed_before + running

    # ------------------------------------------------------------------ the end
    def _finish(self, splits) -> TrainResult:
        cfg, state = self.cfg, self.state
        rows = self.run_dir.read_metrics() if self.info.is_main else []
        result = TrainResult(self.run_dir.path, None, True, state.step, state.epoch, best_val_acc=self.best["val_acc"])
        if not self.info.is_main:
            distributed.barrier(self.info)
            return result
        model = self._best_model()
        test_set, split_name = (splits.test, "test") if splits.test is not None else (splits.val, "val")
        if splits.test is None:
            log.warning("the data has no test split: the final evaluation uses the validation split, which also chose the best epoch (optimistic)")
        # The model file and summary come first: whatever the evaluation below does, the trained
        # model is on disk, and a --resume after a crash there has nothing left to repeat.
        test_acc = None
        extra = {
            "run_name": self.run_dir.path.name,
            "recipe": cfg.recipe,
            "best_val_acc": self.best["val_acc"],
            "best_epoch": self.best["epoch"],
            "test_acc": test_acc,
            "test_split": split_name,
            "data": cfg.data.spec,
            "epochs": state.epoch,
            "steps": state.step,
            "seed": cfg.seed,
        }
        from resnetlab.models.files import save_model_file

        save_model_file(model, self.run_dir.path / "model.safetensors", extra=extra)
        summary = {
            "model": model.meta.name,
            "params": sum(p.numel() for p in model.parameters()),
            "recipe": cfg.recipe,
            "data": cfg.data.spec,
            "seed": cfg.seed,
            "epochs": state.epoch,
            "steps": state.step,
            "train_time_s": self._elapsed(),
            "best_val_acc": self.best["val_acc"],
            "best_epoch": self.best["epoch"],
            "final_val_acc": rows[-1].get("val_acc") if rows else None,
            "test_acc": test_acc,
            "test_split": split_name,
            "skipped_steps": state.skipped_total,
            "device": str(self.device),
            "precision": self.precision.name,
            "world_size": self.info.world_size,
            **_peak_memory(self.device),
        }
        self.run_dir.write_json("summary.json", summary)
        if test_set is not None and len(test_set) > 0:
            test_acc, report_error = self._final_evaluation(model, test_set, split_name)
            summary.update(test_acc=test_acc, **_peak_memory(self.device), **({"eval_error": report_error} if report_error else {}))
            if test_acc is not None:
                update_model_extra(self.run_dir.path / "model.safetensors", {"test_acc": test_acc})
            self.run_dir.write_json("summary.json", summary)
        try:
            self.run_dir.plot_curves(rows)
        except Exception as exc:  # noqa: BLE001 - a picture must not fail a finished run
            log.warning("curves.png was not written (%s)", _reason(exc))
        result.model, result.test_acc, result.test_split = model, test_acc, split_name
        result.summary = summary
        print(f"done: best val acc {pct(self.best['val_acc'])}, {split_name} acc {pct(test_acc)} -> {self.run_dir.path}", flush=True)
        distributed.barrier(self.info)
        return result

    def _best_model(self) -> nn.Module:
        """The unwrapped model with the best-on-validation weights (EMA weights when EMA is on)."""
        from resnetlab.engine.checkpoint import load_checkpoint

        model = self.raw
        source = self._checkpoint()
        if self.manager.best_path.exists():
            source = load_checkpoint(self.manager.best_path, map_location=self.device)
        if source.get("ema") is not None:
            prefix = "module."
            model.load_state_dict({k[len(prefix):]: v for k, v in source["ema"].items() if k.startswith(prefix)})
        else:
            model.load_state_dict(source["model"])
        return model

    def _final_evaluation(self, model: nn.Module, test_set, split_name: str) -> tuple[float | None, str | None]:
        """Evaluate the held-out split once: the caller's report when given, else plain accuracy.

        Returns ``(accuracy, why the report failed or None)``. The model is already saved, so a
        failure here is a warning: the report falls back to plain accuracy, and that to None.
        """
        cfg = self.cfg
        report_error = None
        if cfg.eval_report and self.final_report is not None:
            context = {"run": self.run_dir.path.name, "split": split_name, "recipe": cfg.recipe, "data": cfg.data.spec}
            try:
                report = self.final_report(model, test_set, self.run_dir.eval_dir, device=str(self.device), batch_size=cfg.eval_batch_size, tta=cfg.tta, context=context)
                return float(report["accuracy"]), None
            except Exception as exc:  # noqa: BLE001 - any report bug or disk problem; the model is safe
                report_error = _reason(exc)
                log.warning("warning: the evaluation report failed (%s); the model file and summary.json are saved; "
                            "retry the report with: resnetlab evaluate %s", report_error, self.run_dir.path)
        from resnetlab.data import DeviceLoader

        try:
            loader = DeviceLoader(test_set, cfg.eval_batch_size, train=False, device=self.device, mean=model.meta.mean, std=model.meta.std,
                                  resize_to=self.image_size)
            return evaluate(model, loader.epoch(0), self.precision)["acc"], report_error
        except Exception as exc:  # noqa: BLE001 - same reason as above
            log.warning("warning: the %s accuracy could not be measured (%s); the model file is saved", split_name, _reason(exc))
            return None, report_error or _reason(exc)


# ---------------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _first_batch(train_set, model: nn.Module, device: torch.device, cfg: TrainConfig) -> torch.Tensor:
    """Normalized, un-augmented training images for data-dependent initialization (e.g. whitening)."""
    from resnetlab.data import DeviceLoader

    size = min(len(train_set), 5000)
    loader = DeviceLoader(train_set, size, train=False, device=device, mean=model.meta.mean, std=model.meta.std,
                          channels_last=cfg.model.channels_last, resize_to=_train_size(cfg, train_set))
    x, _ = next(iter(loader.epoch(0)))
    return x


def _check_classes(train_set, spec) -> None:
    """A classifier needs two classes; one would train (loss 0) and only fail in the final report."""
    if train_set.num_classes < 2:
        found = f"only {train_set.classes[0]!r}" if train_set.classes else "none"
        raise DataError(f"DATA {spec}: a classifier needs at least 2 classes (class folders), found {found}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _train_size(cfg: TrainConfig, train_set) -> tuple[int, int]:
    """(H, W) the model trains at: ``data.image_size`` when set, else the images' own size."""
    size = cfg.data.image_size
    return (size, size) if size else tuple(train_set.image_size)


def _class_counts(train_set) -> torch.Tensor:
    return torch.bincount(train_set.labels, minlength=train_set.num_classes).double()


def _criterion(cfg: TrainConfig, train_set, device: torch.device) -> nn.Module:
    weight = None
    if cfg.data.class_balance == "weighted-loss":
        # Inverse class frequency, scaled so a balanced dataset gets weight 1 everywhere.
        counts = _class_counts(train_set).clamp(min=1)
        weight = (counts.sum() / (len(counts) * counts)).float().to(device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.optim.label_smoothing)


def _sample_weights(cfg: TrainConfig, train_set) -> torch.Tensor | None:
    if cfg.data.class_balance != "sampler":
        return None
    counts = _class_counts(train_set).clamp(min=1)
    return (1.0 / counts)[train_set.labels]


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError("tensorboard: true needs the tensorboard package (pip install 'resnetlab[tensorboard]')") from exc
    return SummaryWriter(log_dir=str(path / "tensorboard"))


def _peak_memory(device: torch.device) -> dict:
    """Peak resident set size of this process (MB), and on CUDA the peak allocated tensor memory."""
    import resource

    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # ru_maxrss is KiB on Linux
    if device.type == "cuda":
        peak["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def _epoch_line(row: dict, total_steps: int) -> str:
    return (
        f"epoch {row['epoch']:>3} step {row['step']}/{total_steps}  loss {row['train_loss']:.4f}  "
        f"acc {pct(row['train_acc'])}  val_loss {'n/a' if row['val_loss'] is None else format(row['val_loss'], '.4f')}  "
        f"val_acc {pct(row['val_acc'])}  lr {row['lr']:.4g}  {row['images_per_sec']:.0f} img/s  {row['epoch_time_s']:.1f}s"
    )
