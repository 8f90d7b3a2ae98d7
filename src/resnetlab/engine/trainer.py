"""``train(config)``: data + model + optimizer + schedule -> a finished run directory.

This is the one entry point behind ``resnetlab train`` and ``resnetlab finetune``:

    train(config, *, model=None, splits=None, param_groups=None, resume_from=None, records=None,
          final_report=None, hooks=None) -> TrainResult

- ``model``: an ``nn.Module`` with ``.meta`` to train instead of ``create_model(config.model...)``;
  its ``meta.mean``/``meta.std`` are the normalization used (a pretrained model keeps its own).
- ``splits``: a ``DataSplits`` to use instead of ``load_splits(config.data...)``.
- ``param_groups``: optimizer parameter groups (dicts with ``params`` and optionally ``lr``,
  ``lr_scale``, ``weight_decay``); an ``lr`` is relative to ``config.optim.lr`` and follows the schedule.
- ``resume_from``: a run directory to continue from its newest intact checkpoint.
- ``records``: extra text files (name -> content) written into a new run directory as it is
  created (fine-tuning's ``finetune.json``).
- ``final_report(model, imageset, out_dir, *, device, batch_size, tta, context, validation) -> dict`` with an
  ``accuracy`` key: writes the held-out split's report into ``RUN_DIR/eval`` when
  ``config.eval_report`` is on (callers pass ``resnetlab.evaluation.evaluate_model``). It is passed
  in because the engine sits below evaluation and never imports it; without one the final
  evaluation is plain accuracy.
- ``hooks``: :class:`~resnetlab.engine.hooks.TrainHooks` callbacks (fine-tuning's
  ``on_epoch_start``; the tests' stops and fault injection).

``train`` is ``setup`` then ``run``, two linear phases:

- ``setup(config, ...) -> TrainContext`` checks and builds everything, in the order written in it:
  a resumed checkpoint, the data, the model, the loaders and step plan, the optimizer and state,
  then (only now) the run directory. Everything that can be checked (config, model, data, batch
  size) is checked before the directory is created, and it is created all at once, so a mistake
  leaves no stub behind. The context is frozen; its ``state`` (:class:`RunState`) is the one
  mutable object, and the only thing the loop changes.
- ``run(context, hooks) -> TrainResult`` trains until the step plan ends (or an early stop, a
  signal, or a hook's stop), then finishes: the model file and ``summary.json`` are written
  before the evaluation report, whose failure is only a warning: a trained model is never lost
  to its report.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from resnetlab.config import TrainConfig, check_model, config_text
from resnetlab.data.splits import load_splits_for
from resnetlab.engine import distributed
from resnetlab.engine.checkpoint import CheckpointManager, capture_rng_state, is_better, restore_rng_state
from resnetlab.engine.context import RunState, TrainContext, new_early_stop
from resnetlab.engine.ema import create_ema
from resnetlab.engine.hooks import TrainHooks
from resnetlab.engine.lookahead import Lookahead
from resnetlab.engine.loop import EpochStats, NonFiniteStep, StepOptions, TrainState, evaluate, train_one_epoch
from resnetlab.engine.optim import build_optimizer, param_groups as default_param_groups
from resnetlab.engine.host_memory import keep_freed_memory, resolve_keep_host_memory
from resnetlab.engine.precision import (COMPILE_CUDA_GRAPHS, compile_model, resolve_channels_last, resolve_compile,
                                        resolve_precision)
from resnetlab.engine.progress import EpochProgress
from resnetlab.engine.schedule import StepPlan, TrainErrorWarmup, lr_at
from resnetlab.engine.signals import StopRequest, TrainingInterrupted
from resnetlab.engine.small_data import announce as _announce, baseline_summary, done_note, resolve_batching
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
    model: nn.Module | None  # the best-on-validation model (unwrapped), None if stopped by a hook
    completed: bool  # False when a hook stopped the run (it can be resumed)
    steps: int
    epochs: int
    best_val_acc: float | None = None
    test_acc: float | None = None
    test_split: str | None = None  # "test", or "val" when the data has no test split
    summary: dict = field(default_factory=dict)


class _HookStop(Exception):
    """A hook's ``after_step`` asked to stop; the checkpoint is saved."""


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    splits=None,
    param_groups: list[dict] | None = None,
    resume_from: str | Path | None = None,
    records: dict[str, str] | None = None,
    final_report: Callable[..., dict] | None = None,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Train per ``config`` and write the run directory; see the module docstring."""
    info = distributed.detect()
    device = resolve_device(config.device, info.local_rank)
    distributed.init(info, device)
    try:
        context = setup(config, model=model, splits=splits, param_groups=param_groups, resume_from=resume_from,
                        records=records, final_report=final_report, info=info, device=device)
        return run(context, hooks)
    finally:
        distributed.shutdown(info)


# ---------------------------------------------------------------------- setup


def setup(config: TrainConfig, *, model: nn.Module | None = None, splits=None, param_groups: list[dict] | None = None,
          resume_from: str | Path | None = None, records: dict[str, str] | None = None,
          final_report: Callable[..., dict] | None = None, info: distributed.DistInfo | None = None,
          device: torch.device | None = None) -> TrainContext:
    """Check and build everything a run needs; create (or reopen) its run directory last.

    ``info``/``device`` default to this process's (``train`` passes them after ``distributed.init``).
    """
    info = info if info is not None else distributed.detect()
    device = device if device is not None else resolve_device(config.device, info.local_rank)
    cfg = _resolve(config, device)
    precision = resolve_precision(cfg.precision, device)

    # 1. A resumed run: its newest intact checkpoint (the run dir already exists).
    checkpoint = checkpoint_path = run_dir = manager = None
    if resume_from is not None:
        run_dir = RunDir(resume_from)
        manager = CheckpointManager(run_dir.checkpoints, cfg.keep_last)
        checkpoint, checkpoint_path = manager.load_newest_intact(map_location="cpu")
        log.info("resuming %s from %s (step %d)", run_dir.path, checkpoint_path.name, checkpoint["step"])
    elif model is None:
        check_model(cfg)  # before the data loads, which can take minutes

    # 2. Data and model.
    _seed_everything(cfg.seed)
    if splits is None:
        from resnetlab.data.photo import files_only_wanted

        # The photo path reads its files itself: no fixed-size decode of the folder (stream mode's point).
        splits = load_splits_for(cfg.data, files_only=files_only_wanted(cfg.data, cfg.augment))
    _check_classes(splits.train, cfg.data.spec)
    image_size = _train_size(cfg, splits.train)
    raw = _prepare_model(cfg, model, splits.train, image_size, device, fresh=checkpoint is None)

    # 3. Loaders and the step plan.
    train_loader, val_loader = _build_loaders(cfg, info, device, splits, raw, image_size)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(splits.train)} training images")
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    if cfg.early_stop.patience is not None and val_loader is None:
        raise ConfigError(f"config early_stop.patience={cfg.early_stop.patience} (--early-stop): needs a validation split "
                          "(data.val_size > 0, or a val/ folder)")

    # 4. Optimizer and the training state.
    groups = param_groups if param_groups is not None else default_param_groups(
        raw, cfg.optim.weight_decay, cfg.optim.no_decay_bn_bias, cfg.optim.bias_lr_scale)
    optimizer = build_optimizer(groups, cfg.optim)
    ema = create_ema(raw, cfg.ema_decay)
    lookahead = Lookahead(raw, cfg.optim.lookahead_steps, cfg.optim.lookahead_alpha) if cfg.optim.lookahead_steps else None
    wrapped = compile_model(distributed.wrap(raw, info, device, cfg.sync_bn), cfg.model.compile)
    plan = StepPlan(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    sched = cfg.schedule
    state = RunState(loop=TrainState(
        model=wrapped,
        optimizer=optimizer,
        criterion=_criterion(cfg, splits.train, device),
        precision=precision,
        lr_fn=lambda step: lr_at(step, cfg.optim.lr, sched, plan),
        warmup=TrainErrorWarmup(sched.warmup_until_train_error, sched.warmup_lr, sched.warmup_window),
        ema=ema,
        lookahead=lookahead,
    ))

    # 5. Resumed: the checkpoint's weights and state. New: the run directory, only now that every check has passed.
    if checkpoint is not None:
        _restore(state, raw, precision, checkpoint, checkpoint_path)
        if info.is_main:
            remove_stale_temporaries(run_dir.path)  # e.g. a model file cut short by a kill
            run_dir.truncate_metrics(checkpoint["epoch"])  # rows count epochs from 1
            run_dir.truncate_jsonl("steps.jsonl", checkpoint["step"])
            run_dir.truncate_jsonl("grad_norms.jsonl", checkpoint["step"])
    else:
        run_dir = _create_run_dir(cfg, info, device, records or {})
        manager = CheckpointManager(run_dir.checkpoints, cfg.keep_last)
    options = StepOptions(
        grad_clip=cfg.optim.grad_clip,
        nonfinite=cfg.nonfinite,
        probe_steps=frozenset(cfg.log_grad_norms),
        dist=info,
        micro_batch=cfg.micro_batch,
        cudagraphs=cfg.model.compile == COMPILE_CUDA_GRAPHS,
    )
    return TrainContext(
        config=cfg, info=info, device=device, precision=precision, run_dir=run_dir, checkpoints=manager, raw=raw,
        splits=splits, image_size=image_size, train_loader=train_loader, val_loader=val_loader,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps, options=options, stop=StopRequest(),
        tensorboard=_tensorboard(run_dir.path) if cfg.tensorboard and info.is_main else None,
        final_report=final_report, state=state, resumed_rng=checkpoint["rng"] if checkpoint is not None else None,
    )


def _resolve(config: TrainConfig, device: torch.device) -> TrainConfig:
    """A copy with the ``auto`` choices decided once for ``device``, and recorded resolved in config.yaml."""
    config = copy.deepcopy(config)
    config.model.channels_last = resolve_channels_last(config.model.channels_last, device)
    config.model.compile = resolve_compile(config.model.compile, device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    config.keep_host_memory = resolve_keep_host_memory(config.keep_host_memory, device.type)
    if config.keep_host_memory:
        config.keep_host_memory = keep_freed_memory()  # records False where glibc is absent
    return config


def _create_run_dir(cfg: TrainConfig, info: distributed.DistInfo, device: torch.device, records: dict[str, str]) -> RunDir:
    path = cfg.run_dir or str(default_run_dir(cfg.model.name, cfg.name))
    path = distributed.broadcast_object(path, info)  # one name even with a timestamp
    run_dir = RunDir(path)
    if info.is_main:
        cfg.run_dir = str(path)
        env = environment_record(str(device), cfg.seed, info.world_size)
        run_dir.create({"config.yaml": config_text(cfg), "env.json": RunDir.json_text(env), **records})
    distributed.barrier(info)
    return run_dir


def _prepare_model(cfg: TrainConfig, model: nn.Module | None, train_set, image_size: tuple[int, int], device: torch.device,
                   fresh: bool) -> nn.Module:
    if model is None:
        from resnetlab.models import create_model

        model = create_model(cfg.model.name, num_classes=train_set.num_classes, **cfg.model.options)
        # The model file must carry the normalization it was trained with.
        model.meta.mean = tuple(float(v) for v in train_set.mean)
        model.meta.std = tuple(float(v) for v in train_set.std)
    model.meta.classes = list(train_set.classes)
    model.meta.input_size = (3, *image_size)
    model = unwrap(model).to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fresh and hasattr(model, "init_from_data"):
        model.init_from_data(_first_batch(train_set, model, device, cfg))
    return model


def _build_loaders(cfg: TrainConfig, info: distributed.DistInfo, device: torch.device, splits, raw: nn.Module,
                   image_size: tuple[int, int]):
    """(train loader, validation loader or None)."""
    from resnetlab.data.photo import build_loaders

    _announce(resolve_batching(cfg, len(splits.train), info.world_size), info.is_main)  # small data: batch, lr, drop_last
    cfg.eval_batch_size = eval_batch_for(cfg.eval_batch_size, image_size)
    if cfg.batch_size % info.world_size:
        raise ConfigError(f"config batch_size={cfg.batch_size}: must be divisible by the {info.world_size} DDP processes")
    # The data side picks the loader: DeviceLoader, or the photo path (memory/stream) for image folders.
    return build_loaders(cfg, splits, raw, image_size, device=device, rank=info.rank, world_size=info.world_size,
                         sample_weights=_sample_weights(cfg, splits.train), announce=lambda m: info.is_main and print(m, flush=True))


# Images per evaluation pass are capped by pixels: 512 CIFAR images (0.5 M pixels) cost little, but
# 512 photos at 160 px took a 20,000-photo stream run (resnet18, CPU) to a 4.7 GB peak RSS.
EVAL_PIXELS = 64 * 160 * 160


def eval_batch_for(configured: int, image_size: tuple[int, int]) -> int:
    """The evaluation batch: ``configured``, lowered for large images so one pass stays ~64 images at 160 px."""
    return max(1, min(configured, EVAL_PIXELS // (image_size[0] * image_size[1])))


def _restore(state: RunState, raw: nn.Module, precision, checkpoint: dict, path: Path) -> None:
    """Load a checkpoint into the model and state (the random generators follow as ``run`` starts)."""
    loop = state.loop
    saved, current = checkpoint.get("meta", {}), raw.meta
    saved_desc = f"{saved.get('name')!r} with {saved.get('num_classes')} classes"
    current_desc = f"{current.name!r} with {current.num_classes} classes"
    if saved_desc != current_desc:
        raise CheckpointError(f"{path}: it holds {saved_desc}, but this run builds "
                              f"{current_desc}; resume with the run's own model (drop --model) or start a new run")
    try:
        raw.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint of {saved_desc} does not fit {current_desc}: {str(exc).splitlines()[0]}") from exc
    loop.optimizer.load_state_dict(checkpoint["optimizer"])
    if precision.scaler is not None and checkpoint["scaler"] is not None:
        precision.scaler.load_state_dict(checkpoint["scaler"])
    if loop.ema is not None and checkpoint["ema"] is not None:
        loop.ema.load_state_dict(checkpoint["ema"])
    if loop.lookahead is not None and checkpoint.get("lookahead") is not None:
        loop.lookahead.load_state_dict(checkpoint["lookahead"])
    loop.warmup.load_state_dict(checkpoint["schedule"]["warmup"])
    loop.step = checkpoint["step"]
    loop.epoch = checkpoint["epoch"]
    loop.step_in_epoch = checkpoint["step_in_epoch"]
    loop.stats = EpochStats(**checkpoint.get("epoch_stats", {}))
    loop.skipped_total = checkpoint.get("skipped_total", 0)
    state.best = dict(checkpoint["best"])
    state.early_stop = {**new_early_stop(), **checkpoint.get("early_stop", {})}
    state.elapsed_before = float(checkpoint.get("elapsed_s", 0.0))
    state.last_checkpoint = path


# ---------------------------------------------------------------------- run


def run(context: TrainContext, hooks: TrainHooks | None = None) -> TrainResult:
    """Train from ``context.state`` to the end of the step plan, then finish the run directory."""
    hooks = hooks or TrainHooks()
    state = context.state
    if context.resumed_rng is not None:
        # Last before training, so nothing consumes random numbers between the restore and the first step.
        restore_rng_state(context.resumed_rng, skip=hooks.skip_rng_restore)
    state.start_time = time.perf_counter()
    try:
        with context.stop.installed():
            _loop(context, hooks)
    except _HookStop:
        return TrainResult(context.run_dir.path, None, False, state.step, state.epoch)
    except NonFiniteStep as exc:
        _flush_records(context)
        where = str(state.last_checkpoint) if state.last_checkpoint else "none written yet"
        hint = "lower optim.lr, set optim.grad_clip, or --set nonfinite=skip"
        raise TrainingDiverged(
            f"non-finite {exc.what} at step {exc.step} (epoch {state.epoch}); last good checkpoint: {where}; {hint}"
        ) from None
    finally:
        getattr(context.train_loader, "close", lambda: None)()  # the photo path's stream workers
        if context.tensorboard is not None:
            context.tensorboard.close()
    return _finish(context)


def _loop(context: TrainContext, hooks: TrainHooks) -> None:
    state, loop = context.state, context.state.loop
    options = replace(context.options, on_loss=hooks.on_loss)  # the step options of setup, plus the caller's hook
    while loop.step < context.total_steps and not state.early_stop["stopped"]:
        if hooks.on_epoch_start is not None:
            hooks.on_epoch_start(loop.epoch, context.raw, loop.optimizer)
        state.progress = EpochProgress(loop.epoch, context.steps_per_epoch, loop.step_in_epoch, enabled=context.info.is_main)
        with state.progress:
            batches = context.train_loader.epoch(loop.epoch, start_batch=loop.step_in_epoch)
            metrics = train_one_epoch(loop, batches, context.total_steps, options,
                                      lambda record: _after_step(context, hooks, record))
        row = _end_epoch(context, hooks, metrics)
        if context.info.is_main:
            print(_epoch_line(row, context.total_steps), flush=True)
        if context.stop.requested:
            raise TrainingInterrupted(context.stop.signum, str(state.last_checkpoint))
        if state.early_stop["stopped"] and context.info.is_main:
            print(f"early stop after epoch {row['epoch']}: {state.early_stop['reason']}; "
                  f"final model: best.pt (best val_acc, epoch {state.best['epoch']})", flush=True)
        if state.stop_at_epoch_end and loop.step < context.total_steps and not state.early_stop["stopped"]:
            raise _HookStop()


def _after_step(context: TrainContext, hooks: TrainHooks, record: dict) -> bool:
    """Per-step records, checkpoints and stops; True ends the epoch here because a budget's deadline passed."""
    state, loop, cfg = context.state, context.state.loop, context.config
    state.progress.update(record)
    if context.info.is_main:
        if cfg.log_step_loss:
            state.step_records.append({"step": record["step"], "loss": record["loss"], "acc": record["correct"] / max(record["seen"], 1),
                                       "lr": record["lr"], "skipped": record["skipped"]})
        if "probe" in record:
            context.run_dir.append_jsonl("grad_norms.jsonl", [{"step": record["step"], "epoch": loop.epoch, **record["probe"]}])
        if context.tensorboard is not None and record["step"] % 10 == 0:
            context.tensorboard.add_scalar("step/loss", record["loss"], record["step"])
            context.tensorboard.add_scalar("step/lr", record["lr"], record["step"])
    stop_hook = bool(hooks.after_step(context, state, record)) if hooks.after_step is not None else False
    at_epoch_end = loop.step_in_epoch >= context.steps_per_epoch or loop.step >= context.total_steps
    if at_epoch_end:
        state.stop_at_epoch_end = stop_hook
        return False  # the epoch end evaluates, checkpoints and then honours a stop request
    if _past_budget_deadline(context):
        return True  # the epoch ends here; its end evaluates, checkpoints and finishes the run
    stop_signal = _agreed(context, context.stop.requested)
    periodic = cfg.checkpoint_every > 0 and loop.step % cfg.checkpoint_every == 0
    if stop_signal or stop_hook or periodic:
        _save_last(context, hooks)
    if stop_signal:
        raise TrainingInterrupted(context.stop.signum or 15, str(state.last_checkpoint))
    if stop_hook:
        raise _HookStop()
    return False


