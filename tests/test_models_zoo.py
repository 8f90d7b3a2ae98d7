"""Architecture facts: the papers' parameter tables, torchvision equivalence, options, the models table."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torchvision

from resnetlab.cli import main
from resnetlab.models import create_model
from resnetlab.models.blocks import BasicBlock, PadShortcut
from resnetlab.models.summary import count_flops, count_parameters, model_summary, model_table


def meta_model(name: str, **options) -> nn.Module:
    """Shapes only: counting parameters needs no memory or init."""
    with torch.device("meta"):
        return create_model(name, num_classes=10, **options)


# He et al. 2016, Table 6 (CIFAR-10), rounded as the paper prints them
PAPER_PARAMS = {
    "resnet20": "0.27M",
    "resnet32": "0.46M",
    "resnet44": "0.66M",
    "resnet56": "0.85M",
    "resnet110": "1.7M",
    "resnet1202": "19.4M",
}


@pytest.mark.parametrize("name, printed", PAPER_PARAMS.items())
def test_cifar_resnet_params_match_the_paper(name, printed):
    params = count_parameters(meta_model(name))
    digits = len(printed[:-1].split(".")[1])
    assert f"{params / 1e6:.{digits}f}M" == printed


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_nets_have_the_resnets_parameters_and_no_shortcut(depth):
    plain, resnet = meta_model(f"plain{depth}"), meta_model(f"resnet{depth}")
    assert count_parameters(plain) == count_parameters(resnet)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in resnet.named_parameters()]
    assert all(not b.residual for b in plain.modules() if isinstance(b, BasicBlock))
    assert all(b.residual for b in resnet.modules() if isinstance(b, BasicBlock))


@pytest.mark.parametrize(
    "name, millions, places",
    [("wrn28_10", 36.5, 1), ("wrn16_8", 11.0, 1), ("preact_resnet164", 1.7, 1), ("preact_resnet18", 11.17, 2)],
)
def test_other_param_counts_match_their_papers(name, millions, places):
    assert round(count_parameters(meta_model(name)) / 1e6, places) == millions


def test_shortcut_options():
    option_a = create_model("resnet20")
    option_b = create_model("resnet20", shortcut="B")
    pads = [m for m in option_a.modules() if isinstance(m, PadShortcut)]
    assert len(pads) == 2  # only where the stage changes (16->32, 32->64)
    assert count_parameters(option_b) > count_parameters(option_a)  # two 1x1 projections + BN
    assert isinstance(option_b.layer2[0].downsample[0], nn.Conv2d)
    assert option_b.layer2[1].downsample is None  # identity where the shape is unchanged
    x = torch.randn(2, 16, 8, 8)
    padded = pads[0](x)
    assert padded.shape == (2, 32, 4, 4)
    assert torch.equal(padded[:, :16], x[:, :, ::2, ::2]) and not padded[:, 16:].any()


def test_residual_block_computes_f_of_x_plus_x():
    torch.manual_seed(0)
    block = BasicBlock(8, 8).eval()
    plain = BasicBlock(8, 8, residual=False).eval()
    plain.load_state_dict(block.state_dict())
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        torch.testing.assert_close(block(x), torch.relu(branch + x))
        torch.testing.assert_close(plain(x), torch.relu(branch))


def test_zero_init_residual_starts_blocks_as_identity():
    model = create_model("resnet20", zero_init_residual=True)
    assert all(not b.bn2.weight.any() for b in model.modules() if isinstance(b, BasicBlock))
    resnet50 = create_model("resnet50", zero_init_residual=True)
    assert not resnet50.layer1[0].bn3.weight.any() and resnet50.layer1[0].bn1.weight.all()
    plain = create_model("plain20", zero_init_residual=True)  # no shortcut: keeping gamma is the only sane choice
    assert all(b.bn2.weight.all() for b in plain.modules() if isinstance(b, BasicBlock))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_outputs(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None, num_classes=1000).eval()
    for module in reference.modules():  # non-trivial BN statistics, so a misplaced layer would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(module.weight, 0.5, 1.5)
    ours = create_model(name, num_classes=1000).eval()
    assert ours.meta.input_size == (3, 224, 224)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


def test_cifar_stem_keeps_resolution_and_says_so_in_meta():
    model = create_model("resnet18", cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.meta.input_size == (3, 32, 32)
    assert model.meta.options == {"cifar_stem": True}
    registered = create_model("resnet18_cifar")
    assert registered.meta.input_size == (3, 32, 32)
    assert registered.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        x = model.relu(model.bn1(model.conv1(torch.randn(1, 3, 32, 32))))
        x = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(x)))))
    assert x.shape == (1, 512, 4, 4)  # 32 / 8, not 32 / 32


def test_wrn_dropout_option_is_inside_the_blocks():
    model = create_model("wrn16_8", dropout=0.3)
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules()) == 6  # 3 stages x 2 blocks
    assert not any(isinstance(m, nn.Dropout) for m in create_model("wrn16_8").modules())


def test_resnet9_layout_and_head_scale():
    model = create_model("resnet9").eval()
    assert model.fc.bias is None and model.head_scale == 0.125
    features = torch.randn(4, 512)
    torch.testing.assert_close(model.forward_head(features), model.fc(features) * 0.125)
    assert round(count_parameters(model) / 1e6, 2) == 6.57


def test_fastnet_whitening_decorrelates_patches():
    torch.manual_seed(0)
    model = create_model("fastnet94")
    assert model.whiten.weight.shape == (24, 3, 2, 2)
    # correlated "images": smooth noise, so neighbouring pixels and channels covary strongly
    images = torch.nn.functional.avg_pool2d(torch.randn(64, 1, 35, 35), 4, stride=1).repeat(1, 3, 1, 1)
    images = images + 0.3 * torch.randn_like(images)
    model.init_from_data(images)
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    with torch.no_grad():
        out = model.whiten(images)  # (N, 24, 31, 31)
    responses = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = torch.cov(responses.T)
    torch.testing.assert_close(covariance, torch.eye(12), atol=0.02, rtol=0)
    torch.testing.assert_close(out[:, 12:], -out[:, :12])
    assert torch.isfinite(model(images[:2])).all()


def test_fastnet_options():
    model = create_model("fastnet94")
    assert not model.layer1.bn1.weight.requires_grad and model.layer1.bn1.bias.requires_grad
    assert model.layer1.bn1.momentum == 0.4
    conv = model.layer2.conv1  # identity init: filter i passes input channel i through
    assert torch.equal(conv.weight[: conv.in_channels, :, 1, 1], torch.eye(conv.in_channels))
    scaled = create_model("fastnet94", bn_scale=True, identity_init=False, widths=(32, 64, 64))
    assert scaled.layer1.bn1.weight.requires_grad and scaled.num_features == 64
    assert not torch.equal(scaled.layer2.conv1.weight[:32, :, 1, 1], torch.eye(32))


def test_cnn_baseline_features_are_the_128_hidden_units():
    model = create_model("cnn_baseline")
    assert model.hidden.in_features == 4096 and model.fc.in_features == 128
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [64, 64]
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 128)


def test_flop_counts_match_known_figures():
    # torchvision documents ResNet-18 at 1.81 GFLOPs (multiply-adds) and ResNet-50 at 4.09
    assert round(model_summary("resnet18", num_classes=1000)["macs"] / 1e9, 2) == 1.81
    assert round(model_summary("resnet50", num_classes=1000)["macs"] / 1e9, 2) == 4.09
    # a single conv, counted by hand: 3x3x3x16 MACs per output pixel, 32x32 pixels
    conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False))
    assert count_flops(conv, (3, 32, 32)) == 2 * 3 * 3 * 3 * 16 * 32 * 32


def test_model_table_patterns_and_order():
    rows = model_table("plain*")
    assert [r["name"] for r in rows] == ["plain20", "plain32", "plain44", "plain56", "plain110"]
    assert [r["name"] for r in model_table("wrn")] == ["wrn16_8", "wrn28_10"]  # substring
    row = rows[0]
    assert row["family"] == "plain-cifar" and row["input_size"] == [3, 32, 32]
    assert row["params"] == 269722 and row["flops"] == 2 * row["macs"]


def test_models_command_prints_table_and_json(capsys):
    assert main(["models", "resnet2*"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "0.27" in out and "0.041" in out and "resnet110" not in out
    assert main(["models", "resnet20", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["resnet20"]
    assert rows[0]["params"] == 269722 and rows[0]["macs"] == 40551040


def test_models_command_unknown_pattern_fails(capsys):
    assert main(["models", "nosuchnet"]) == 1
    assert "no model matches 'nosuchnet'" in capsys.readouterr().err
