"""Outside checkpoints (issue 18): each format gives exactly its source's logits, or is refused.

Each source is represented by a reference model written here, in our own code, from that
project's published architecture description (not imported from resnetlab): random weights are
saved in that project's file layout, loaded through the importer, and the logits compared on a
random batch. Every format also has a negative control showing the comparison can fail.
"""

from __future__ import annotations

import io
import json
import tarfile

import httpx
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from helpers import REPO_ROOT, random_class_folder
from resnetlab.cli import main
from resnetlab.errors import CheckpointError, ConfigError, DataError
from resnetlab.inference.predictor import Predictor
from resnetlab.models import create_model
from resnetlab.models.files import load_model_file, read_model_info, save_model_file
from resnetlab.models.importers import (
    AKAMASTER_MEAN,
    AKAMASTER_STD,
    CIFAR10_CLASSES,
    FORMATS,
    KUANGLIU_MEAN,
    KUANGLIU_STD,
    load_any_model,
    recognise,
)

SHARED_WEIGHTS = REPO_ROOT.parent / "shared" / "weights"
SHARED_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"
ATOL = 1e-5


# ---------------------------------------------------------------------------------------------------
# Reference models, from the repositories' published descriptions.
#
# akamaster/pytorch_resnet_cifar10 (README + resnet.py): He et al.'s CIFAR ResNet-(6n+2); a 3x3
# conv with 16 filters + BN + ReLU; three stages of n basic blocks (16, 32, 64 filters; the first
# block of stages 2 and 3 has stride 2); option-A shortcut = x[:, :, ::2, ::2] zero-padded by
# planes // 4 channels on each side; global average pooling; a Linear named `linear`.
# kuangliu/pytorch-cifar (models/resnet.py, preact_resnet.py): ResNet-18/34/50 with a 3x3 stride-1
# stem (64 filters, no max-pool), projection shortcuts nn.Sequential(conv1x1, BN) named
# `shortcut`, avg_pool2d(4), `linear`; PreActResNet18: BN-ReLU-conv blocks whose projection is
# nn.Sequential(conv1x1) applied to the pre-activated input, and no BN-ReLU after the last block.


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class AkaBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3(planes, planes), nn.BatchNorm2d(planes)
        self.pad = planes // 4 if stride != 1 or cin != planes else None

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class AkaResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1, self.bn1 = _conv3(3, 16), nn.BatchNorm2d(16)
        cin, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(AkaBlock(cin, planes, stride if i == 0 else 1))
                cin = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(F.avg_pool2d(out, out.size(3)).flatten(1))


class KlBasic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3(planes, planes), nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class KlBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != out:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class KlPreActBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3(cin, planes, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv3(planes, planes)
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class KlResNet(nn.Module):
    def __init__(self, block, blocks: list[int], preact: bool = False, num_classes: int = 10):
        super().__init__()
        self.preact = preact
        self.conv1 = _conv3(3, 64)
        if not preact:
            self.bn1 = nn.BatchNorm2d(64)
        cin, stages = 64, []
        for planes, count, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
            layers = []
            for i in range(count):
                layers.append(block(cin, planes, stride if i == 0 else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x):
        out = self.conv1(x) if self.preact else F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


KUANGLIU = {
    "ResNet18": (lambda: KlResNet(KlBasic, [2, 2, 2, 2]), "resnet18_cifar", {}),
    "ResNet34": (lambda: KlResNet(KlBasic, [3, 4, 6, 3]), "resnet34_cifar", {}),
    "ResNet50": (lambda: KlResNet(KlBottleneck, [3, 4, 6, 3]), "resnet50_cifar", {}),
    "PreActResNet18": (lambda: KlResNet(KlPreActBlock, [2, 2, 2, 2], preact=True), "preact_resnet18", {"final_norm": False}),
}


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* BN statistics/affines, so no convention can hide behind identity BNs."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def batch(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))  # (B, 3, 32, 32), normalized


def save_akamaster(reference: AkaResNet, path, *, wrapper: bool = True):
    # akamaster's released files were written by torch < 0.4.1: no BN num_batches_tracked counters.
    state = {f"module.{k}": v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "best_prec1": 91.25} if wrapper else state, path)
    return path


def save_kuangliu(reference: KlResNet, path, *, wrapper: bool = True):
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}  # main.py saves the DataParallel net
    torch.save({"net": state, "acc": 95.1, "epoch": 199} if wrapper else state, path)
    return path


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------------
# akamaster


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_akamaster_logits_are_exact(tmp_path, depth):
    reference = randomized(AkaResNet(depth), seed=depth)
    model = load_any_model(save_akamaster(reference, tmp_path / f"resnet{depth}.th"))
    assert model.meta.name == f"resnet{depth}" and model.meta.options == {"shortcut_pad": "split"}
    assert (model.meta.mean, model.meta.std) == (AKAMASTER_MEAN, AKAMASTER_STD)
    assert model.meta.classes == CIFAR10_CLASSES
    x = batch()
    with torch.no_grad():
        assert max_diff(model(x), reference(x)) <= ATOL