def _past_budget_deadline(context: TrainContext) -> bool:
    """Has training run past the time a ``--budget`` plan leaves it (resnetlab.budget)? Marks the stop if so.

    The plan is predicted to end well inside it; this guard is for a machine that became slower.
    """
    chosen = context.config.budget.chosen
    early = context.state.early_stop
    if not chosen or early["stopped"] or context.state.elapsed() <= chosen["train_deadline_s"]:
        return False
    early.update(stopped=True, epoch=context.state.loop.epoch + 1,
                 reason=f"the --budget deadline for training ({chosen['train_deadline_s']:.1f} s) passed at step "
                        f"{context.state.loop.step} of {context.total_steps}, slower than the probe predicted")
    return True


def _agreed(context: TrainContext, flag: bool) -> bool:
    """Under DDP every process must stop at the same step: any process's signal stops all."""
    if not context.info.enabled:
        return flag
    return distributed.all_reduce_sum([float(flag)], context.info, context.device)[0] > 0


def _end_epoch(context: TrainContext, hooks: TrainHooks, metrics: dict) -> dict:
    state, loop, cfg = context.state, context.state.loop, context.config
    last_epoch = loop.step >= context.total_steps or state.early_stop["stopped"]  # a budget's deadline ends it too
    due = (loop.epoch + 1) % cfg.eval_every == 0 or last_epoch
    val = evaluate(_eval_model(context), context.val_loader.epoch(0), context.precision) if context.val_loader is not None and due else {}
    row = {
        "epoch": loop.epoch + 1,  # epochs are counted from 1 in records
        "step": loop.step,
        "train_loss": metrics["train_loss"],
        "train_acc": metrics["train_acc"],
        "val_loss": val.get("loss"),
        "val_acc": val.get("acc"),
        "lr": loop.optimizer.param_groups[0]["lr"] / loop.optimizer.param_groups[0].get("lr_scale", 1.0),
        "images_per_sec": metrics["images_per_sec"] * context.info.world_size,
        "epoch_time_s": metrics["epoch_time_s"],
        "elapsed_s": state.elapsed(),
        "skipped_steps": metrics["skipped_steps"],
    }
    if loop.warmup.threshold is not None:
        row["warmup_done"] = loop.warmup.done
    loop.epoch += 1
    loop.step_in_epoch = 0
    loop.stats = EpochStats()
    if context.info.is_main:
        context.run_dir.append_metrics(row)
        if context.tensorboard is not None:
            for key, value in row.items():
                if key not in ("epoch",) and isinstance(value, (int, float)):
                    context.tensorboard.add_scalar(f"epoch/{key}", value, row["epoch"])
    if is_better(row["val_acc"], state.best["val_acc"]):
        state.best = {"val_acc": row["val_acc"], "epoch": row["epoch"], "step": row["step"]}
        if context.info.is_main:
            context.checkpoints.save_best(_checkpoint(context))
    if val and not last_epoch:
        _count_early_stop(cfg.early_stop, state.early_stop, row)
    _save_last(context, hooks)  # records an early stop too, so a resume does not train on
    return row


