"""Optimizers and parameter groups."""

import pytest
import torch
import torch.nn as nn

from resnetlab.config import OptimConfig
from resnetlab.engine.optim import build_optimizer, param_groups, set_lr
from resnetlab.errors import ConfigError


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))


def test_no_decay_groups_hold_bn_and_bias():
    net = _net()
    groups = param_groups(net, 5e-4, no_decay_bn_bias=True)
    decay, no_decay = groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(net[1].weight), id(net[1].bias), id(net[3].bias)}
    (single,) = param_groups(net, 5e-4, no_decay_bn_bias=False)
    assert len(single["params"]) == 5


def test_frozen_parameters_are_left_out():
    net = _net()
    net[0].weight.requires_grad_(False)
    assert sum(len(g["params"]) for g in param_groups(net, 1e-4, True)) == 4


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    opt = build_optimizer(param_groups(_net(), 1e-4, True), OptimConfig(name=name, lr=0.05, nesterov=True))
    assert isinstance(opt, cls)
    assert all(g["lr"] == 0.05 for g in opt.param_groups)
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9


def test_group_lr_is_relative_and_follows_schedule():
    net = _net()
    groups = [{"params": list(net[0].parameters()), "lr": 0.01}, {"params": list(net[3].parameters())}]
    opt = build_optimizer(groups, OptimConfig(lr=0.1))
    assert [g["lr_scale"] for g in opt.param_groups] == pytest.approx([0.1, 1.0])
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.5])


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="optim.name"):
        build_optimizer(param_groups(_net(), 0, False), OptimConfig(name="lion"))
