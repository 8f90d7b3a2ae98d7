"""Training configuration: typed dataclasses, YAML recipes, command-line overrides.

A run's config is built in three layers, later layers winning: the dataclass defaults, a YAML
recipe (``recipes/*.yaml``), then overrides (explicit CLI flags and ``--set key.sub=value``).
The resolved config is written as ``config.yaml`` into every run directory, and ``--resume``
reads it back, so a run can always be repeated from its directory alone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resnetlab.data.augment import AugmentConfig
from resnetlab.errors import ConfigError


@dataclass
class DataConfig:
    spec: str = "cifar10"  # cifar10, cifar100, an archive or folder path (see CLI.md)
    data_dir: str | None = None  # where cifar10/cifar100 archives are found or downloaded
    image_size: int | None = None  # train at this square size (image folders are resized on load, CIFAR per batch)
    val_size: int | None = None  # images held out of train for validation (default: 5000 for CIFAR, else 10%)
    split_seed: int = 0  # fixed across --seeds so every seed is judged on the same validation set
    limit_train: int | None = None  # train on the first N images of a stratified shuffle
    skip_bad: bool = False  # skip unreadable images instead of failing
    class_balance: str = "none"  # none | weighted-loss | sampler (for imbalanced image folders)
    # Photo path for image folders (resnetlab.data.photo): auto | memory | stream. auto takes it when the
    # augment recipe sets rrc_scale and picks memory or stream by the decoded size against free memory.
    mode: str = "auto"
    crop_pct: float | None = None  # evaluation centre crop recorded in the model (None: 0.875 on the photo path)


@dataclass
class ModelConfig:
    name: str = "resnet20"
    options: dict = field(default_factory=dict)  # **options passed to create_model
    # NHWC memory format. auto: on (measured +15-17% training img/s on this project's 2-core AVX2
    # CPU for resnet20/56/18_cifar and fastnet94, benchmarks/speed.md; the usual choice on GPUs).
    channels_last: bool | str = "auto"
    # torch.compile the model. auto: on CUDA only (on the CPU it cost ~50 s of compile time and gave
    # no measured speed-up, benchmarks/speed.md); true: on any device. reduce-overhead: torch.compile's
    # CUDA-graph mode (CUDA only): each forward/backward is replayed as one graph launch, for small
    # nets at batch 128 whose step is bound by kernel launches rather than arithmetic (issue 19).
    compile: bool | str = False


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw | muon (Muon on conv filters, Nesterov SGD on the rest)
    lr: float = 0.1  # base learning rate (for the global batch)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_decay_bn_bias: bool = False  # exclude BatchNorm weights and biases from weight decay
    bias_lr_scale: float = 1.0  # lr multiplier of that no-decay group (airbench's "bias_scaler": 64)
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw
    eps: float = 1e-8  # adam/adamw
    label_smoothing: float = 0.0  # Szegedy et al. 2016
    grad_clip: float | None = None  # max global L2 norm of the gradient
    muon_lr: float = 0.05  # muon: learning rate of the conv filters (lr applies to the other parameters)
    muon_momentum: float = 0.6  # muon: Nesterov momentum of the conv filters
    muon_ns_steps: int = 5  # muon: Newton-Schulz iterations per update (airbench94_muon: 3)
    # muon: before each step rescale every filter tensor to Frobenius norm sqrt(out_channels), as
    # airbench94_muon does (BN after each conv makes the scale free; this pins the relative step size)
    muon_normalize: bool = False
    lookahead_steps: int | None = None  # Lookahead (Zhang et al. 2019): sync slow weights every k steps
    lookahead_alpha: float = 0.5  # Lookahead: slow weights move this fraction towards the fast ones


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # constant | step | multistep | cosine | onecycle
    unit: str = "epochs"  # unit of milestones, step_size and warmup: epochs | steps
    milestones: list[float] = field(default_factory=list)  # multistep: multiply lr by gamma at each
    step_size: float = 30  # step: multiply lr by gamma every step_size units
    gamma: float = 0.1
    warmup: float = 0  # linear warm-up length (Goyal et al. 2017), in `unit`
    warmup_start_factor: float = 0.0  # warm-up starts at base_lr * this factor
    min_lr: float = 0.0  # cosine: final lr
    pct_start: float = 0.25  # onecycle: fraction of training spent increasing the lr
    div_factor: float = 25.0  # onecycle: start lr = lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = start lr / final_div_factor
    anneal: str = "cos"  # onecycle: shape of the decay after the peak: cos | linear
    # He et al. 2016, Sec. 4.2 (ResNet-110): "we use 0.01 to warm up the training until the
    # training error is below 80% (about 400 iterations), and then go back to 0.1". The switch is
    # triggered by the measured running training error, not a fixed step count.
    warmup_until_train_error: float | None = None  # e.g. 0.8; None disables
    warmup_lr: float = 0.01
    warmup_window: int = 50  # steps over which the running training error is measured


BUDGET_MACHINE_CLASSES = ("fp32_cpu", "bf16_cpu", "gpu")  # which plan table applies (resnetlab.budget.plans)


@dataclass
class BudgetConfig:
    """``--budget``: a wall-clock limit for the whole run, and the plan chosen for it (resnetlab.budget)."""

    seconds: float | None = None  # set by --budget; the run, final evaluation included, must end within it
    # Measured plan tables per machine class (fp32_cpu | bf16_cpu | gpu): lists of config overrides,
    # cheapest first, each setting epochs. Without one: the model's built-in table when there is no recipe
    # (resnetlab/budget/tables.py), else the recipe shortened to fewer epochs.
    plans: dict = field(default_factory=dict)
    chosen: dict | None = None  # written by the planner: the plan, its predicted time and the probe's figures


@dataclass
class EarlyStopConfig:
    """Stop when the validation metric has not improved for ``patience`` evaluations (off by default).

    The final model is then best.pt's (the best validation accuracy), as after any run.
    """

    patience: int | None = None  # evaluations without improvement before stopping (--early-stop); null: off
    metric: str = "val_acc"  # val_acc (higher is better) | val_loss (lower is better)
    min_delta: float = 0.0  # an improvement must exceed this to reset the count


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    epochs: int = 10
    max_steps: int | None = None  # when set, train for this many optimizer steps instead of `epochs`
    batch_size: int = 128  # global batch (split evenly across DDP processes)
    # Fit batch, lr and drop_last to a small training set (engine/small_data.py). auto: build_config
    # resolves it to batch+lr (neither set by recipe or flag), batch (lr set) or off (batch set);
    # the run records applied once done, so --resume never adapts twice.
    small_data: str = "auto"
    # Drop the last partial training batch. auto: yes, unless it would hide over 5% of the images.
    drop_last: bool | str = "auto"
    micro_batch: int | None = None  # images per forward/backward pass (per process); gradients add up to one step
    eval_batch_size: int = 512
    eval_every: int = 1  # validate every N epochs (and always after the last); best.pt is chosen among those
    threads: int | None = None  # torch intra-op CPU threads (default: torch's choice, one per core)
    # glibc: serve large blocks from the heap and keep freed memory in the process, so activations are
    # not page-faulted and zero-filled again every pass. auto: on for CPU training (+13-25% fastnet94
    # img/s measured, benchmarks/speed.md), off on GPUs; false: glibc's defaults.
    keep_host_memory: bool | str = "auto"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fastest | fp32 | bf16 | fp16 (engine/precision.py says what each picks)
    ema_decay: float | None = None  # exponential moving average of weights, e.g. 0.999
    tta: bool = False  # test-time augmentation in the final evaluation
    eval_report: bool = True  # write the full evaluation report (eval/); false: test accuracy only
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    keep_last: int = 2  # number of last-*.pt checkpoints kept
    nonfinite: str = "error"  # error | skip: what to do with a NaN/Inf loss or gradient
    tensorboard: bool = False
    sync_bn: bool = False  # SyncBatchNorm under DDP (GPU only)
    log_grad_norms: list[int] = field(default_factory=list)  # steps at which to record grad norms
    log_step_loss: bool = False  # write every step's loss to steps.jsonl
    recipe: str | None = None  # the recipe file this config came from
    run_dir: str | None = None  # default runs/<name>
    name: str | None = None  # default <model>-<date>-<time>

    def to_dict(self) -> dict:
        return _plain(asdict(self))


CHOICES = {
    "data.class_balance": ("none", "weighted-loss", "sampler"),
    "data.mode": ("auto", "memory", "stream"),
    "optim.name": ("sgd", "adam", "adamw", "muon"),
    "model.channels_last": (True, False, "auto"),
    "model.compile": (True, False, "auto", "reduce-overhead"),
    "schedule.name": ("constant", "step", "multistep", "cosine", "onecycle"),
    "schedule.unit": ("epochs", "steps"),
    "schedule.anneal": ("cos", "linear"),
    "precision": ("auto", "fastest", "fp32", "bf16", "fp16"),
    "keep_host_memory": (True, False, "auto"),
    "nonfinite": ("error", "skip"),
    "early_stop.metric": ("val_acc", "val_loss"),
    "small_data": ("auto", "batch+lr", "batch", "off", "applied"),
    "drop_last": (True, False, "auto"),
}


# --------------------------------------------------------------------------- building


def load_recipe(path: str | Path) -> dict:
    """The mapping in a YAML recipe file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"recipe not found: {path}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {yaml_error_summary(exc)}") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise ConfigError(f"recipe {path}: cannot read it ({exc.strerror})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of config keys")
    _drop_debug_section(data, path)
    return data


