"""Config: recipe <- overrides, YAML-typed --set, unknown keys named, resolved config round trip."""

import re
from pathlib import Path

import pytest
import yaml

from resnetlab.commands.train import add_parser, overrides_from_args
from resnetlab.config import TrainConfig, build_config, parse_set, read_config, write_config
from resnetlab.data import AugmentConfig
from resnetlab.errors import ConfigError
from resnetlab.models import list_models

# Training recipes (recipes/finetune-*.yaml belong to `resnetlab finetune` and have their own schema).
RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml") if not p.name.startswith("finetune-"))


def test_defaults_are_valid():
    cfg = build_config()
    assert isinstance(cfg, TrainConfig) and isinstance(cfg.augment, AugmentConfig)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_names_a_registered_model(recipe):
    cfg = build_config(recipe)
    assert cfg.model.name in list_models()
    assert cfg.recipe == str(recipe)
    assert recipe.read_text().startswith("#")  # each recipe says where it comes from


def test_he2016_recipe_matches_the_paper():
    cfg = build_config(Path(__file__).resolve().parents[1] / "recipes" / "resnet20-he2016.yaml")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (cfg.batch_size, cfg.max_steps, cfg.schedule.milestones, cfg.schedule.unit) == (128, 64000, [32000, 48000], "steps")
    assert (cfg.data.val_size, cfg.augment.crop_padding, cfg.augment.flip) == (5000, 4, True)
    r110 = build_config(Path(__file__).resolve().parents[1] / "recipes" / "resnet110-he2016.yaml")
    assert r110.schedule.warmup_until_train_error == 0.8 and r110.schedule.warmup_lr == 0.01


def test_overrides_win_and_are_yaml_typed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.1\n  nesterov: false\nepochs: 5\n")
    cfg = build_config(recipe, parse_set(["optim.lr=0.05", "optim.nesterov=true", "schedule.milestones=[10, 20]",
                                          "model.options={width: 4}", "ema_decay=null", "optim.grad_clip=1"]))
    assert cfg.optim.lr == 0.05 and cfg.optim.nesterov is True and cfg.epochs == 5
    assert cfg.schedule.milestones == [10, 20] and cfg.model.options == {"width": 4}
    assert cfg.optim.grad_clip == 1.0 and isinstance(cfg.optim.grad_clip, float)


@pytest.mark.parametrize("override, match", [
    ({"optim.lrr": 0.1}, "unknown config key 'optim.lrr'"),
    ({"nonsense": 1}, "unknown config key 'nonsense'"),
    ({"augment.flipp": True}, "unknown config key 'augment.flipp'"),
    ({"optim.lr": "fast"}, "optim.lr"),
    ({"optim.nesterov": "yes"}, "optim.nesterov"),
    ({"optim.name": "lion"}, "optim.name"),
    ({"schedule.name": "linear"}, "schedule.name"),
    ({"precision": "fp8"}, "precision"),
    ({"keep_host_memory": "sometimes"}, "keep_host_memory"),
    ({"epochs": 0}, "epochs"),
    ({"optim.lr.x": 1}, "optim.lr"),
])
def test_bad_keys_and_values_are_config_errors_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        build_config(None, override)


@pytest.mark.parametrize("override, match", [
    ({"optim.lr": float("nan")}, "optim.lr=nan: must be a finite number"),
    ({"optim.lr": float("inf")}, "optim.lr=inf: must be a finite number"),
    ({"optim.weight_decay": float("nan")}, "optim.weight_decay=nan: must be a finite number"),
    ({"optim.weight_decay": -1e-4}, "optim.weight_decay=-0.0001: must be >= 0"),
    ({"optim.momentum": -1}, "optim.momentum=-1.0: must be in [0, 1)"),
    ({"optim.betas": [0.9, 1.5]}, "optim.betas=[0.9, 1.5]: must be in [0, 1)"),
    ({"data.limit_train": 0}, "data.limit_train=0 (--limit-train): must be >= 1"),
    ({"data.val_size": -3}, "data.val_size=-3 (--val-size): must be >= 0"),
    ({"data.image_size": 0}, "data.image_size=0 (--image-size): must be >= 1"),
])
def test_out_of_range_and_non_finite_values_are_refused(override, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        build_config(None, override)


@pytest.mark.parametrize("options, match", [
    ({"model.name": "resnet21"}, "unknown model 'resnet21'"),
    ({"model.name": "cnn_baseline", "model.options": {"widht": 4}}, "does not accept these options ['widht']"),
])
def test_check_model_refuses_unknown_names_and_options(options, match):
    from resnetlab.config import check_model

    check_model(build_config(None, {"model.name": "cnn_baseline", "model.options": {"width": 4}}))  # a valid one passes
    with pytest.raises(ConfigError, match=re.escape(match)):
        check_model(build_config(None, options))


def test_malformed_recipe_is_one_line_with_line_and_column(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 3\noptim: {lr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        build_config(recipe)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{recipe}: invalid YAML: line 3, column 1:"), message
    with pytest.raises(ConfigError) as info:
        parse_set(["optim.betas=[0.9"])
    assert "\n" not in str(info.value)


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_set(["optim.lr"])


def test_missing_recipe_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        build_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trip(tmp_path):
    cfg = build_config(None, {"optim.betas": [0.8, 0.99], "log_grad_norms": [1, 5], "augment.flip": True})
    write_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optim"]["betas"] == [0.8, 0.99]
    again = read_config(tmp_path / "config.yaml")
    assert again == cfg


def test_cli_flags_become_overrides():
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--model", "resnet32", "--data", "x.tar.gz", "--epochs", "3", "--lr", "0.2",
                              "--val-size", "500", "--limit-train", "100", "--log-grad-norms", "1,10",
                              "--set", "optim.lr=0.3"])
    overrides = overrides_from_args(args)
    assert overrides["model.name"] == "resnet32" and overrides["data.spec"] == "x.tar.gz"
    assert overrides["epochs"] == 3 and overrides["max_steps"] is None  # --epochs replaces a step budget
    assert overrides["optim.lr"] == 0.3  # --set wins over --lr
    assert overrides["data.val_size"] == 500 and overrides["data.limit_train"] == 100
    assert overrides["log_grad_norms"] == [1, 10]
    assert "tta" not in overrides and "data.skip_bad" not in overrides  # unset flags leave the recipe alone
