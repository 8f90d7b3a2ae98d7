"""Every registered model: interface, shapes, gradients, head reset, seeded init (CPU, small inputs)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from resnetlab.errors import ConfigError
from resnetlab.models import create_model, list_models, register_model
from resnetlab.models.registry import ModelMeta

ALL_MODELS = list_models()
# big enough that a backward pass costs seconds on 2 CPU cores
HEAVY = {"resnet1202", "wrn28_10", "resnet101", "resnet152"}


def test_zoo_lists_every_family():
    expected = {
        "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
        "plain20", "plain32", "plain44", "plain56", "plain110",
        "preact_resnet18", "preact_resnet164",
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet18_cifar",
        "wrn16_8", "wrn28_10", "resnet9", "fastnet94", "cnn_baseline",
    }  # fmt: skip
    assert expected <= set(ALL_MODELS)
    assert list_models("plain*") == ["plain110", "plain20", "plain32", "plain44", "plain56"]


def small_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The smallest convenient input each architecture accepts, to keep the tests fast.

    All nets here are fully convolutional up to global pooling, except the baseline CNN (its FC
    expects 64 x 8 x 8). CIFAR nets subsample 8x at most, so 16x16 works; ImageNet nets 32x.
    """
    c, h, w = model.meta.input_size
    if model.meta.name == "cnn_baseline":
        return (c, h, w)
    side = 32 if h > 64 else 16
    return (c, side, side)


def build(name: str, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, **options)


@pytest.fixture(
    scope="module",
    # resnet1202's 3,600 layers cost seconds per test even on tiny inputs
    params=[pytest.param(n, marks=pytest.mark.slow) if n == "resnet1202" else n for n in ALL_MODELS],
)
def built(request):
    """One seeded build per model, shared by the tests below (pytest groups the tests by model)."""
    return request.param, build(request.param).eval()


def test_interface_and_meta(built):
    name, model = built
    meta = model.meta
    assert isinstance(meta, ModelMeta) and meta.name == name and meta.num_classes == 10
    assert len(meta.input_size) == 3 and len(meta.mean) == 3 and len(meta.std) == 3
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 10
    assert model.get_submodule(meta.classifier) is head  # the registry's classifier name is right
    assert head.in_features == model.num_features


@torch.no_grad()
def test_forward_shapes_and_values(built):
    name, original = built
    model = copy.deepcopy(original).train()
    torch.manual_seed(1)
    x = torch.randn(2, *small_input_size(model))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # one training batch sets the running statistics exactly
    features = model.forward_features(x)  # training mode: batch statistics
    assert features.shape == (2, model.num_features)
    logits = model.forward_head(features)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    # eval mode (an untrained deep net in eval mode with identity running statistics overflows,
    # so this uses the statistics of the batch above): finite, and a single image gives the same
    # logits alone as in a batch. float64, because untrained deep plain nets amplify float32
    # rounding differences between batch sizes (the "shattered gradients" of deep plain nets).
    model.eval().double()
    x = x.double()
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert torch.equal(logits, model.forward_head(model.forward_features(x)))
    one = model(x[:1])
    assert one.shape == (1, 10)
    torch.testing.assert_close(one, logits[:1], rtol=1e-6, atol=1e-6)


def test_reset_classifier(built):
    name, original = built
    model = copy.deepcopy(original)
    bias = model.get_classifier().bias is not None
    model.reset_classifier(3)
    head = model.get_classifier()
    assert head.out_features == 3 and head.in_features == model.num_features
    assert (head.bias is not None) == bias
    assert model.meta.num_classes == 3
    with torch.no_grad():
        assert model.forward_head(torch.randn(2, model.num_features)).shape == (2, 3)
        if name not in HEAVY:  # the whole net still runs end to end
            assert model.train()(torch.randn(2, *small_input_size(model))).shape == (2, 3)


def test_init_is_deterministic_given_the_seed(built):
    name, model = built
    again = build(name, seed=0).state_dict()
    other = build(name, seed=1).state_dict()
    reference = model.state_dict()
    assert reference.keys() == again.keys()
    assert all(torch.equal(reference[k], again[k]) for k in reference)
    assert any(not torch.equal(reference[k], other[k]) for k in reference)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in ALL_MODELS]
)
def test_every_trainable_parameter_gets_a_gradient(name):
    model = build(name).train()
    x = torch.randn(2, *small_input_size(model))
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 7]))
    loss.backward()
    assert torch.isfinite(loss)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for {missing[:5]}"
    zero = [n for n, p in trainable if not p.grad.any()]
    assert not zero, f"all-zero gradient for {zero[:5]}"


def test_duplicate_names_raise():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20")(lambda num_classes=10: None)


def test_unknown_model_and_option_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown model 'resnet21'"):
        create_model("resnet21")
    with pytest.raises(ConfigError, match="resnet20"):
        create_model("resnet20", no_such_option=1)
    with pytest.raises(ConfigError, match="shortcut"):
        create_model("resnet20", shortcut="Z")