def _count_early_stop(settings, early: dict, row: dict) -> None:
    """Update early stopping's record with this evaluation; mark it stopped once patience runs out.

    Every process sees the same validation numbers, so under DDP all stop at the same epoch.
    """
    if settings.patience is None:
        return
    value = row[settings.metric]
    higher_is_better = settings.metric == "val_acc"
    gain = None if early["best"] is None else (value - early["best"]) * (1 if higher_is_better else -1)
    if gain is None or gain > settings.min_delta:  # NaN compares false: no improvement
        early.update(best=value, best_epoch=row["epoch"], evals_since=0)
        return
    early["evals_since"] += 1
    if early["evals_since"] >= settings.patience:
        shown = pct(early["best"]) if higher_is_better else f"{early['best']:.4f}"
        early.update(stopped=True, epoch=row["epoch"],
                     reason=f"{settings.metric} has not improved by more than {settings.min_delta:g} for {settings.patience} "
                            f"evaluation{'s' if settings.patience > 1 else ''} (best {shown} at epoch {early['best_epoch']})")


def _eval_model(context: TrainContext) -> nn.Module:
    ema = context.state.loop.ema
    return ema.module if ema is not None else context.raw


# ---------------------------------------------------------------------- checkpoints


def _checkpoint(context: TrainContext) -> dict:
    state, loop, raw = context.state, context.state.loop, context.raw
    scaler = context.precision.scaler
    return {
        "model": raw.state_dict(),
        "meta": raw.meta.to_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "schedule": {"step": loop.step, "warmup": loop.warmup.state_dict()},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": loop.ema.state_dict() if loop.ema is not None else None,
        "lookahead": loop.lookahead.state_dict() if loop.lookahead is not None else None,
        "rng": capture_rng_state(),
        "epoch": loop.epoch,
        "step_in_epoch": loop.step_in_epoch,
        "step": loop.step,
        "epoch_stats": loop.stats.to_dict(),
        "skipped_total": loop.skipped_total,
        "best": dict(state.best),
        "early_stop": dict(state.early_stop),
        "elapsed_s": state.elapsed(),
        "config": context.config.to_dict(),
    }