def test_akamaster_negative_control_weights_loaded_as_ours_differ(tmp_path):
    """The same tensors in resnetlab's resnet20 (zeros appended): strict load passes, logits do not."""
    reference = randomized(AkaResNet(20))
    ours = create_model("resnet20").eval()
    state = {k.replace("linear.", "fc."): v for k, v in reference.state_dict().items()}
    ours.load_state_dict(state, strict=True)  # names and shapes all match: a strict load cannot see it
    x = batch()
    with torch.no_grad():
        assert max_diff(ours(x), reference(x)) > 1e-2  # so the exactness test above can fail


@pytest.mark.slow  # ~5 s: 600 blocks built on the meta device
def test_akamaster_resnet1202_maps_key_for_key():
    """ResNet-1202 (19.4M parameters): checked on the meta device, shapes only (no memory, no time)."""
    with torch.device("meta"):
        reference = AkaResNet(1202)
        target = create_model("resnet1202", shortcut_pad="split").state_dict()
    payload = {"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}, "best_prec1": 92.0}
    imported = recognise(payload, "resnet1202.th")
    assert imported.architecture == "resnet1202"
    assert {k: tuple(v.shape) for k, v in imported.state_dict.items()} == {k: tuple(v.shape) for k, v in target.items()}


def test_akamaster_inputs_normalized_as_theirs(tmp_path):
    """End to end on uint8 images: the Predictor's preprocessing is akamaster's ToTensor + Normalize."""
    reference = randomized(AkaResNet(20))
    predictor = Predictor.load(save_akamaster(reference, tmp_path / "r20.th"))
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def theirs(mean, std):
        x = images.permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return reference((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))

    assert max_diff(predictor.logits(images), theirs(AKAMASTER_MEAN, AKAMASTER_STD)) <= ATOL
    assert max_diff(predictor.logits(images), theirs(KUANGLIU_MEAN, KUANGLIU_STD)) > 1e-3  # the check can fail


# ---------------------------------------------------------------------------------------------------
# kuangliu


@pytest.mark.parametrize("name", list(KUANGLIU))
def test_kuangliu_logits_are_exact(tmp_path, name):
    build, architecture, options = KUANGLIU[name]
    reference = randomized(build(), seed=len(name))
    model = load_any_model(save_kuangliu(reference, tmp_path / "ckpt.pth"))
    assert model.meta.name == architecture and model.meta.options == options
    assert (model.meta.mean, model.meta.std) == (KUANGLIU_MEAN, KUANGLIU_STD)
    x = batch(2)
    with torch.no_grad():
        assert max_diff(model(x), reference(x)) <= ATOL


def test_kuangliu_bare_state_dict_is_recognised_by_its_key_names(tmp_path):
    reference = randomized(KUANGLIU["ResNet18"][0]())
    path = tmp_path / "bare.pth"
    torch.save(reference.state_dict(), path)
    model = load_any_model(path)
    assert model.extra["imported"]["format"] == "kuangliu" and "key names" in model.extra["imported"]["recognised_by"]
    x = batch(2)
    with torch.no_grad():
        assert max_diff(model(x), reference(x)) <= ATOL


def test_kuangliu_negative_control_preact_with_the_usual_final_bn_relu_differs(tmp_path):
    """PreActResNet18's weights in resnetlab's default preact_resnet18 (final BN-ReLU, here an identity BN):
    only the missing convention differs, and the logits do."""
    reference = randomized(KUANGLIU["PreActResNet18"][0]())
    imported = load_any_model(save_kuangliu(reference, tmp_path / "ckpt.pth"))
    usual = create_model("preact_resnet18").eval()
    state = dict(imported.state_dict())
    state.update({k: v for k, v in usual.state_dict().items() if k.startswith("bn.")})  # BN with its defaults
    usual.load_state_dict(state, strict=True)
    x = batch(2)
    with torch.no_grad():
        assert max_diff(imported(x), reference(x)) <= ATOL
        assert max_diff(usual(x), reference(x)) > 1e-2


# ---------------------------------------------------------------------------------------------------
# torchvision and timm (their own code is the reference)


def test_torchvision_state_dict_is_exact_with_imagenet_classes(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = randomized(torchvision.models.resnet18(weights=None))
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = load_any_model(path)
    assert model.meta.name == "resnet18" and model.extra["imported"]["format"] == "torchvision"
    assert len(model.meta.classes) == 1000 and model.meta.classes[0] == "tench"  # ImageNet-1k order, said so
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(model(x), reference(x)) <= ATOL
        # negative control: the same weights with resnetlab's CIFAR stem are another function
        cifar = create_model("resnet18", num_classes=1000, cifar_stem=True).eval()
        cifar.load_state_dict({k: v for k, v in model.state_dict().items() if k != "conv1.weight"}
                              | {"conv1.weight": model.conv1.weight[:, :, 2:5, 2:5]})
        assert max_diff(cifar(x), reference(x)) > 1e-2


def test_timm_plain_resnet_is_exact_and_resnet50d_is_refused(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = randomized(timm.create_model("resnet18", pretrained=False, num_classes=10))
    path = tmp_path / "timm18.pth"
    torch.save(reference.state_dict(), path)
    model = load_any_model(f"timm:{path}")
    assert model.extra["imported"]["format"] == "timm" and model.meta.classes is None
    x = batch(2)
    with torch.no_grad():
        assert max_diff(model(x), reference(x)) <= ATOL

    variant = timm.create_model("resnet50d", pretrained=False)
    path = tmp_path / "resnet50d.pth"
    torch.save(variant.state_dict(), path)
    for source_format in (None, "timm"):
        with pytest.raises(CheckpointError, match=r"deep 3-conv stem.*average-pool shortcuts.*refused rather than approximated"):
            load_any_model(path, source_format)
    from resnetlab.finetune.sources import load_source

    with pytest.raises(CheckpointError, match="refused rather than approximated"):
        load_source(path)


# ---------------------------------------------------------------------------------------------------
# recognise or refuse


def test_bare_option_a_state_dict_is_ambiguous_until_named(tmp_path, capsys):
    reference = randomized(AkaResNet(20))
    path = save_akamaster(reference, tmp_path / "bare.pth", wrapper=False)
    with pytest.raises(CheckpointError, match=r"cannot show where its zero channels go.*--source-format akamaster"):
        load_any_model(path)
    x = batch()
    for model in (load_any_model(path, "akamaster"), load_any_model(f"akamaster:{path}")):
        assert "--source-format" in model.extra["imported"]["recognised_by"]
        with torch.no_grad():
            assert max_diff(model(x), reference(x)) <= ATOL
    with pytest.raises(CheckpointError, match="not a kuangliu"):
        load_any_model(path, "kuangliu")
    with pytest.raises(ConfigError, match="prefix says akamaster but --source-format says kuangliu"):
        load_any_model(f"akamaster:{path}", "kuangliu")
    code = main(["predict", str(path), str(tmp_path)])
    assert code == 1 and "--source-format akamaster" in capsys.readouterr().err


def test_shortcut_pad_option_default_unchanged_and_checked(tmp_path):
    assert "shortcut_pad" not in create_model("resnet20").meta.options  # existing model files stay as they were
    with pytest.raises(ConfigError, match="shortcut_pad='middle'"):
        create_model("resnet20", shortcut_pad="middle")
    ours = randomized(create_model("resnet20"))
    torch.save(ours.state_dict(), tmp_path / "bare.pth")  # a bare state_dict() of resnetlab's own (zeros appended)
    model = load_any_model(tmp_path / "bare.pth", "resnetlab")
    assert model.meta.options == {}
    x = batch()
    with torch.no_grad():
        assert max_diff(model(x), ours(x)) <= ATOL


def test_unknown_layout_is_refused_naming_the_formats(tmp_path):
    torch.save({"encoder.weight": torch.zeros(4, 4), "head.weight": torch.zeros(2, 4)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"not a checkpoint layout resnetlab recognises.*akamaster, kuangliu"):
        load_any_model(tmp_path / "other.pth")


def test_cli_source_format_choices_are_the_importers():
    from resnetlab.commands import SOURCE_FORMATS

    assert tuple(SOURCE_FORMATS) == FORMATS


def test_finetune_source_keeps_the_padding_convention(tmp_path):
    from resnetlab.finetune.adapt import build_model
    from resnetlab.finetune.sources import load_source

    reference = randomized(AkaResNet(20))
    source = load_source(save_akamaster(reference, tmp_path / "r20.th"))
    assert source.kind == "akamaster" and source.options == {"shortcut_pad": "split"}
    model, report = build_model(source, 10, classes=list(CIFAR10_CLASSES))
    assert report.new == [k for k in report.new if k.endswith("num_batches_tracked")]  # the head was kept
    x = batch()
    with torch.no_grad():
        assert max_diff(model.eval()(x), reference(x)) <= ATOL
    source = load_source(f"akamaster:{save_akamaster(reference, tmp_path / 'bare.pth', wrapper=False)}")
    assert source.kind == "akamaster"


# ---------------------------------------------------------------------------------------------------
# round trip: model file, predict, export, serve


def test_imported_model_round_trips_through_model_file_and_onnx(tmp_path):
    from resnetlab.inference.export import export_model

    reference = randomized(AkaResNet(20))
    imported = load_any_model(save_akamaster(reference, tmp_path / "r20.th"))
    path = save_model_file(imported, tmp_path / "r20.safetensors")
    meta = read_model_info(path)["meta"]
    assert meta["options"] == {"shortcut_pad": "split"} and meta["classes"] == CIFAR10_CLASSES
    x = batch()
    with torch.no_grad():
        assert max_diff(load_model_file(path).eval()(x), reference(x)) <= ATOL
    result = export_model(path, "onnx", tmp_path / "r20.onnx")  # writes only after its own parity check
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    onnx_logits = Predictor.load(result.path).logits(images)
    assert max_diff(onnx_logits, Predictor.load(path).logits(images)) <= 1e-4


@pytest.mark.slow
def test_serve_and_predict_take_the_th_file_directly(tmp_path, serve_process, caplog):
    reference = randomized(AkaResNet(20))
    weights = save_akamaster(reference, tmp_path / "r20.th")
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    expected = Predictor.load(weights).predict([str(image)], top_k=3)[0]

    with caplog.at_level("INFO"):
        assert main(["predict", str(weights), str(image), "--top-k", "3", "--output", str(tmp_path / "p.json")]) == 0
    assert "recognised akamaster" in caplog.text
    predicted = json.loads((tmp_path / "p.json").read_text())["predictions"][0]["top_k"]
    assert [p["class"] for p in predicted] == [c for c, _ in expected]

    _, url = serve_process(weights)
    with open(image, "rb") as handle:
        response = httpx.post(f"{url}/predict", files={"file": ("img.png", handle, "image/png")}, timeout=30)
    assert response.status_code == 200
    body = json.dumps(response.json())
    assert expected[0][0] in body and f"{expected[0][1]:.4f}"[:5] in body


# ---------------------------------------------------------------------------------------------------
# evaluate any folder


@pytest.fixture
def plain_folder(tmp_path):
    """<class>/*.png with two of CIFAR-10's classes in reverse alphabetical order of their indices."""
    return random_class_folder(tmp_path / "photos", names=("ship", "cat"), per_class=3, size=40)


def test_evaluate_a_plain_folder_whole_with_classes_matched_by_name(tmp_path, plain_folder, caplog):
    weights = save_akamaster(randomized(AkaResNet(20)), tmp_path / "r20.th")
    out = tmp_path / "eval"
    with caplog.at_level("INFO"):  # the CLI sends INFO records to stderr
        assert main(["evaluate", str(weights), "--data", str(plain_folder), "--out", str(out), "--device", "cpu"]) == 0
    assert "recognised akamaster" in caplog.text and "CIFAR-10 order assumed" in caplog.text
    assert "evaluating all its 6 images" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["context"]["model"]["imported"]["format"] == "akamaster"
    assert metrics["num_samples"] == 6 and metrics["context"]["data"]["split"] == "all"
    assert metrics["context"]["data"]["classes"] == CIFAR10_CLASSES  # reported in the model's class order
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == 6
    for row in rows:  # every image keeps its own folder's class, whatever the index order
        path, true = row.split(",")[1:3]
        assert path.split("/")[-2] == true


def test_evaluate_folder_with_unknown_classes_lists_them(tmp_path, plain_folder, capsys):
    (plain_folder / "unicorn").mkdir()
    Image.new("RGB", (32, 32)).save(plain_folder / "unicorn" / "0.png")
    weights = save_akamaster(randomized(AkaResNet(20)), tmp_path / "r20.th")
    code = main(["evaluate", str(weights), "--data", str(plain_folder), "--out", str(tmp_path / "e"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "does not know: unicorn" in err[-1] and "airplane" in err[-1]
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_predict_a_plain_folder_per_image(tmp_path, plain_folder, capsys):
    weights = save_akamaster(randomized(AkaResNet(20)), tmp_path / "r20.th")
    assert main(["predict", str(weights), str(plain_folder), "-q", "--output", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert len(rows) == 6 and all(r.split(",")[1] in CIFAR10_CLASSES for r in rows)


def test_match_classes_rejects_nothing_silently():
    from resnetlab.data.imageset import ImageSet
    from resnetlab.evaluation.runner import match_classes

    model = create_model("resnet20")
    model.meta.classes = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
    data = ImageSet(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), torch.tensor([0, 1]), ["j", "a"])
    matched = match_classes(data, model, "x")
    assert matched.labels.tolist() == [9, 0] and matched.classes == model.meta.classes
    with pytest.raises(DataError, match="does not know: zz"):
        match_classes(ImageSet(data.images, data.labels, ["a", "zz"]), model, "x")


# ---------------------------------------------------------------------------------------------------
# real weights on real images


def _shared_images(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` JPEGs of each class folder of the shared archive, decoded with PIL."""
    images, labels, taken = [], [], dict.fromkeys(CIFAR10_CLASSES, 0)
    with tarfile.open(SHARED_ARCHIVE) as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or parts[-2] not in taken or taken[parts[-2]] >= per_class:
                continue
            taken[parts[-2]] += 1
            data = archive.extractfile(member).read()
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            labels.append(CIFAR10_CLASSES.index(parts[-2]))
            if all(v >= per_class for v in taken.values()):
                break
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


@pytest.mark.slow
def test_real_akamaster_resnet32_on_1000_shared_images():
    weights = SHARED_WEIGHTS / "resnet32-d509ac18.th"
    if not weights.is_file() or not SHARED_ARCHIVE.is_file():
        pytest.skip(f"real-data test: {weights} or {SHARED_ARCHIVE} is absent")
    torch.set_num_threads(2)
    images, labels = _shared_images(100)  # 1,000 images, 100 per class: the standard error of the accuracy is ~1%
    predictor = Predictor.load(weights)
    accuracy = float((predictor.logits(images).argmax(1) == labels).float().mean())
    # akamaster trained on these images (lossless; these are JPEG copies): measured 88.5% on these 1,000 (88.4%
    # on the first 2,000), 88.1% on all 50,000 (BENCHMARKS.md); chance is 10%, and the same weights with zeros
    # appended score 4.7%.
    assert accuracy > 0.80, accuracy

    wrong = create_model("resnet32").eval()  # the negative control on real data: zeros appended
    wrong.load_state_dict(predictor.model.state_dict(), strict=True)
    wrong.meta = predictor.meta
    few, few_labels = images[::5], labels[::5]  # 200 images, 20 per class: enough to see chance
    wrong_accuracy = float((Predictor.from_model(wrong).logits(few).argmax(1) == few_labels).float().mean())
    assert wrong_accuracy < 0.3, wrong_accuracy  # measured 4.7% on the 2,000

    # The source's own architecture (the reference above) with the file's tensors: the same logits.
    reference = AkaResNet(32).eval()
    state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
    reference.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    x = (few.permute(0, 3, 1, 2).float() / 255 - torch.tensor(AKAMASTER_MEAN).view(1, 3, 1, 1)) / torch.tensor(AKAMASTER_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert max_diff(predictor.logits(few), reference(x)) <= 1e-4
