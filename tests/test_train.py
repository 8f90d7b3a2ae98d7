"""The training engine end to end, in process, on tiny synthetic data."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from resnetlab.cli import main
from resnetlab.config import build_config
from resnetlab.engine import distributed, train
from resnetlab.engine.hooks import TrainHooks
from resnetlab.engine.resume import resume_config
from resnetlab.engine.trainer import _criterion, _sample_weights
from resnetlab.evaluation import evaluate_model
from resnetlab.errors import ConfigError
from resnetlab.models import create_model
from resnetlab.models.files import load_trained_model
from helpers import debug_hooks, tiny_splits


def config(tmp_path, **overrides):
    base = {
        "run_dir": str(tmp_path / "run"), "device": "cpu", "batch_size": 16, "epochs": 3,
        "model.name": "cnn_baseline", "model.options": {"width": 4, "hidden": 8}, "optim.lr": 0.05,
        "augment.flip": True, "augment.crop_padding": 2,
    }
    base.update(overrides)
    return build_config(None, base)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    splits = tiny_splits()
    cfg = config(tmp, ema_decay=0.5, tensorboard=True, log_grad_norms=[0, 5], keep_last=2, checkpoint_every=3)
    return train(cfg, splits=splits, final_report=evaluate_model), splits


def test_run_directory_layout(finished):
    result, splits = finished
    run = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "model.safetensors", "model.json", "summary.json",
                 "env.json", "curves.png", "grad_norms.jsonl", "checkpoints/best.pt", "eval/metrics.json", "eval/report.html"):
        assert (run / name).is_file(), name
    assert len(list((run / "checkpoints").glob("last-*.pt"))) == 2  # keep_last
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["step"] == result.steps == 12
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_sec", "epoch_time_s", "elapsed_s"):
        assert all(isinstance(r[key], float) and math.isfinite(r[key]) for r in rows), key
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss,train_acc,val_loss,val_acc,lr")
    assert yaml.safe_load((run / "config.yaml").read_text())["ema_decay"] == 0.5
    env = json.loads((run / "env.json").read_text())
    assert env["versions"]["torch"] == torch.__version__ and env["seed"] == 0 and env["device"] == "cpu"


def test_model_file_carries_classes_normalization_and_accuracy(finished):
    result, splits = finished
    info = json.loads((result.run_dir / "model.json").read_text())
    meta, extra = info["meta"], info["extra"]
    assert meta["name"] == "cnn_baseline" and meta["options"] == {"width": 4, "hidden": 8}
    assert meta["classes"] == splits.train.classes
    assert meta["mean"] == pytest.approx(list(splits.train.mean)) and meta["std"] == pytest.approx(list(splits.train.std))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert extra["test_acc"] == summary["test_acc"] == result.test_acc
    assert summary["best_val_acc"] == result.best_val_acc == max(
        json.loads(line)["val_acc"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines())
    assert json.loads((result.run_dir / "eval" / "metrics.json").read_text())["accuracy"] == result.test_acc


def test_saved_model_is_the_best_on_validation(finished):
    result, splits = finished
    loaded = load_trained_model(result.run_dir).eval()
    best = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)
    ema_weights = {k[len("module."):]: v for k, v in best["ema"].items() if k.startswith("module.")}
    for key, value in loaded.state_dict().items():  # with EMA on, the model file holds the EMA weights
        assert torch.equal(value, ema_weights[key]), key


def test_grad_norm_probe_records_layers(finished):
    result, _ = finished
    records = [json.loads(line) for line in (result.run_dir / "grad_norms.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 5]
    assert set(records[0]["grad_norms"]) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                             "hidden.weight", "hidden.bias", "fc.weight", "fc.bias"}
    assert set(records[0]["activations"]) == {"conv1", "conv2", "hidden", "fc"}
    assert all(v > 0 for v in records[0]["grad_norms"].values())


def test_model_argument_hooks_and_param_groups(tmp_path):
    model = create_model("cnn_baseline", num_classes=4, width=4, hidden=8)
    calls = []
    model.init_from_data = lambda x: calls.append(("init", tuple(x.shape), float(x[:, 0].mean())))
    frozen_before = model.conv1.weight.detach().clone()
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("conv1")]}]
    seen = []
    splits = tiny_splits()
    # A model passed in keeps its own normalization (a pretrained model's), here the registry's CIFAR one.
    expected_red = float(((splits.train.images[..., 0].double() / 255 - model.meta.mean[0]) / model.meta.std[0]).mean())
    result = train(config(tmp_path, epochs=2), model=model, splits=splits,
                   param_groups=groups, hooks=TrainHooks(on_epoch_start=lambda e, m, o: seen.append((e, m is model, len(o.param_groups)))))
    assert calls[0][0] == "init" and calls[0][1] == (64, 3, 32, 32)
    assert calls[0][2] == pytest.approx(expected_red, abs=1e-4)  # normalized, un-augmented training images
    assert seen == [(0, True, 1), (1, True, 1)]
    assert torch.equal(result.model.conv1.weight.cpu(), frozen_before)  # not in the optimizer: untouched
    # No final_report passed: the engine measures plain accuracy itself and writes no report.
    assert result.test_acc is not None and not (result.run_dir / "eval").exists()
    assert not torch.equal(result.model.fc.weight.cpu(), create_model("cnn_baseline", num_classes=4, width=4, hidden=8).fc.weight)


def test_existing_run_directory_is_refused(finished):
    result, splits = finished
    cfg = config(result.run_dir.parent)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, splits=splits)


def test_cli_names_unknown_keys(capsys):
    assert main(["train", "--set", "optim.lrr=0.1"]) == 1
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err


def test_class_balance_options():
    splits = tiny_splits(n_train=40)
    train_set = splits.train.subset(torch.cat([torch.arange(40)[splits.train.labels == 0], torch.tensor([1, 2, 3])]))
    counts = torch.bincount(train_set.labels, minlength=4).double()
    crit = _criterion(build_config(None, {"data.class_balance": "weighted-loss"}), train_set, torch.device("cpu"))
    assert torch.allclose(crit.weight.double(), counts.sum() / (4 * counts))
    weights = _sample_weights(build_config(None, {"data.class_balance": "sampler"}), train_set)
    per_class = torch.zeros(4, dtype=torch.float64).index_add_(0, train_set.labels, weights)
    assert torch.allclose(per_class, torch.ones(4, dtype=torch.float64))  # every class equally likely
    assert _sample_weights(build_config(), train_set) is None


@pytest.mark.slow
def test_cli_seeds_writes_seeds_json(tmp_path, monkeypatch):
    import sys

    from helpers import make_image_folder

    folder = make_image_folder(tmp_path / "images", classes=3, per_class=12, test_per_class=4)
    code = main(["train", "--model", "cnn_baseline", "--data", str(folder), "--device", "cpu", "--epochs", "1",
                 "--batch-size", "8", "--val-size", "6", "--run-dir", str(tmp_path / "multi"), "--seeds", "1,2",
                 "--set", "model.options={width: 4, hidden: 8}"])
    assert code == 0
    report = json.loads((tmp_path / "multi" / "seeds.json").read_text())
    assert report["seeds"] == [1, 2] and [r["seed"] for r in report["runs"]] == [1, 2]
    assert (tmp_path / "multi" / "seed-1" / "model.safetensors").is_file()
    assert (tmp_path / "multi" / "seed-2" / "summary.json").is_file()
    finals = [r["test_acc"] for r in report["runs"]]
    assert report["final_acc"]["mean"] == pytest.approx(sum(finals) / 2)
    low, high = report["final_acc"]["interval"]
    assert low <= report["final_acc"]["mean"] <= high


def test_engine_never_imports_evaluation():
    # ARCHITECTURE.md: lower rooms never import higher ones; the final report is passed in instead.
    import ast
    from pathlib import Path

    import resnetlab.engine

    for source in sorted(Path(resnetlab.engine.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("resnetlab.evaluation") for n in names), f"{source.name} imports {names}"


def test_resume_config_applies_overrides_and_records_them(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    from resnetlab.config import write_config

    saved = config(tmp_path)
    write_config(saved, run / "config.yaml")
    resumed = resume_config(run, {"epochs": 5})
    assert resumed.epochs == 5 and resumed.run_dir == str(run)
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 5


def test_resume_config_writes_on_rank_0_only(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    from resnetlab.config import write_config

    write_config(config(tmp_path), run / "config.yaml")
    before = (run / "config.yaml").read_text()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not distributed.detect().is_main
    assert resume_config(run, {"epochs": 7}).epochs == 7
    assert (run / "config.yaml").read_text() == before


@pytest.mark.parametrize("command", ["train", "finetune"])  # both commands resume through engine.resume
def test_resume_of_a_folder_without_config_is_one_clear_error(tmp_path, capsys, command):
    assert main([command, "--resume", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no config.yaml there (not a run directory)" in err and str(tmp_path) in err


# ----------------------------------------------------------------------------- early stopping (issue 23)

# min_delta 1.0 is more than accuracy can gain, so every evaluation after the first counts as "no
# improvement" while the weights keep training: patience 2 stops after epoch 3 of 4. Seed 1 makes
# the best val_acc epoch (best.pt) an earlier one than the last, so restoring it is visible.
EARLY = {"epochs": 4, "seed": 1, "eval_report": False, "early_stop.patience": 2, "early_stop.min_delta": 1.0}


@pytest.fixture(scope="module")
def stopped_early(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("early")
    splits = tiny_splits()
    return train(config(tmp, **EARLY), splits=splits), splits


def test_early_stop_stops_restores_best_weights_and_records_why(stopped_early, capsys):
    from resnetlab.models.files import load_checkpoint_dict

    result, _ = stopped_early
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert result.completed and result.epochs == 3 and summary["epochs"] == 3  # not the 4 asked for
    assert summary["stopped_early"] is True and summary["stopped_epoch"] == 3
    assert "val_acc has not improved by more than 1 for 2 evaluations" in summary["stop_reason"]
    best = load_checkpoint_dict(result.run_dir / "checkpoints" / "best.pt")
    last = load_checkpoint_dict(result.run_dir / "checkpoints" / f"last-{result.steps:08d}.pt")
    assert best["epoch"] == summary["best_epoch"] < 3  # the best epoch is not the last one trained
    final = result.model.state_dict()
    assert all(torch.equal(final[k].cpu(), best["model"][k]) for k in best["model"])
    assert not all(torch.equal(final[k].cpu(), last["model"][k]) for k in last["model"])  # it would fail without the restore
    saved = load_trained_model(result.run_dir / "model.safetensors")
    assert all(torch.equal(v, best["model"][k]) for k, v in saved.state_dict().items())


def test_without_patience_the_same_run_trains_every_epoch(tmp_path):
    settings = {**EARLY, "early_stop.patience": None}
    result = train(config(tmp_path, **settings), splits=tiny_splits())
    assert result.epochs == 4 and result.summary["stopped_early"] is False and "stop_reason" not in result.summary


def test_resume_after_an_early_stop_trains_no_further(stopped_early, tmp_path):
    import shutil

    result, splits = stopped_early
    run = shutil.copytree(result.run_dir, tmp_path / "run")
    rows_before = (run / "metrics.jsonl").read_text()
    resumed = train(resume_config(run, {}), splits=splits, resume_from=run)
    assert resumed.steps == result.steps and resumed.epochs == 3
    assert (run / "metrics.jsonl").read_text() == rows_before
    assert resumed.summary["stopped_early"] is True


def test_early_stop_flag_and_its_mistakes(tmp_path, capsys):
    from resnetlab.commands.train import overrides_from_args
    from resnetlab.cli import build_parser

    args = build_parser().parse_args(["train", "--early-stop", "3"])
    assert overrides_from_args(args)["early_stop.patience"] == 3
    args = build_parser().parse_args(["finetune", "--early-stop", "4"])
    from resnetlab.commands.finetune import overrides_from_args as finetune_overrides

    assert finetune_overrides(args)["early_stop.patience"] == 4
    assert main(["train", "--early-stop", "0", "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "early_stop.patience=0 (--early-stop): must be >= 1" in err
    with pytest.raises(ConfigError, match="early_stop.patience=2 .*needs a validation split"):
        train(config(tmp_path, **EARLY), splits=tiny_splits(n_val=0))
    assert not (tmp_path / "run").exists()  # refused before the run directory is created


# ----------------------------------------------------------------------------- test hooks are not config (issue 22)


def test_an_old_config_with_a_debug_section_loads_with_one_warning(tmp_path, caplog):
    from resnetlab.config import read_config, write_config

    path = tmp_path / "config.yaml"
    write_config(config(tmp_path), path)
    old = yaml.safe_load(path.read_text())
    old["debug"] = {"stop_after_steps": 3, "nan_at_step": None, "skip_rng_restore": [], "sleep_per_step": 0.0, "save_delay_s": 0.0}
    path.write_text(yaml.safe_dump(old))
    with caplog.at_level("WARNING"):
        loaded = read_config(path)
    assert loaded.to_dict() == config(tmp_path).to_dict()
    assert [r.getMessage() for r in caplog.records] == [f"{path}: ignoring its 'debug' section (test hooks are no longer config options)"]


def test_set_debug_is_refused_as_an_unknown_key(capsys):
    assert main(["train", "--data", "cifar10", "--set", "debug.stop_after_steps=3"]) == 1
    assert "unknown config key 'debug'" in capsys.readouterr().err


def test_setup_then_run_share_one_frozen_context_and_a_hook_stops_the_run(tmp_path):
    import dataclasses

    from resnetlab.engine.trainer import run, setup

    context = setup(config(tmp_path, epochs=1), splits=tiny_splits())
    assert (tmp_path / "run" / "config.yaml").is_file() and context.state.step == 0  # setup created the run, trained nothing
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.total_steps = 1
    result = run(context, debug_hooks(stop_after_steps=2))
    assert not result.completed and result.steps == context.state.step == 2
    assert (tmp_path / "run" / "checkpoints" / "last-00000002.pt").is_file() and not (tmp_path / "run" / "model.safetensors").exists()