def yaml_error_summary(exc: yaml.YAMLError, lines: bool = True) -> str:
    """One line from PyYAML's multi-line report: where (1-based line and column) and what.

    PyYAML prints the offending source line and a caret on lines of their own, which breaks the
    CLI's one-line error promise; the position says the same thing.
    """
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None and lines else ""
    return f"{where}{problem}" + (f" ({context})" if context else "")


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["optim.lr=0.05", "augment.flip=false"]`` -> ``{"optim.lr": 0.05, "augment.flip": False}`` (YAML-typed)."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        try:
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {yaml_error_summary(exc, lines=False)}") from None
    return overrides


def build_config(recipe: str | Path | dict | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- recipe (a path or a mapping) <- dotted overrides; validated."""
    data: dict = {}
    if isinstance(recipe, dict):
        data = _deep_copy(recipe)
    elif recipe is not None:
        data = load_recipe(recipe)
        data.setdefault("recipe", str(recipe))
    _drop_debug_section(data, "config")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    if data.get("small_data", "auto") == "auto":
        data["small_data"] = small_data_mode(data)
    config = _from_dict(TrainConfig, data, "")
    validate(config)
    return config


def _drop_debug_section(data: dict, where) -> None:
    """Configs written before issue 22 carry a ``debug:`` section of test hooks (now ``engine.TrainHooks``).

    Such a run directory or recipe must still load: the section is dropped with one warning line.
    A ``--set debug.*`` given now is still refused as an unknown key (it would silently do nothing).
    """
    if "debug" in data:
        logging.getLogger(__name__).warning("%s: ignoring its 'debug' section (test hooks are no longer config options)", where)
        del data["debug"]


def small_data_mode(data: dict) -> str:
    """``small_data`` for a recipe+overrides mapping: adapt only what the user did not set."""
    if "batch_size" in data:
        return "off"
    optim = data.get("optim")
    return "batch" if isinstance(optim, dict) and "lr" in optim else "batch+lr"


def config_from_dict(data: dict) -> TrainConfig:
    """Rebuild a config saved with :meth:`TrainConfig.to_dict` (e.g. from a checkpoint)."""
    return build_config(data)


def config_text(config: TrainConfig) -> str:
    """The YAML of ``config.yaml``."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def write_config(config: TrainConfig, path: str | Path) -> None:
    from resnetlab.utils.atomic import atomic_write_text

    atomic_write_text(path, config_text(config))


def read_config(path: str | Path) -> TrainConfig:
    return build_config(load_recipe(path))


def validate(config: TrainConfig) -> None:
    flat = _flatten(config.to_dict())
    for key, value in flat.items():
        # NaN compares false with every bound below, so it would slip through each range check.
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"config {key}={value!r}: must be a finite number")
    for key, allowed in CHOICES.items():
        if flat.get(key) not in allowed:
            raise ConfigError(f"config {key}={flat.get(key)!r}: expected one of {', '.join(map(str, allowed))}")
    crop_pct = config.data.crop_pct
    if crop_pct is not None and (isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1):
        raise ConfigError(f"config data.crop_pct={crop_pct!r} (--crop-pct): must be a number in (0, 1], e.g. 0.875")
    if config.batch_size < 1 or config.eval_batch_size < 1:
        raise ConfigError("config batch_size/eval_batch_size: must be >= 1")
    if config.max_steps is None and config.epochs < 1:
        raise ConfigError(f"config epochs={config.epochs}: must be >= 1 (or set max_steps)")
    if config.max_steps is not None and config.max_steps < 1:
        raise ConfigError(f"config max_steps={config.max_steps}: must be >= 1")
    if config.micro_batch is not None and config.micro_batch < 1:
        raise ConfigError(f"config micro_batch={config.micro_batch}: must be >= 1 (or null for one pass per batch)")
    if config.eval_every < 1:
        raise ConfigError(f"config eval_every={config.eval_every}: must be >= 1")
    if config.threads is not None and config.threads < 1:
        raise ConfigError(f"config threads={config.threads}: must be >= 1")
    if config.optim.lookahead_steps is not None and config.optim.lookahead_steps < 1:
        raise ConfigError(f"config optim.lookahead_steps={config.optim.lookahead_steps}: must be >= 1")
    if not 0.0 < config.optim.lookahead_alpha <= 1.0:
        raise ConfigError(f"config optim.lookahead_alpha={config.optim.lookahead_alpha}: must be in (0, 1]")
    if config.optim.muon_ns_steps < 1:
        raise ConfigError(f"config optim.muon_ns_steps={config.optim.muon_ns_steps}: must be >= 1")
    if config.keep_last < 1:
        raise ConfigError(f"config keep_last={config.keep_last}: must be >= 1")
    if config.ema_decay is not None and not 0.0 < config.ema_decay < 1.0:
        raise ConfigError(f"config ema_decay={config.ema_decay}: must be in (0, 1)")
    if config.optim.bias_lr_scale <= 0:
        raise ConfigError(f"config optim.bias_lr_scale={config.optim.bias_lr_scale}: must be > 0")
    if config.optim.lr <= 0:
        raise ConfigError(f"config optim.lr={config.optim.lr}: must be > 0")
    if not 0.0 <= config.optim.label_smoothing < 1.0:
        raise ConfigError(f"config optim.label_smoothing={config.optim.label_smoothing}: must be in [0, 1)")
    optim = config.optim
    for key, value in (("weight_decay", optim.weight_decay), ("muon_lr", optim.muon_lr)):
        if value < 0:
            raise ConfigError(f"config optim.{key}={value}: must be >= 0")
    if len(optim.betas) != 2:
        raise ConfigError(f"config optim.betas={list(optim.betas)}: expected two numbers")
    for key, value in (("momentum", optim.momentum), ("muon_momentum", optim.muon_momentum),
                       ("betas", optim.betas[0]), ("betas", optim.betas[1])):
        if not 0.0 <= value < 1.0:  # >= 1 never forgets a gradient: the update grows without bound
            shown = list(optim.betas) if key == "betas" else value
            raise ConfigError(f"config optim.{key}={shown}: must be in [0, 1)")
    if optim.eps <= 0:
        raise ConfigError(f"config optim.eps={optim.eps}: must be > 0")
    if optim.grad_clip is not None and optim.grad_clip <= 0:
        raise ConfigError(f"config optim.grad_clip={optim.grad_clip}: must be > 0 (or null for no clipping)")
    data = config.data
    if data.limit_train is not None and data.limit_train < 1:
        raise ConfigError(f"config data.limit_train={data.limit_train} (--limit-train): must be >= 1 (or null for all images)")
    if data.val_size is not None and data.val_size < 0:
        raise ConfigError(f"config data.val_size={data.val_size} (--val-size): must be >= 0 (0: no validation split)")
    _check_budget(config.budget)
    if config.early_stop.patience is not None and config.early_stop.patience < 1:
        raise ConfigError(f"config early_stop.patience={config.early_stop.patience} (--early-stop): must be >= 1 (or null for off)")
    if config.early_stop.min_delta < 0:
        raise ConfigError(f"config early_stop.min_delta={config.early_stop.min_delta}: must be >= 0")
    if data.image_size is not None and data.image_size < 1:
        raise ConfigError(f"config data.image_size={data.image_size} (--image-size): must be >= 1 (or null for the images' own size)")


