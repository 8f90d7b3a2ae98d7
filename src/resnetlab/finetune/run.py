"""``finetune(config, options)``: weights source + head/stem adaptation + strategy, then ``engine.train``.

Fine-tuning has no training loop of its own: it builds the model and the parameter groups, hands
them to :func:`resnetlab.engine.train` (same run directory, resume, DDP, progress and final
evaluation report as ``resnetlab train``), and adds two records to the run directory:
``finetune.json`` (the options and where the weights came from) and ``finetune_keys.json`` (which
tensors were loaded, adapted, new or dropped).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from resnetlab.config import TrainConfig, section_from_dict
from resnetlab.data.splits import load_splits_for
from resnetlab.errors import ConfigError
from resnetlab.finetune.adapt import STEM_INITS, KeyReport, build_model
from resnetlab.finetune.sources import SourceWeights, load_source
from resnetlab.finetune.strategy import FineTuneSchedule, StrategyConfig
from resnetlab.runs import RunDir

log = logging.getLogger(__name__)

AUTO_MODEL = "auto"  # model.name meaning "the source's architecture"
OPTIONS_FILE = "finetune.json"
KEYS_FILE = "finetune_keys.json"

# Defaults under every fine-tuning recipe: training from scratch wants lr 0.1 and long schedules;
# pretrained weights want a 10x smaller lr, a short warm-up so the random head's first gradients do
# not wreck the features, and a cosine decay (Kornblith et al. 2019, "Do Better ImageNet Models
# Transfer Better?", fine-tune with SGD-momentum and a decaying lr; Goyal et al. 2017 for warm-up).
FINETUNE_DEFAULTS = {
    "model": {"name": AUTO_MODEL},
    # Translation by up to 4 px and flips (He et al. 2016's CIFAR augmentation); mild at any size.
    "augment": {"crop_padding": 4, "flip": True},
    "epochs": 10,
    "batch_size": 64,
    "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    "schedule": {"name": "cosine", "warmup": 1, "unit": "epochs"},
}


@dataclass
class FinetuneOptions:
    """The fine-tuning switches (the ``finetune:`` section of a recipe; CLI flags override)."""

    source: str | None = None  # --from: run dir, model/state-dict file, torchvision:..., timm:...
    strategy: str = "full"  # linear-probe | full | gradual
    lr_head: float | None = None  # absolute lr of the new head (default: optim.lr)
    lr_backbone: float | None = None  # absolute lr of the top backbone stage (default: optim.lr)
    layer_decay: float | None = None  # each lower stage trains at this times the stage above
    unfreeze_every: int = 1  # gradual: epochs between unfreezing one more stage
    freeze_bn: bool = False  # keep BatchNorm statistics fixed everywhere
    adapt_stem: bool = False  # 32x32 data: 3x3 stride-1 first conv, no max-pool
    stem_init: str = "resize"  # how the 3x3 stem is made from a 7x7 one: resize | center
    reset_head: bool = False  # new classifier even when the source's already fits

    def strategy_config(self) -> StrategyConfig:
        return StrategyConfig(self.strategy, self.lr_head, self.lr_backbone, self.layer_decay, self.unfreeze_every, self.freeze_bn)

    def validate(self) -> None:
        self.strategy_config().validate()
        if self.stem_init not in STEM_INITS:
            raise ConfigError(f"--stem-init {self.stem_init!r}: expected one of {', '.join(STEM_INITS)}")

    @classmethod
    def from_dict(cls, data: dict | None) -> "FinetuneOptions":
        data = {("source" if k == "from" else k.replace("-", "_")): v for k, v in (data or {}).items()}
        return section_from_dict(cls, data, "finetune.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Prepared:
    """Everything ``engine.train`` needs beyond the config."""

    model: nn.Module
    schedule: FineTuneSchedule
    source: SourceWeights | None
    keys: KeyReport | None

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.schedule.apply(epoch, model, optimizer)


# --------------------------------------------------------------------------- entry points


def prepare_pretrained(config: TrainConfig, options: FinetuneOptions, splits, keep_grads: bool = False) -> Prepared:
    """The pretrained model adapted to ``splits`` (head, stem) with its strategy's parameter groups.

    Sets ``config.model.name``/``options`` to the built architecture. Shared by :func:`finetune` and
    the learning-rate range test (``resnetlab lr-find --from``).
    """
    check_options(options)
    source = load_source(options.source)
    torch.manual_seed(config.seed)  # the new head's init: a run is a function of its seed
    model_name = None if config.model.name == AUTO_MODEL else config.model.name
    model, keys = build_model(
        source, splits.train.num_classes, model_name=model_name, classes=list(splits.train.classes),
        # model.options.cifar_stem (as in the CIFAR ResNet-18 train recipes) asks for the same stem.
        adapt_stem=options.adapt_stem or bool(config.model.options.get("cifar_stem")),
        stem_init=options.stem_init, reset_head=options.reset_head,
    )
    config.model.name = model.meta.name
    config.model.options = dict(model.meta.options)
    _check_input_size(model, config.data.image_size or splits.train.image_size[0])
    return _prepare(model, config, options, source, keys, keep_grads=keep_grads)


def check_options(options: FinetuneOptions) -> None:
    """The fine-tuning options' own checks, before any data loads."""
    options.validate()
    if not options.source:
        raise ConfigError("--from: say where the pretrained weights come from (run dir, .pth/.safetensors file, torchvision:NAME.WEIGHTS or timm:NAME)")


