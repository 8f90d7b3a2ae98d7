"""CAM and Grad-CAM (resnetlab.evaluation.explain), `resnetlab explain`, the report gallery and the page's heatmap."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import resnetlab
from resnetlab.cli import main
from resnetlab.errors import ConfigError
from resnetlab.evaluation import explain
from resnetlab.evaluation.evaluate import evaluate_model
from resnetlab.models import create_model
from resnetlab.models.base import ClassifierModel
from resnetlab.models.files import save_model_file
from resnetlab.serve.app import create_app

from helpers import random_class_folder, running_server, tiny_splits

CLASSES = ["cat", "dog", "horse", "ship"]
SHARED = Path(__file__).resolve().parents[2] / "shared"


def _model(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(CLASSES), **options).eval()
    _randomise_batchnorm(model)
    model.meta.classes = list(CLASSES)
    return model


def _randomise_batchnorm(model: nn.Module) -> None:
    # Fresh BN layers are the identity with zero shifts; random statistics make the maps less trivial.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    save_model_file(_model("resnet20"), folder)
    return folder


# ---- CAM: exact, from the model's own split ---------------------------------------------------------


@pytest.mark.parametrize("name, options, size", [
    ("resnet20", {}, 32),
    ("resnet32", {"shortcut_pad": "split"}, 32),  # what an akamaster checkpoint is imported as
    ("preact_resnet18", {}, 32),
    ("resnet18", {}, 64),  # torchvision's layout (ImageNet stem): a 2x2 map at 64 px
])
def test_cam_is_an_exact_decomposition_of_every_logit(name, options, size):
    model = _model(name, **options)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(x)  # the plain forward, not the split
    bias = model.get_classifier().bias
    for c in range(len(CLASSES)):
        maps, logits = explain.cam(model, x, torch.full((3,), c))
        assert maps.ndim == 3 and min(maps.shape[1:]) >= 2
        assert torch.allclose(logits, reference, atol=1e-5)
        # Zhou et al. 2016: the logit is the spatial mean of the class's CAM plus its bias.
        assert torch.allclose(maps.mean((1, 2)) + bias[c], reference[:, c], atol=1e-5)


@pytest.mark.parametrize("name", ["fastnet94", "resnet9", "cnn_baseline"])
def test_cam_refuses_models_it_is_not_defined_for(name):
    model = _model(name)
    assert not explain.supports_cam(model)  # global max pooling / a scaled head / no spatial map before an MLP
    with pytest.raises(ConfigError, match="--method cam: .*use --method gradcam"):
        explain.cam(model, torch.randn(1, 3, 32, 32))
    assert explain.resolve_method(model, None) == "gradcam"


# ---- Grad-CAM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [None, "layer3"])  # the model's split, and a forward hook on the same tensor
def test_gradcam_without_relu_is_cam_up_to_a_positive_scale(layer):
    model = _model("resnet20")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([0, 1, 2, 3])
    cam_maps, _ = explain.cam(model, x, target)
    grad_maps, logits = explain.grad_cam(model, x, target, layer=layer, relu=False)
    assert torch.allclose(logits, model(x), atol=1e-5)
    for a, b in zip(cam_maps, grad_maps):
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert corr > 0.999
        scale = (b * a).sum() / (a * a).sum()
        assert scale > 0  # alpha_k = w_ck / (h w): the scale is 1/64 on an 8x8 map
        assert scale.item() == pytest.approx(1 / a.numel(), rel=1e-3)


def test_gradcam_runs_on_models_without_cam():
    for name in ("fastnet94", "cnn_baseline"):
        model = _model(name)
        x = torch.randn(2, 3, 32, 32)
        maps, logits = explain.grad_cam(model, x)
        assert maps.ndim == 3 and bool((maps >= 0).all()) and torch.isfinite(maps).all()
        assert torch.allclose(logits, model(x), atol=1e-5)
    with pytest.raises(ConfigError, match="--layer nope"):
        explain.grad_cam(_model("resnet20"), torch.randn(1, 3, 32, 32), layer="nope")


class PatchNet(ClassifierModel):
    """A tiny GAP + linear net (a new model needs only ``forward_feature_map`` for CAM)."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)  # (B, 32, 16, 16)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv3(self.relu(self.conv2(self.relu(self.conv1(x))))))


COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])