def _check_budget(budget: BudgetConfig) -> None:
    if budget.seconds is not None and not budget.seconds > 0:
        raise ConfigError(f"config budget.seconds={budget.seconds} (--budget): must be > 0")
    classes = BUDGET_MACHINE_CLASSES
    if not isinstance(budget.plans, dict):
        raise ConfigError(f"config budget.plans: expected a mapping of {', '.join(classes)} to lists of plans")
    for hardware, table in budget.plans.items():
        if hardware not in classes:
            raise ConfigError(f"config budget.plans.{hardware}: unknown machine class (expected {', '.join(classes)})")
        if not isinstance(table, list) or not table or not all(isinstance(p, dict) and ("epochs" in p or "max_steps" in p) for p in table):
            raise ConfigError(f"config budget.plans.{hardware}: expected a list of mappings of config overrides, each setting epochs")


def check_model(config: TrainConfig) -> None:
    """Fail now, not after the data has loaded, on an unknown model name or options its builder refuses.

    The model is built on the meta device: no memory and no initialization, only the builder's checks.
    """
    import torch

    from resnetlab.models.registry import create_model

    try:
        with torch.device("meta"):
            create_model(config.model.name, num_classes=2, **config.model.options)
    except ConfigError as exc:
        raise ConfigError(f"config model: {exc}") from None
    except (TypeError, ValueError, AssertionError) as exc:  # a builder refusing a value (e.g. depth=7)
        raise ConfigError(f"config model.options={config.model.options!r}: model {config.model.name!r} refuses them ({exc})") from None