def _save_last(context: TrainContext, hooks: TrainHooks) -> None:
    _flush_records(context)
    if context.info.is_main:
        if hooks.before_save is not None:
            hooks.before_save(context, context.state)
        context.state.last_checkpoint = context.checkpoints.save_last(_checkpoint(context))
    distributed.barrier(context.info)


def _flush_records(context: TrainContext) -> None:
    state = context.state
    if context.info.is_main and state.step_records:
        context.run_dir.append_jsonl("steps.jsonl", state.step_records)
    state.step_records = []


# ---------------------------------------------------------------------- the end


def _finish(context: TrainContext) -> TrainResult:
    cfg, state, splits, run_dir = context.config, context.state, context.splits, context.run_dir
    rows = run_dir.read_metrics() if context.info.is_main else []
    result = TrainResult(run_dir.path, None, True, state.step, state.epoch, best_val_acc=state.best["val_acc"])
    if not context.info.is_main:
        distributed.barrier(context.info)
        return result
    model = _best_model(context)
    test_set, split_name = (splits.test, "test") if splits.test is not None else (splits.val, "val")
    if splits.test is None:
        log.warning("the data has no test split: the final evaluation uses the validation split, which also chose the best epoch (optimistic)")
    # The model file and summary come first: whatever the evaluation below does, the trained
    # model is on disk, and a --resume after a crash there has nothing left to repeat.
    test_acc = None
    extra = {
        "run_name": run_dir.path.name,
        "recipe": cfg.recipe,
        "best_val_acc": state.best["val_acc"],
        "best_epoch": state.best["epoch"],
        "test_acc": test_acc,
        "test_split": split_name,
        "data": cfg.data.spec,
        "epochs": state.epoch,
        "steps": state.step,
        "seed": cfg.seed,
    }
    from resnetlab.models.files import save_model_file

    save_model_file(model, run_dir.path / "model.safetensors", extra=extra)
    early = state.early_stop
    summary = {
        "model": model.meta.name,
        "params": sum(p.numel() for p in model.parameters()),
        "recipe": cfg.recipe,
        "data": cfg.data.spec,
        "seed": cfg.seed,
        "epochs": state.epoch,
        "steps": state.step,
        "train_time_s": state.elapsed(),
        "best_val_acc": state.best["val_acc"],
        "best_epoch": state.best["epoch"],
        "final_val_acc": rows[-1].get("val_acc") if rows else None,
        "test_acc": test_acc,
        "test_split": split_name,
        "skipped_steps": state.loop.skipped_total,
        "stopped_early": bool(early["stopped"]),
        **({"stopped_epoch": early["epoch"], "stop_reason": early["reason"]} if early["stopped"] else {}),
        "device": str(context.device),
        "precision": context.precision.name,
        "world_size": context.info.world_size,
        **_peak_memory(context.device),
    }
    run_dir.write_json("summary.json", summary)
    if test_set is not None and len(test_set) > 0:
        test_acc, report_error = _final_evaluation(context, model, test_set, split_name)
        summary.update(test_acc=test_acc, **_peak_memory(context.device), **({"eval_error": report_error} if report_error else {}))
        if test_acc is not None:
            update_model_extra(run_dir.path / "model.safetensors", {"test_acc": test_acc})
        run_dir.write_json("summary.json", summary)
    try:
        run_dir.plot_curves(rows)
    except Exception as exc:  # noqa: BLE001 - a picture must not fail a finished run
        log.warning("curves.png was not written (%s)", _reason(exc))
    result.model, result.test_acc, result.test_split = model, test_acc, split_name
    summary.update(baseline_summary(splits, state.best["val_acc"], test_acc, split_name))  # at chance? say so
    run_dir.write_json("summary.json", summary)
    result.summary = summary
    print(f"done: best val acc {pct(state.best['val_acc'])}, {split_name} acc {pct(test_acc)}{done_note(summary)} -> {run_dir.path}", flush=True)
    distributed.barrier(context.info)
    return result