def _patch_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise with a coloured 8x8 square (its colour is the class) and a grey decoy square, both at random
    places that do not overlap. Returns (x, labels, masks of the coloured squares)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    masks = torch.zeros(n, 32, 32, dtype=torch.bool)
    for i, c in enumerate(labels.tolist()):
        while True:
            (y0, x0), (y1, x1) = torch.randint(0, 25, (2, 2), generator=g).tolist()
            if abs(y0 - y1) >= 8 or abs(x0 - x1) >= 8:
                break
        masks[i, y0:y0 + 8, x0:x0 + 8] = True
        x[i, :, y0:y0 + 8, x0:x0 + 8] = COLOURS[c].view(3, 1, 1)
        x[i, :, y1:y1 + 8, x1:x1 + 8] = 0.55  # the same for every class: it tells nothing
    return x - 0.3, labels, masks


def _patch_hit_rates(model: nn.Module, x: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """For CAM, Grad-CAM on the split and Grad-CAM through a hook: how often the heatmap's peak is in the square."""
    rates = []
    for maps, _ in (explain.cam(model, x), explain.grad_cam(model, x), explain.grad_cam(model, x, layer="conv3")):
        up = nn.functional.interpolate(maps[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
        peak = up.flatten(1).argmax(1)
        rates.append(masks.flatten(1)[torch.arange(len(x)), peak].float().mean().item())
    return rates


def test_heatmaps_land_on_the_planted_discriminative_patch():
    torch.manual_seed(0)
    model = PatchNet()
    x, y, masks = _patch_images(32, seed=10_000)
    # Negative control: before training the peak is often elsewhere (measured 0.5 for every method).
    assert min(_patch_hit_rates(model.eval(), x, masks)) < 0.9
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):  # ~1.5 s on one core; 100% accuracy from ~30 steps on
        batch, labels, _ = _patch_images(32, seed=step)
        loss = nn.functional.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.95  # it learnt the task
    # A square covers 6% of the image, and a grey decoy sits beside it: measured 100% for each method.
    assert min(_patch_hit_rates(model, x, masks)) >= 0.95


# ---- overlays ---------------------------------------------------------------------------------------


def test_overlay_blends_the_colormap_and_enlarges_small_images():
    from matplotlib import colormaps

    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[:, 4:] = 1.0
    out = explain.overlay(image, heat, alpha=0.5, min_side=32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    for value, pixel in ((0.0, out[0, 0]), (1.0, out[0, -1])):
        expected = 0.5 * 100 / 255 + 0.5 * np.asarray(colormaps[explain.COLORMAP](value)[:3])
        assert np.abs(pixel.astype(float) - expected * 255).max() <= 1
    flat = explain.scale_unit(torch.ones(1, 4, 4))
    assert torch.equal(flat, torch.zeros(1, 4, 4))  # no evidence anywhere: no hot spot


# ---- resnetlab explain ------------------------------------------------------------------------------


def test_explain_cli_writes_overlays_and_json(model_dir, tmp_path, capsys):
    images = random_class_folder(tmp_path / "images", names=("a", "b"), per_class=2, size=40)
    (images / "a" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["explain", str(model_dir), str(images), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err
    payload = json.loads((out / "explanations.json").read_text())
    assert payload["method"] == "cam" and payload["model"] == "resnet20"
    done = [e for e in payload["images"] if "file" in e]
    assert len(done) == 4 and [e for e in payload["images"] if "error" in e][0]["path"].endswith("broken.png")
    # The predictions are predict's (an independent path: Predictor.predict on the same files).
    predictor = resnetlab.load(model_dir)
    for entry in done:
        [[(best, p)]] = predictor.predict([entry["path"]], top_k=1)
        assert entry["predicted"] == best == entry["class"] and entry["probability"] == pytest.approx(p, abs=1e-5)
        with Image.open(out / entry["file"]) as overlay:
            assert overlay.mode == "RGB" and overlay.size == (224, 224)  # 32x32 input shown at 7x
    assert len({e["file"] for e in done}) == 4  # same stems in two folders do not overwrite each other

    # --class and --method gradcam: every image explains the named class.
    out2 = tmp_path / "out2"
    assert main(["explain", str(model_dir), str(images / "b"), "--out", str(out2), "--class", "ship", "--method", "gradcam"]) == 0
    entries = json.loads((out2 / "explanations.json").read_text())["images"]
    assert {e["class"] for e in entries} == {"ship"} and {e["method"] for e in entries} == {"gradcam"}

    # A calibrated model: the probability is the one predict reports, softmax(logits / T).
    calibrated = _model("resnet20")
    calibrated.meta.temperature = 3.0
    save_model_file(calibrated, tmp_path / "calibrated")
    assert main(["explain", str(tmp_path / "calibrated"), done[0]["path"], "--out", str(tmp_path / "out3")]) == 0
    [entry] = json.loads((tmp_path / "out3" / "explanations.json").read_text())["images"]
    [[(best, p)]] = resnetlab.load(tmp_path / "calibrated").predict([entry["path"]], top_k=1)
    assert entry["predicted"] == best == done[0]["predicted"] and entry["probability"] == pytest.approx(p, abs=1e-5)
    assert entry["probability"] < done[0]["probability"]  # T > 1 softens the same logits


def test_explain_cli_errors_are_one_line(model_dir, tmp_path, capsys):
    picture = tmp_path / "p.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(picture)
    fast_dir = tmp_path / "fast"
    save_model_file(_model("fastnet94"), fast_dir)
    (tmp_path / "file.txt").write_text("x")
    cases = [
        (["explain", str(model_dir), str(picture), "--class", "zebra", "--out", str(tmp_path / "o1")], "--class zebra"),
        (["explain", str(fast_dir), str(picture), "--method", "cam", "--out", str(tmp_path / "o2")], "--method cam"),
        (["explain", str(model_dir), str(picture), "--out", str(tmp_path / "file.txt")], "--out"),
        (["explain", str(model_dir), str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o3")], "missing.jpg"),
    ]
    for argv, needle in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert needle in err
        assert "Traceback" not in err
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))


# ---- the report's gallery and the page --------------------------------------------------------------


def test_report_gallery_carries_heatmaps(tmp_path):
    splits = tiny_splits(n_train=8, n_val=8, classes=4, n_test=24, names=CLASSES)
    metrics = evaluate_model(_model("resnet20"), splits.test, tmp_path)
    assert metrics["most_confident_wrong"] and metrics["most_confident_wrong_heatmaps"] == "cam"
    with Image.open(tmp_path / "wrong_images.png") as png:
        assert png.width == 4 * (2 * 120 + 40)  # four tiles a row, each picture + heatmap
    heatmaps, method = explain.gallery_heatmaps(_model("cnn_baseline"), splits.test.images[:3])
    assert method == "gradcam" and heatmaps.shape == (3, 32, 32) and heatmaps.max() == pytest.approx(1.0)
    assert explain.gallery_heatmaps(object(), splits.test.images[:3]) == (None, None)  # e.g. an ONNX Predictor


def test_predict_endpoint_returns_heatmaps_on_request(model_dir):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(buffer, format="PNG")
    files = [("file", ("a.png", buffer.getvalue(), "image/png")), ("file", ("b.png", buffer.getvalue(), "image/png"))]
    with running_server(create_app(resnetlab.load(model_dir), top_k=2)) as url:
        plain = httpx.post(f"{url}/predict", files=files, timeout=30).json()
        shown = httpx.post(f"{url}/predict?heatmap=1", files=files, timeout=30).json()
    assert all("heatmap" not in p for p in plain["predictions"])
    assert [p["top_k"] for p in shown["predictions"]] == [p["top_k"] for p in plain["predictions"]]
    for p in shown["predictions"]:
        prefix = "data:image/png;base64,"
        assert p["heatmap"].startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(p["heatmap"][len(prefix):]))) as picture:
            assert picture.size == (224, 224)


# ---- real weights on real images --------------------------------------------------------------------


def test_real_akamaster_resnet32_cam(tmp_path, capsys):
    weights, archive = SHARED / "weights" / "resnet32-d509ac18.th", SHARED / "data" / "cifar10-jpeg-train.tar.gz"
    if not weights.is_file() or not archive.is_file():
        pytest.skip(f"real-data test: {weights} or {archive} is absent")
    folder = tmp_path / "airplane"
    folder.mkdir()
    with tarfile.open(archive) as tar:  # the archive starts with train/airplane/0000.jpg
        for member in tar:
            if member.isfile() and member.name.startswith("train/airplane/"):
                (folder / Path(member.name).name).write_bytes(tar.extractfile(member).read())
                if len(list(folder.iterdir())) == 4:
                    break
    assert main(["explain", str(weights), str(folder), "--out", str(tmp_path / "out")]) == 0
    entries = json.loads((tmp_path / "out" / "explanations.json").read_text())["images"]
    assert len(entries) == 4 and {e["method"] for e in entries} == {"cam"}
    predictor = resnetlab.load(weights)
    x = explain.model_input(predictor.model, predictor.prepare(sorted(folder.iterdir())))
    maps, logits = explain.cam(predictor.model, x)
    assert torch.allclose(logits, predictor.logits(predictor.prepare(sorted(folder.iterdir()))), atol=1e-4)
    bias = predictor.model.get_classifier().bias[logits.argmax(1)]
    assert torch.allclose(maps.mean((1, 2)) + bias, logits.max(1).values, atol=1e-4)