def finetune(config: TrainConfig, options: FinetuneOptions, *, splits=None, hooks=None):
    """Fine-tune per ``options`` and ``config``; returns the engine's ``TrainResult``.

    ``config.model.name`` names the architecture to build (``auto``: the source's); the rest of the
    config (data, optimizer, schedule, epochs, run dir, device...) means what it means in ``train``.
    """
    from resnetlab.engine import train
    from resnetlab.engine.distributed import detect
    from resnetlab.engine.hooks import with_epoch_start
    from resnetlab.runs import default_run_dir

    check_options(options)
    config = copy.deepcopy(config)
    if splits is None:
        from resnetlab.data.photo import files_only_wanted

        # Photo path: files-only, as the trainer loads it (a --budget probe times decoded batches: it decodes).
        files_only = files_only_wanted(config.data, config.augment) and config.budget.seconds is None
        splits = load_splits_for(config.data, files_only=files_only)
    prepared = prepare_pretrained(config, options, splits, keep_grads=detect().enabled)
    model = prepared.model

    run_dir = RunDir(config.run_dir or default_run_dir(f"{model.meta.name}-ft", config.name))
    if run_dir.holds_run():  # checked again as the engine creates it; this is only the early answer
        raise ConfigError(f"run directory {run_dir.path} already holds a run: continue it with --resume {run_dir.path} or choose another --run-dir")
    config.run_dir = str(run_dir.path)
    if config.budget.seconds is not None and config.budget.chosen is None:
        from resnetlab.budget.run import check_budget_allowed, plan_config

        check_budget_allowed()
        config = plan_config(config, config.budget.seconds, splits, final_report=_final_report(config), model=prepared.model)
    if detect().is_main:
        _print_plan(prepared, config)
    # The records go into the run directory as the engine creates it, after its checks have passed.
    return train(config, model=prepared.model, splits=splits, param_groups=prepared.schedule.groups,
                 hooks=with_epoch_start(hooks, prepared.on_epoch_start),
                 records=_records(options, prepared), final_report=_final_report(config))


def resume(run_dir: str | Path, config: TrainConfig | None = None, *, splits=None, hooks=None):
    """Continue a fine-tuning run from its newest intact checkpoint (model rebuilt from its metadata)."""
    from resnetlab.config import read_config
    from resnetlab.engine.checkpoint import CheckpointManager
    from resnetlab.engine import train
    from resnetlab.engine.distributed import detect
    from resnetlab.engine.hooks import with_epoch_start
    from resnetlab.models.metadata import validate_meta
    from resnetlab.models.registry import create_model

    run_dir = Path(run_dir)
    record = RunDir(run_dir).read_json(OPTIONS_FILE)
    if record is None:
        raise ConfigError(f"--resume {run_dir}: no {OPTIONS_FILE} there (not a fine-tuning run; use 'resnetlab train --resume')")
    if not isinstance(record.get("options"), dict):
        raise ConfigError(f"--resume {run_dir}: {OPTIONS_FILE} holds no options mapping (the file was edited or cut)")
    options = FinetuneOptions.from_dict(record["options"])
    config = config if config is not None else read_config(run_dir / "config.yaml")
    # Only the architecture is needed: the engine loads the weights from the same checkpoint.
    checkpoint, _ = CheckpointManager(run_dir / "checkpoints").load_newest_intact(map_location="cpu")
    meta = validate_meta(checkpoint.get("meta"), run_dir / "checkpoints")
    model = create_model(meta.name, num_classes=meta.num_classes, **meta.options)
    model.meta = meta
    prepared = _prepare(model, config, options, None, None, keep_grads=detect().enabled)
    return train(config, model=model, splits=splits, param_groups=prepared.schedule.groups,
                 hooks=with_epoch_start(hooks, prepared.on_epoch_start), resume_from=run_dir, final_report=_final_report(config))


def _final_report(config: TrainConfig):
    """The evaluation report as the engine's final evaluation, imported only when the config asks for it (slow import)."""
    if not config.eval_report:
        return None
    from resnetlab.evaluation import evaluate_model

    return evaluate_model


