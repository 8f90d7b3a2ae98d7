"""Fine-tuning, part 1: weight sources, key mapping, head/stem adaptation, strategies (no training)."""

from __future__ import annotations

import socket
import urllib.error

import pytest
import torch
import torchvision

from resnetlab.errors import CheckpointError, ConfigError
from resnetlab.finetune.adapt import build_model, resize_stem_kernel
from resnetlab.finetune.sources import infer_resnet_architecture, load_source
from resnetlab.finetune.strategy import FineTuneSchedule, StrategyConfig, model_stages
from resnetlab.models import create_model
from resnetlab.models.registry import IMAGENET_MEAN, IMAGENET_STD


def _torchvision(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None).eval()
    # Non-default BN statistics, so "loaded" cannot pass by both sides holding the defaults.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def _save(state: dict, path, fmt: str):
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def tv18():
    return _torchvision("resnet18")


@pytest.fixture(scope="module")
def our18():
    return create_model("resnet18", 10)


@pytest.mark.parametrize("arch,fmt", [("resnet18", "pth"), ("resnet50", "safetensors")])
def test_torchvision_state_dict_loads_bit_identical(tmp_path, arch, fmt):
    tv = _torchvision(arch)
    path = _save(tv.state_dict(), tmp_path / f"{arch}.{fmt}", fmt)
    source = load_source(path)
    assert source.architecture == arch and source.kind == "state-dict"
    assert (source.mean, source.std) == (IMAGENET_MEAN, IMAGENET_STD)

    model, report = build_model(source, 10, classes=[f"c{i}" for i in range(10)])
    state, tv_state = model.state_dict(), tv.state_dict()
    assert sorted(report.new) == ["fc.bias", "fc.weight"] and sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert set(report.loaded) == set(state) - {"fc.weight", "fc.bias"}  # every other tensor came from the file
    for key in report.loaded:
        assert torch.equal(state[key], tv_state[key]), key
    assert model.fc.out_features == 10 and model.meta.classes == [f"c{i}" for i in range(10)]
    assert model.meta.mean == IMAGENET_MEAN  # normalization follows the weights, not the data


def test_same_class_count_keeps_head_and_matches_outputs(tmp_path, tv18):
    source = load_source(_save(tv18.state_dict(), tmp_path / "r18.pth", "pth"))
    model, report = build_model(source, 1000)
    assert report.new == [] and report.dropped == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), tv18(x))


def test_wrappers_and_prefixes_are_unwrapped(tmp_path, tv18):
    state = tv18.state_dict()
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    source = load_source(_save(wrapped, tmp_path / "lightning.ckpt", "pth"))
    assert set(source.state_dict) == set(state)
    source = load_source(_save({"model": {f"_orig_mod.{k}": v for k, v in state.items()}, "args": {"lr": 0.1}}, tmp_path / "ref.pth", "pth"))
    assert source.architecture == "resnet18"


def test_timm_resnet_state_dict_loads(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    source = load_source(_save(reference.state_dict(), tmp_path / "model.safetensors", "safetensors"))
    model, report = build_model(source, 1000)
    assert len(report.loaded) == len(reference.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x), rtol=0, atol=1e-5)


def test_wrong_architecture_names_both(tmp_path):
    source = load_source(_save(_torchvision("resnet50").state_dict(), tmp_path / "r50.pth", "pth"))
    with pytest.raises(CheckpointError, match=r"resnet50.*--model is resnet18"):
        build_model(source, 10, model_name="resnet18")


def test_incomplete_state_dict_is_refused(tmp_path, tv18):
    state = {k: v for k, v in tv18.state_dict().items() if not k.startswith("layer4.1.")}
    source = load_source(_save(state, tmp_path / "cut.pth", "pth"))
    assert source.architecture is None
    with pytest.raises(CheckpointError, match=r"missing from the source \[layer4\.1\."):
        build_model(source, 10, model_name="resnet18")
    with pytest.raises(ConfigError, match="--model"):
        build_model(source, 10)  # unknown layout and no --model