def _best_model(context: TrainContext) -> nn.Module:
    """The unwrapped model with the best-on-validation weights (EMA weights when EMA is on)."""
    from resnetlab.engine.checkpoint import load_checkpoint

    model = context.raw
    source = _checkpoint(context)
    if context.checkpoints.best_path.exists():
        source = load_checkpoint(context.checkpoints.best_path, map_location=context.device)
    if source.get("ema") is not None:
        prefix = "module."
        model.load_state_dict({k[len(prefix):]: v for k, v in source["ema"].items() if k.startswith(prefix)})
    else:
        model.load_state_dict(source["model"])
    return model


def _final_evaluation(context: TrainContext, model: nn.Module, test_set, split_name: str) -> tuple[float | None, str | None]:
    """Evaluate the held-out split once: the caller's report when given, else plain accuracy.

    Returns ``(accuracy, why the report failed or None)``. The model is already saved, so a
    failure here is a warning: the report falls back to plain accuracy, and that to None.
    """
    cfg, run_dir = context.config, context.run_dir
    report_error = None
    validation = context.splits.val if split_name == "test" else None
    try:
        from resnetlab.data.photo import for_model

        # Files-only splits (photo path) are decoded now, at the model's evaluation geometry.
        skip_bad = cfg.data.skip_bad
        test_set = for_model(test_set, model.meta, skip_bad) if test_set.files_only else test_set
        validation = (for_model(validation, model.meta, skip_bad) if validation is not None and validation.files_only
                      else validation)
    except Exception as exc:  # noqa: BLE001 - the model is saved; say why there is no accuracy
        log.warning("warning: the %s split could not be decoded (%s); the model file is saved", split_name, _reason(exc))
        return None, _reason(exc)
    if cfg.eval_report and context.final_report is not None:
        report_context = {"run": run_dir.path.name, "split": split_name, "recipe": cfg.recipe, "data": cfg.data.spec}
        try:
            # A separate test split leaves the validation split free for the report's temperature fit.
            report = context.final_report(model, test_set, run_dir.eval_dir, device=str(context.device), batch_size=cfg.eval_batch_size,
                                          tta=cfg.tta, context=report_context, validation=validation)
            _keep_calibration(model, run_dir.path / "model.safetensors")
            return float(report["accuracy"]), None
        except Exception as exc:  # noqa: BLE001 - any report bug or disk problem; the model is safe
            report_error = _reason(exc)
            log.warning("warning: the evaluation report failed (%s); the model file and summary.json are saved; "
                        "retry the report with: resnetlab evaluate %s", report_error, run_dir.path)
    from resnetlab.data import DeviceLoader

    try:
        loader = DeviceLoader(test_set, cfg.eval_batch_size, train=False, device=context.device, mean=model.meta.mean, std=model.meta.std,
                              resize_to=context.image_size)
        return evaluate(model, loader.epoch(0), context.precision)["acc"], report_error
    except Exception as exc:  # noqa: BLE001 - same reason as above
        log.warning("warning: the %s accuracy could not be measured (%s); the model file is saved", split_name, _reason(exc))
        return None, report_error or _reason(exc)


def _keep_calibration(model: nn.Module, path: Path) -> None:
    """Write a temperature the final report fitted (``model.extra["calibration"]``) into the saved model file."""
    record = (getattr(model, "extra", None) or {}).get("calibration")
    if record:
        from resnetlab.models.files import update_model_meta

        update_model_meta(path, {"temperature": record["temperature"]})
        update_model_extra(path, {"calibration": record})


# ---------------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _first_batch(train_set, model: nn.Module, device: torch.device, cfg: TrainConfig) -> torch.Tensor:
    """Normalized, un-augmented training images for data-dependent initialization (e.g. whitening)."""
    from resnetlab.data import DeviceLoader

    size = min(len(train_set), 5000)
    if train_set.files_only:  # decode just the images used here, at the train size
        from resnetlab.data.photo import eval_imageset

        train_set = eval_imageset(train_set.subset(torch.arange(size)), cfg.data.image_size, 1.0, skip_bad=cfg.data.skip_bad)
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