def build_config(recipe: str | Path | dict | None = None, overrides: dict | None = None) -> tuple[TrainConfig, FinetuneOptions]:
    """Fine-tuning defaults <- recipe <- overrides, split into the train config and the finetune options.

    ``finetune.*`` keys (in the recipe's ``finetune:`` section or as dotted overrides) go to
    :class:`FinetuneOptions`; everything else is a ``TrainConfig`` key.
    """
    from resnetlab.config import build_config as build_train_config, load_recipe

    from resnetlab.config import small_data_mode

    data = copy.deepcopy(FINETUNE_DEFAULTS)
    user = copy.deepcopy(recipe) if isinstance(recipe, dict) else load_recipe(recipe) if recipe is not None else {}
    data = _merge(data, copy.deepcopy(user))
    if recipe is not None and not isinstance(recipe, dict):
        data["recipe"] = str(recipe)
    section = dict(data.pop("finetune", None) or {})
    train_overrides = {}
    for key, value in (overrides or {}).items():
        if key.startswith("finetune."):
            section[key.removeprefix("finetune.")] = value
        else:
            train_overrides[key] = value
    if data.get("small_data", "auto") == "auto":
        # FINETUNE_DEFAULTS' batch and lr are defaults too: only the user's recipe and flags count as set.
        for key, value in train_overrides.items():
            _set_path(user, key, value)
        data["small_data"] = small_data_mode(user)
        if data["small_data"] == "batch+lr" and any(section.get(k) is not None for k in ("lr_head", "lr_backbone")):
            # Per-stage rates are absolute and relative to optim.lr: scaling optim.lr would scale them too.
            data["small_data"] = "batch"
    return build_train_config(data, train_overrides), FinetuneOptions.from_dict(section)


def _set_path(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {}) if isinstance(data.get(part, {}), dict) else {}
    data[last] = value


# --------------------------------------------------------------------------- helpers


def _prepare(model, config: TrainConfig, options: FinetuneOptions, source, keys, keep_grads: bool) -> Prepared:
    schedule = FineTuneSchedule(
        model, options.strategy_config(), config.optim.lr, config.optim.weight_decay,
        config.optim.no_decay_bn_bias, keep_grads=keep_grads,
    )
    schedule.apply(0, model)  # before DDP wraps the model: it registers only parameters that need grads
    return Prepared(model, schedule, source, keys)


def _check_input_size(model: nn.Module, height: int) -> None:
    """Warn about the classic mistake: 32x32 images into a 7x7/stride-2 + max-pool stem."""
    conv1 = getattr(model, "conv1", None)
    if isinstance(conv1, nn.Conv2d) and conv1.stride[0] > 1 and height <= 64:
        log.warning(
            "%dx%d inputs into %s's ImageNet stem (stride-4 downsampling before layer1): the last stage sees "
            "1x1 maps. Use --adapt-stem or --resize 128 (or more) for small images.", height, height, model.meta.name,
        )


def _records(options: FinetuneOptions, prepared: Prepared) -> dict[str, str]:
    """finetune.json and finetune_keys.json (name -> text) for the new run directory."""
    record = {
        "options": options.to_dict(),
        "source": prepared.source.describe() if prepared.source else None,
        "strategy": prepared.schedule.describe(),
        "unfreeze_plan": [{"epoch": e, "stages": s} for e, s in prepared.schedule.unfreeze_epochs(1000)][:32],
        "keys": {k: len(v) for k, v in prepared.keys.to_dict().items()} if prepared.keys else None,
    }
    records = {OPTIONS_FILE: json.dumps(record, indent=2) + "\n"}
    if prepared.keys is not None:
        records[KEYS_FILE] = json.dumps(prepared.keys.to_dict(), indent=1) + "\n"
    return records


def _print_plan(prepared: Prepared, config: TrainConfig) -> None:
    source, schedule = prepared.source, prepared.schedule
    if source is not None:
        print(f"weights: {source.origin} ({source.kind}, {source.architecture or 'unknown architecture'})", flush=True)
        print(f"normalization: {source.normalization_note}", flush=True)
    if prepared.keys is not None:
        print(f"keys: {prepared.keys.summary()}", flush=True)
    scales = ", ".join(f"{k} {v * config.optim.lr:.3g}" for k, v in schedule.scales.items())
    print(f"strategy: {schedule.config.strategy}; lr per stage: {scales}", flush=True)
    if schedule.config.strategy == "gradual":
        plan = "; ".join(f"epoch {e + 1}: +{', '.join(s)}" for e, s in schedule.unfreeze_epochs(config.epochs))
        print(f"unfreezing: {plan}", flush=True)


def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base