@pytest.mark.parametrize("content,suffix", [(b"not a checkpoint at all", ".pth"), (b"\x10\x00\x00\x00\x00\x00\x00\x00{bad", ".safetensors")])
def test_corrupt_files_give_checkpoint_error(tmp_path, content, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad"):
        load_source(path)


def test_missing_and_non_weight_sources(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_source(tmp_path / "nope.pth")
    torch.save({"epoch": 1, "note": "no tensors"}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_source(tmp_path / "empty.pth")


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_MARKER",))


def test_code_carrying_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_source(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_resnetlab_model_file_and_checkpoint_as_source(tmp_path):
    from resnetlab.models.files import CHECKPOINT_KIND, save_model_file

    model = create_model("resnet20", num_classes=4, shortcut="B")  # options travel with the weights
    model.meta.classes = ["a", "b", "c", "d"]
    model.meta.mean, model.meta.std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    save_model_file(model, tmp_path / "run")
    source = load_source(tmp_path / "run")
    assert source.kind == "resnetlab" and source.architecture == "resnet20" and source.classes == ["a", "b", "c", "d"]
    assert source.mean == (0.1, 0.2, 0.3)
    same, report = build_model(source, 4, classes=["a", "b", "c", "d"])
    assert report.new == [] and torch.equal(same.fc.weight, model.fc.weight)  # same classes: head kept
    other, report = build_model(source, 4, classes=["w", "x", "y", "z"])
    assert sorted(report.new) == ["fc.bias", "fc.weight"]  # same count, other classes: new head
    assert other.meta.mean == (0.1, 0.2, 0.3) and other.meta.options == {"shortcut": "B"}

    checkpoint = {"kind": CHECKPOINT_KIND, "format_version": 1, "model": model.state_dict(), "meta": model.meta.to_dict()}
    torch.save(checkpoint, tmp_path / "last.pt")
    assert load_source(tmp_path / "last.pt").architecture == "resnet20"
    (tmp_path / "stopped" / "checkpoints").mkdir(parents=True)  # a run stopped before its model file
    torch.save(checkpoint, tmp_path / "stopped" / "checkpoints" / "best.pt")
    assert load_source(tmp_path / "stopped").classes == ["a", "b", "c", "d"]
    with pytest.raises(CheckpointError, match="resnet20.*--model is resnet18"):
        build_model(source, 4, model_name="resnet18")


# --------------------------------------------------------------------------- named weights


def test_torchvision_named_offline_message(monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(CheckpointError) as info:
        load_source("torchvision:resnet18.IMAGENET1K_V1")
    message = str(info.value)
    assert "could not fetch" in message and "resnet18-f37072fd.pth" in message and "--from path/to/" in message


def test_torchvision_named_real_attempt_fails_fast_offline(tmp_path, monkeypatch):
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=2).close()
    except OSError:
        pass
    else:
        pytest.skip("online: a real fetch would download 45 MB")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)  # a black-holed network fails in seconds, not minutes
    try:
        with pytest.raises(CheckpointError, match="--from path/to/resnet18"):
            load_source("torchvision:resnet18.IMAGENET1K_V1")
    finally:
        socket.setdefaulttimeout(previous)


def test_torchvision_named_success_uses_weight_metadata(monkeypatch, tv18):
    from torchvision.models import ResNet18_Weights

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", lambda self, *a, **k: tv18.state_dict())
    source = load_source("torchvision:resnet18.IMAGENET1K_V1")
    assert source.kind == "torchvision" and source.architecture == "resnet18"
    assert source.mean == (0.485, 0.456, 0.406) and source.input_size == (3, 224, 224)
    assert len(source.classes) == 1000
    with pytest.raises(ConfigError, match="no weights 'NOPE'"):
        load_source("torchvision:resnet18.NOPE")
    with pytest.raises(ConfigError, match="no model"):
        load_source("torchvision:resnet999")


def test_timm_named_offline_message_and_success(monkeypatch):
    timm = pytest.importorskip("timm")
    from huggingface_hub.errors import LocalEntryNotFoundError

    real_create = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        assert pretrained
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(CheckpointError) as info:
        load_source("timm:resnet50.a1_in1k")
    assert "huggingface.co/timm/resnet50.a1_in1k" in str(info.value) and "--from path/to/model.safetensors" in str(info.value)

    def fake(name, pretrained=False, **kwargs):
        return real_create(name, pretrained=False, **kwargs)  # the pretrained_cfg comes with the name

    monkeypatch.setattr(timm, "create_model", fake)
    source = load_source("timm:resnet18.a1_in1k")
    assert source.kind == "timm" and source.architecture == "resnet18" and source.mean == IMAGENET_MEAN


# --------------------------------------------------------------------------- stem


def test_adapt_stem_keeps_other_weights(tmp_path, tv18):
    source = load_source(_save(tv18.state_dict(), tmp_path / "r18.pth", "pth"))
    model, report = build_model(source, 10, adapt_stem=True)
    assert report.adapted == ["conv1.weight"] and model.conv1.weight.shape == (64, 3, 3, 3)
    assert isinstance(model.maxpool, torch.nn.Identity) and model.meta.input_size == (3, 32, 32)
    state = model.state_dict()
    for key in report.loaded:
        assert torch.equal(state[key], tv18.state_dict()[key]), key
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    with pytest.raises(CheckpointError, match="add --adapt-stem"):
        build_model(source, 10, model_name="resnet18_cifar")


def test_resize_stem_kernel_conserves_each_filters_sum():
    weight = torch.randn(8, 3, 7, 7)
    resized = resize_stem_kernel(weight, 3)
    torch.testing.assert_close(resized.sum((-1, -2)), weight.sum((-1, -2)), rtol=1e-5, atol=1e-5)
    flat = torch.ones(1, 1, 7, 7)
    assert torch.allclose(resize_stem_kernel(flat, 3), torch.full((1, 1, 3, 3), 49 / 9))  # uniform stays uniform
    assert torch.equal(resize_stem_kernel(weight, 3, "center"), weight[..., 2:5, 2:5])


def test_infer_architecture_from_keys():
    with torch.device("meta"):  # shapes and names only: no memory, no init cost
        for name in ("resnet18", "resnet34", "resnet50", "resnet101"):
            assert infer_resnet_architecture(getattr(torchvision.models, name)(weights=None).state_dict()) == name
        assert infer_resnet_architecture(torchvision.models.wide_resnet50_2(weights=None).state_dict()) is None


# --------------------------------------------------------------------------- strategies


@pytest.mark.parametrize(
    "strategy,every,expected",  # trainable stages (from the head) in epochs 0..6 for a 6-stage resnet18
    [
        ("linear-probe", 1, [1, 1, 1, 1, 1, 1, 1]),
        ("full", 1, [6, 6, 6, 6, 6, 6, 6]),
        ("gradual", 1, [1, 2, 3, 4, 5, 6, 6]),
        ("gradual", 2, [1, 1, 2, 2, 3, 3, 4]),
    ],
)
def test_trainable_stages_table(our18, strategy, every, expected):
    schedule = FineTuneSchedule(our18, StrategyConfig(strategy, unfreeze_every=every), 0.01, 1e-4)
    assert [schedule.trainable_stages(e) for e in range(7)] == expected


def test_discriminative_learning_rates(our18):
    model = our18
    schedule = FineTuneSchedule(model, StrategyConfig("full", lr_head=0.1, lr_backbone=0.01, layer_decay=0.5), 0.01, 1e-4, no_decay_bn_bias=True)
    assert [s.name for s in model_stages(model)] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    expected = {"head": 10.0, "layer4": 1.0, "layer3": 0.5, "layer2": 0.25, "layer1": 0.125, "stem": 0.0625}
    assert {k: pytest.approx(v) for k, v in schedule.scales.items()} == expected
    assert schedule.groups[0]["stage"] == "head"  # the engine logs group 0's lr
    covered = [p for g in schedule.groups for p in g["params"]]
    assert len(covered) == len(list(model.parameters())) == len({id(p) for p in covered})
    assert all(g["weight_decay"] == 0.0 for g in schedule.groups if g["params"][0].ndim == 1)


def test_apply_freezes_grads_lr_and_bn_stats():
    model = create_model("resnet18", 10)
    schedule = FineTuneSchedule(model, StrategyConfig("gradual"), 0.01, 1e-4)
    optimizer = torch.optim.SGD([dict(g, lr=0.01 * g["lr_scale"]) for g in schedule.groups], lr=0.01)
    schedule.apply(1, model, optimizer)  # head + layer4
    assert all(p.requires_grad for p in model.layer4.parameters()) and not any(p.requires_grad for p in model.layer3.parameters())
    assert {g["stage"]: g["lr_scale"] for g in optimizer.param_groups}["layer3"] == 0.0
    before = model.layer3[0].bn1.running_mean.clone()
    model.train()(torch.randn(2, 3, 16, 16))
    assert torch.equal(model.layer3[0].bn1.running_mean, before)  # frozen stage: statistics fixed
    assert not torch.equal(model.layer4[0].bn1.running_mean, torch.zeros(256 * 2))  # trainable stage: updated

    keep = FineTuneSchedule(create_model("resnet18", 10), StrategyConfig("gradual"), 0.01, 1e-4, keep_grads=True)
    keep.apply(0)
    assert all(p.requires_grad for s in keep.stages for p in s.parameters())  # DDP: freeze by lr only


def test_bad_strategy_options():
    with pytest.raises(ConfigError, match="--strategy"):
        StrategyConfig("half").validate()
    with pytest.raises(ConfigError, match="--layer-decay"):
        StrategyConfig("full", layer_decay=1.5).validate()


# --------------------------------------------------------------------------- config


RECIPES = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "recipes").glob("finetune-*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_finetune_recipes_parse(recipe):
    from resnetlab.finetune import build_config

    config, options = build_config(recipe, {"data.spec": "somewhere"})
    options.validate()
    assert config.recipe == str(recipe) and config.data.spec == "somewhere"


def test_build_config_layers_defaults_recipe_and_overrides(tmp_path):
    from resnetlab.finetune import build_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune:\n  from: a.pth\n  strategy: gradual\noptim:\n  lr: 0.002\n")
    config, options = build_config(recipe, {"finetune.strategy": "linear-probe", "epochs": 3})
    assert options.source == "a.pth" and options.strategy == "linear-probe"  # overrides win
    assert config.optim.lr == 0.002 and config.epochs == 3 and config.schedule.name == "cosine"  # defaults below
    with pytest.raises(ConfigError, match="bogus"):
        build_config(None, {"finetune.bogus": 1})
    with pytest.raises(ConfigError, match="lr_head"):
        build_config(None, {"finetune.lr_head": "fast"})
