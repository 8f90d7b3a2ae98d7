"""Evaluate a model given by path on a dataset given by spec (the library side of ``resnetlab evaluate``)."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import torch

from resnetlab.errors import CheckpointError, ConfigError, DataError
from resnetlab.evaluation.evaluate import evaluate_model
from resnetlab.runs import RunDir
from resnetlab.utils.device import resolve_device

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train", "all")


def load_model_for_eval(path: str | Path, device: str = "cpu", source_format: str | None = None):
    """An ``nn.Module`` (run dir, .safetensors, .pt, or an outside checkpoint recognised by
    :mod:`resnetlab.models.importers`) or an ONNX ``Predictor`` (.onnx)."""
    from resnetlab.models.importers import load_any_model, split_format_prefix

    source_format, text = split_format_prefix(path, source_format)
    path = Path(text)
    if not path.exists():
        raise CheckpointError(f"model not found: {path} (expected a run directory, a .safetensors/.pt file, an .onnx export "
                              "or a checkpoint of akamaster, kuangliu, torchvision or timm)")
    if path.suffix.lower() == ".onnx" and source_format is None:
        from resnetlab.inference import Predictor

        return Predictor.load(path, device=device)
    return load_any_model(path, source_format, map_location=device)


def _default_out_dir(model_path: Path, run_dir: Path | None, split: str) -> Path:
    if run_dir is not None:
        return run_dir / f"eval-{split}"
    name = model_path.stem if model_path.stem not in ("model", "best", "last") else f"{model_path.parent.name}-{model_path.stem}"
    return Path(f"eval-{name}")


def evaluate_path(model_path: str | Path, data: str | None = None, *, split: str | None = None, out_dir: str | Path | None = None,
                  tta: bool = False, batch_size: int = 512, device: str | None = "auto", data_dir: str | None = None,
                  image_size: int | None = None, command: str | None = None, source_format: str | None = None,
                  corruptions: dict | None = None) -> tuple[dict, Path]:
    """Load the model and the data split, run :func:`evaluate_model`, return ``(metrics, out_dir)``.

    When the model lives in a run directory its ``config.yaml`` supplies the data spec (if ``data`` is
    None), the split seed and validation size (so ``split="val"`` is the run's own held-out split),
    the image size and the data directory; explicit arguments win.

    ``split=None`` means ``test``, except for other data than the run's own that has neither a
    ``val/`` nor a ``test/`` folder (a plain ``<class>/*.jpg`` tree): then every image is evaluated
    (``all``), resized to the model's input size. Classes are matched to the model's by name.

    ``corruptions`` (``evaluate --corruptions``): keyword arguments of
    :func:`resnetlab.evaluation.robustness.evaluate_corruptions` (types, severities, limit, seed),
    plus ``baseline``: the path of a baseline model for the mCE, loaded like MODEL.
    """
    if split is not None and split not in SPLITS:
        raise ConfigError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    device = resolve_device(device)
    model_path = Path(str(model_path))
    run = RunDir.find(model_path)
    run_dir = run.path if run else None
    data_cfg = _data_config(run)
    if not (data or data_cfg.get("spec")):  # before the model loads, which can take seconds
        raise ConfigError("--data is required (cifar10, cifar100, an archive or an image folder) unless MODEL is a run directory")
    model = load_model_for_eval(model_path, device=device, source_format=source_format)
    imageset, spec, split = load_eval_split(model_path, model, data, split, data_dir=data_dir, image_size=image_size)
    out = Path(out_dir) if out_dir else _default_out_dir(model_path, run_dir, split)
    context = {
        "model": {"path": str(model_path), "run_dir": str(run_dir) if run_dir else None},
        "data": {"spec": str(spec), "split": split, "data_dir": data_dir or data_cfg.get("data_dir")},
        "command": command or shlex.join(sys.argv),
    }
    extra = getattr(model, "extra", None) or {}
    if extra.get("recipe") or extra.get("run_name"):
        context["model"]["trained_with"] = ", ".join(f"{k} {extra[k]}" for k in ("run_name", "recipe", "epochs") if extra.get(k))
    if isinstance(extra.get("imported"), dict):
        context["model"]["imported"] = extra["imported"]
    robustness = _corruptions(model, imageset, corruptions, device, batch_size) if corruptions is not None else None
    metrics = evaluate_model(model, imageset, out, device=device, batch_size=batch_size, tta=tta, context=context,
                             corruptions=robustness)
    return metrics, out


def load_eval_split(model_path: str | Path, model, data: str | None, split: str | None, *, data_dir: str | None = None,
                    image_size: int | None = None) -> tuple["ImageSet", str, str]:
    """``(imageset, spec, split)``: the split of ``data`` (default: the run's data) that ``model`` is
    evaluated or calibrated on, relabelled in the model's class order (see :func:`evaluate_path`)."""
    if split is not None and split not in SPLITS:
        raise ConfigError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    data_cfg = _data_config(RunDir.find(Path(str(model_path))))
    spec = data or data_cfg.get("spec")
    if not spec:
        raise ConfigError("--data is required (cifar10, cifar100, an archive or an image folder) unless MODEL is a run directory")

    from resnetlab.data import load_splits

    same_data = data is None or str(data) == str(data_cfg.get("spec"))
    # Outside data is evaluated whole unless it has its own splits: nothing is held out of it.
    whole = not same_data and split in (None, "all")
    splits = load_splits(
        spec,
        data_dir=data_dir or data_cfg.get("data_dir"),
        image_size=image_size or (data_cfg.get("image_size") if same_data else _model_side(model)),
        val_size=0 if whole or split == "all" else (data_cfg.get("val_size") if data_cfg else None),
        seed=int(data_cfg.get("split_seed", data_cfg.get("seed", 0)) or 0),
        limit_train=data_cfg.get("limit_train") if same_data else None,
    )
    if split is None:
        split = "all" if whole and splits.val is None and splits.test is None else "test"
        if split == "all":
            log.info("%s has no val/ or test/ folder: evaluating all its %d images", spec, len(splits.train))
    imageset = _concat([splits.train, splits.val, splits.test]) if split == "all" else getattr(splits, split)
    if imageset is None or len(imageset) == 0:
        available = [s for s in SPLITS[:3] if getattr(splits, s) is not None and len(getattr(splits, s))]
        raise DataError(f"--split {split}: the data {spec} has no {split} split (available: {', '.join(available)}; "
                        "or --split all)")
    from resnetlab.data.photo import for_model

    imageset = for_model(imageset, model.meta)  # the model's recorded evaluation crop (photos: crop_pct 0.875)
    return match_classes(imageset, model, spec), str(spec), split


def _data_config(run: RunDir | None) -> dict:
    """The ``data:`` section of the run's config.yaml ({} outside a run)."""
    data_cfg = (run.read_config() if run else {}).get("data") or {}
    return data_cfg if isinstance(data_cfg, dict) else {}


def _corruptions(model, imageset, options: dict, device, batch_size: int) -> dict:
    """``evaluate --corruptions``: the corruption sweep, with the baseline model loaded as MODEL is."""
    from resnetlab.evaluation.robustness import evaluate_corruptions

    options = dict(options)
    baseline_path = options.pop("baseline", None)
    baseline = None
    if baseline_path is not None:
        try:
            baseline = load_model_for_eval(baseline_path, device=device)
        except CheckpointError as exc:  # say which of the two models is at fault
            raise CheckpointError(f"--baseline {baseline_path}: {exc}") from exc
    return evaluate_corruptions(model, imageset, device=device, batch_size=batch_size, baseline=baseline,
                                baseline_name=str(baseline_path) if baseline_path else None, **options)


def match_classes(imageset, model, spec) -> "ImageSet":
    """``imageset`` relabelled in the model's class order, matching classes by name.

    A folder may hold any subset of the model's classes, in any order; a class the model does not
    know is an error that lists every mismatch. Models without class names keep index order.
    """
    from resnetlab.data.imageset import ImageSet
    from resnetlab.evaluation.predictions import model_classes

    names = model_classes(model)
    if names is None or list(names) == list(imageset.classes):
        return imageset
    unknown = [c for c in imageset.classes if c not in names]
    if unknown:
        def few(items):
            return ", ".join(items[:10]) + (f" ... (+{len(items) - 10})" if len(items) > 10 else "")

        raise DataError(f"{spec}: class names of the data do not match the model's: {len(unknown)} class folder(s) "
                        f"the model does not know: {few(unknown)}; "
                        f"the model's {len(names)} classes are {few(list(names))}")
    index = torch.tensor([list(names).index(c) for c in imageset.classes], dtype=torch.int64)
    return ImageSet(images=imageset.images, labels=index[imageset.labels], classes=list(names), mean=imageset.mean,
                    std=imageset.std, source=imageset.source, paths=imageset.paths)


def _concat(parts: list) -> "ImageSet | None":
    from resnetlab.data.imageset import ImageSet

    parts = [p for p in parts if p is not None and len(p)]
    if len(parts) <= 1:
        return parts[0] if parts else None
    paths = [x for p in parts for x in p.paths] if all(p.paths is not None for p in parts) else None
    return ImageSet(images=torch.cat([p.images for p in parts]), labels=torch.cat([p.labels for p in parts]),
                    classes=list(parts[0].classes), mean=parts[0].mean, std=parts[0].std, source=parts[0].source, paths=paths)


def _model_side(model) -> int | None:
    """The square input side the model takes (images of outside data are resized to it), else None."""
    size = getattr(getattr(model, "meta", None), "input_size", None)
    return int(size[1]) if size and len(size) == 3 and size[1] == size[2] else None


def summary_lines(metrics: dict, out_dir: Path) -> list[str]:
    """A few lines for the terminal."""
    from resnetlab.evaluation.report import baseline_text

    ci = metrics["accuracy_ci"]
    cal = metrics["calibration"]
    lines = [
        f"{metrics['context']['model']['name']} on {metrics['context']['data'].get('spec') or metrics['context']['data']['source']} "
        f"[{metrics['context']['data'].get('split') or '?'}], {metrics['num_samples']} images",
        f"accuracy {metrics['accuracy']:.2%} (95% CI {ci['low']:.2%} - {ci['high']:.2%})"
        + (f", top-5 {metrics['top5_accuracy']:.2%}" if metrics["num_classes"] > 5 else "")
        + f", loss {metrics['loss']:.4f}"
        + baseline_text(metrics, "; "),
        f"macro F1 {metrics['macro']['f1']:.4f}, macro AUC {metrics['macro']['auc'] if metrics['macro']['auc'] is None else round(metrics['macro']['auc'], 4)}, "
        f"ECE {cal['ece']:.2%}",
    ]
    tta = metrics.get("tta") or {}
    if tta.get("enabled"):
        lines.append(f"TTA ({len(tta['views'])} views): {tta['accuracy_without']:.2%} -> {tta['accuracy_with']:.2%}")
    if metrics["most_confused"]:
        lines.append("most confused: " + ", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})" for p in metrics["most_confused"][:3]))
    lines.append(f"report: {out_dir / 'report.html'}")
    return lines