# --------------------------------------------------------------------------- helpers


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"config key {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def section_from_dict(cls, data: Any, prefix: str = ""):
    """Build the config dataclass ``cls`` from a mapping with the checks recipes get (unknown keys, types).

    ``prefix`` names the section in error messages (``"finetune."``). Other packages' option
    dataclasses (``finetune.run.FinetuneOptions``) read their YAML through this.
    """
    return _from_dict(cls, data, prefix)


def _from_dict(cls, data: Any, prefix: str):
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"config {prefix.rstrip('.') or 'root'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'; known keys here: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(f"{prefix}{key}", value, hints[key])
    return cls(**kwargs)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation ``hint``; accept the obvious conversions (int -> float)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, f"{key}.")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config {key}: bad value {value!r}")
    if hint is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config {key}={value!r}: expected a list")
        inner = args[0] if args else Any
        items = [_coerce(key, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config {key}={value!r}: expected a mapping")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config {key}={value!r}: expected true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config {key}={value!r}: expected an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config {key}={value!r}: expected a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config {key}={value!r}: expected a string")
    return value


def _plain(value: Any) -> Any:
    """Tuples -> lists so the YAML is plain and safe_load-able."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("options",):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _deep_copy(data: dict) -> dict:
    import copy

    return copy.deepcopy(data)
