"""Evaluate a model given by path on a dataset given by spec (the library side of ``resnetlab evaluate``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch
import yaml

from resnetlab.errors import CheckpointError, ConfigError, DataError
from resnetlab.evaluation.evaluate import evaluate_model

SPLITS = ("test", "val", "train")


def find_run_dir(path: Path) -> Path | None:
    """The run directory holding ``path`` (itself, its model file, or a checkpoint under checkpoints/)."""
    for candidate in (path, path.parent, path.parent.parent):
        if candidate.is_dir() and (candidate / "config.yaml").is_file():
            return candidate
    return None


def read_run_config(run_dir: Path | None) -> dict:
    if run_dir is None:
        return {}
    path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: unreadable run config ({exc})") from exc
    return config if isinstance(config, dict) else {}


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return str(device)


def load_model_for_eval(path: str | Path, device: str = "cpu"):
    """An ``nn.Module`` (run dir, .safetensors, .pt) or an ONNX ``Predictor`` (.onnx)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model not found: {path} (expected a run directory, a .safetensors/.pt file or an .onnx export)")
    if path.suffix.lower() == ".onnx":
        try:
            from resnetlab.inference import Predictor
        except ImportError as exc:  # the inference package is optional for evaluation
            raise CheckpointError(f"{path}: evaluating ONNX files needs resnetlab.inference ({exc})") from exc
        return Predictor.load(path, device=device)
    from resnetlab.models.files import load_trained_model

    return load_trained_model(path, map_location=device)


def _default_out_dir(model_path: Path, run_dir: Path | None, split: str) -> Path:
    if run_dir is not None:
        return run_dir / f"eval-{split}"
    name = model_path.stem if model_path.stem not in ("model", "best", "last") else f"{model_path.parent.name}-{model_path.stem}"
    return Path(f"eval-{name}")


def evaluate_path(model_path: str | Path, data: str | None = None, *, split: str = "test", out_dir: str | Path | None = None,
                  tta: bool = False, batch_size: int = 512, device: str | None = "auto", data_dir: str | None = None,
                  image_size: int | None = None, command: str | None = None) -> tuple[dict, Path]:
    """Load the model and the data split, run :func:`evaluate_model`, return ``(metrics, out_dir)``.

    When the model lives in a run directory its ``config.yaml`` supplies the data spec (if ``data`` is
    None), the split seed and validation size (so ``split="val"`` is the run's own held-out split),
    the image size and the data directory; explicit arguments win.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    device = resolve_device(device)
    model_path = Path(model_path)
    run_dir = find_run_dir(model_path)
    data_cfg = read_run_config(run_dir).get("data") or {}
    if not isinstance(data_cfg, dict):
        data_cfg = {}
    spec = data or data_cfg.get("spec")
    if not spec:
        raise ConfigError("--data is required (cifar10, cifar100, an archive or an image folder) unless MODEL is a run directory")
    model = load_model_for_eval(model_path, device=device)

    from resnetlab.data import load_splits

    same_data = data is None or str(data) == str(data_cfg.get("spec"))
    splits = load_splits(
        spec,
        data_dir=data_dir or data_cfg.get("data_dir"),
        image_size=image_size or (data_cfg.get("image_size") if same_data else None),
        val_size=data_cfg.get("val_size") if data_cfg else None,
        seed=int(data_cfg.get("split_seed", data_cfg.get("seed", 0)) or 0),
        limit_train=data_cfg.get("limit_train") if same_data else None,
    )
    imageset = getattr(splits, split)
    if imageset is None or len(imageset) == 0:
        raise DataError(f"--split {split}: the data {spec} has no {split} split (available: "
                        f"{', '.join(s for s in SPLITS if getattr(splits, s) is not None and len(getattr(splits, s)))})")
    out = Path(out_dir) if out_dir else _default_out_dir(model_path, run_dir, split)
    context = {
        "model": {"path": str(model_path), "run_dir": str(run_dir) if run_dir else None},
        "data": {"spec": str(spec), "split": split, "data_dir": data_dir or data_cfg.get("data_dir")},
        "command": command or shlex.join(sys.argv),
    }
    extra = getattr(model, "extra", None) or {}
    if extra.get("recipe") or extra.get("run_name"):
        context["model"]["trained_with"] = ", ".join(f"{k} {extra[k]}" for k in ("run_name", "recipe", "epochs") if extra.get(k))
    metrics = evaluate_model(model, imageset, out, device=device, batch_size=batch_size, tta=tta, context=context)
    return metrics, out


def summary_lines(metrics: dict, out_dir: Path) -> list[str]:
    """A few lines for the terminal."""
    ci = metrics["accuracy_ci"]
    cal = metrics["calibration"]
    lines = [
        f"{metrics['context']['model']['name']} on {metrics['context']['data'].get('spec') or metrics['context']['data']['source']} "
        f"[{metrics['context']['data'].get('split') or '?'}], {metrics['num_samples']} images",
        f"accuracy {metrics['accuracy']:.2%} (95% CI {ci['low']:.2%} - {ci['high']:.2%})"
        + (f", top-5 {metrics['top5_accuracy']:.2%}" if metrics["num_classes"] > 5 else "")
        + f", loss {metrics['loss']:.4f}",
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
