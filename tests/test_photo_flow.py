"""Photos of many sizes, end to end (issue 23, item 5), and test-time augmentation in predict and serve (item 4).

The flow is the README's: a folder with train/ and val/ of varied-size, varied-aspect images, then
``finetune --from`` a ResNet-18 state dict at 160 px, ``evaluate``, ``predict`` on raw photographs
(scikit-image's shipped ones) and ``serve``. The "pretrained" ResNet-18 is torchvision's architecture
with random weights, saved as a state dict: nothing is downloaded.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from helpers import running_server
from resnetlab.inference.predictor import Predictor
from resnetlab.models import create_model

PHOTO_NAMES = ("chelsea", "coffee", "hubble_deep_field")  # 300x451, 400x600 and 872x1000


# ---------------------------------------------------------------------- TTA (fast)
@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=3)
    model.meta.classes = ["a", "b", "c"]
    return Predictor.from_model(model)


def _views_by_hand(images: np.ndarray) -> list[np.ndarray]:
    """evaluate --tta's six views, rebuilt with numpy: {as is, flipped} x {no shift, shifted up-left, down-right by side/16}."""
    n, h, w, _ = images.shape
    t = max(1, min(h, w) // 16)
    views = []
    for base in (images, images[:, :, ::-1]):
        padded = np.pad(base, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
        views += [base, padded[:, 2 * t: 2 * t + h, 2 * t: 2 * t + w], padded[:, :h, :w]]
    return [np.ascontiguousarray(v) for v in views]


def test_tta_probabilities_are_the_mean_over_views(predictor):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    expected = torch.stack([predictor.probabilities(view) for view in _views_by_hand(images)]).mean(0)
    got = predictor.probabilities_tta(torch.from_numpy(images))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, predictor.probabilities(images), atol=1e-4)  # TTA changes the answer


def test_serve_tta_query_parameter(predictor):
    from PIL import Image
    import io

    from resnetlab.serve.app import create_app

    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    files = {"file": ("x.png", buffer.getvalue(), "image/png")}
    with running_server(create_app(predictor)) as url:
        plain = httpx.post(f"{url}/predict", params={"top_k": 3}, files=files, timeout=30).json()
        tta = httpx.post(f"{url}/predict", params={"top_k": 3, "tta": 1}, files=files, timeout=30).json()
    assert (plain["tta"], tta["tta"]) == (False, True)
    expected = predictor.probabilities_tta(torch.from_numpy(pixels[None]))[0]
    for entry in tta["predictions"][0]["top_k"]:
        assert entry["probability"] == pytest.approx(float(expected[predictor.classes.index(entry["class"])]), abs=1e-5)
    plain_expected = predictor.probabilities(pixels)[0]
    assert plain["predictions"][0]["top_k"][0]["probability"] == pytest.approx(float(plain_expected.max()), abs=1e-5)


# ---------------------------------------------------------------------- the whole flow (slow)
def _photo_like_folder(root, rng) -> None:
    """Two learnable classes of CIFAR-sized pictures upscaled onto canvases of random size and aspect.

    Class 'warm' has a red-dominant 32x32 picture, 'cool' a blue one; each is enlarged 2-5x and pasted
    at a random place on a grey-noise canvas 80-260 px wide and tall (aspect 0.4-2.5).
    """
    from PIL import Image

    for split, count in (("train", 8), ("val", 4)):
        for channel, name in ((0, "warm"), (2, "cool")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                small = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
                small[..., channel] += 150
                scale = int(rng.integers(2, 6))
                picture = Image.fromarray(small).resize((32 * scale, 32 * scale), Image.BICUBIC)
                width = int(rng.integers(max(80, picture.width), 261))
                height = int(rng.integers(max(80, picture.height), 261))
                canvas = Image.fromarray(rng.integers(90, 140, (height, width, 3), dtype=np.uint8))
                canvas.paste(picture, (int(rng.integers(0, width - picture.width + 1)), int(rng.integers(0, height - picture.height + 1))))
                canvas.save(folder / f"{i:02d}.{'jpg' if i % 2 else 'png'}", quality=92)


def _resnetlab(capsys, *args) -> str:
    """Run a resnetlab command in this process (the CLI's own entry point); its stdout. Only serve gets a process of its own."""
    from resnetlab.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, f"resnetlab {' '.join(map(str, args))} exited {code}:\n{err[-3000:]}"
    return out


@pytest.mark.slow
def test_photo_flow_finetune_evaluate_predict_serve(tmp_path, serve_process, capsys):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the real photographs (pip install 'resnetlab[test]')")
    import torchvision
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "photos"
    _photo_like_folder(data, rng)
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in PHOTO_NAMES:  # real photographs at their own sizes
        Image.fromarray(getattr(skimage_data, name)()).save(raw / f"{name}.jpg", quality=90)
    torch.manual_seed(0)
    source = tmp_path / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), source)

    run = tmp_path / "run"
    tuned = _resnetlab(capsys, "finetune", "--from", source, "--model", "resnet18", "--data", data, "--image-size", 160,
                       "--epochs", 1, "--device", "cpu", "--run-dir", run, "--set", "eval_report=false")
    assert "small data: 16 training images, so batch 64 -> 16" in tuned
    summary = json.loads((run / "summary.json").read_text())
    assert summary["majority_baseline"]["val"]["accuracy"] == 0.5 and summary["baseline_verdict"]["text"]
    assert json.loads((run / "model.json").read_text())["meta"]["input_size"] == [3, 160, 160]

    _resnetlab(capsys, "evaluate", run, "--data", data, "--split", "val", "--out", tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == 8 and metrics["majority_baseline"]["accuracy"] == 0.5
    assert "majority-class baseline" in (tmp_path / "eval" / "report.md").read_text()

    photos = sorted(raw.glob("*.jpg"))
    _resnetlab(capsys, "predict", run, *photos, "--output", tmp_path / "plain.json", "--quiet")
    _resnetlab(capsys, "predict", run, *photos, "--tta", "--output", tmp_path / "tta.json", "--quiet")
    plain, tta = (json.loads((tmp_path / f"{n}.json").read_text())["predictions"] for n in ("plain", "tta"))
    assert len(plain) == len(tta) == len(PHOTO_NAMES) and all("top_k" in row for row in plain + tta)
    # The same run, loaded here: predict --tta gives the mean over the views of the resized photos
    # (prepared at the TTA canvas: a crop_pct < 1 model's corner crops need the border around the crop).
    predictor = Predictor.load(run)
    assert json.loads((tmp_path / "tta.json").read_text())["tta_views"] == predictor.tta_view_names
    images = predictor.prepare([str(p) for p in photos], tta=True)
    expected = predictor.probabilities_tta(images)
    for row, probs in zip(tta, expected):
        assert row["top_k"][0]["probability"] == pytest.approx(float(probs.max()), abs=1e-4)

    process, url = serve_process(run)
    with open(photos[0], "rb") as handle:
        answer = httpx.post(f"{url}/predict", params={"tta": 1}, files={"file": (photos[0].name, handle.read(), "image/jpeg")}, timeout=60)
    assert answer.status_code == 200 and answer.json()["tta"] is True
    assert answer.json()["predictions"][0]["top_k"][0]["probability"] == pytest.approx(float(expected[0].max()), abs=1e-4)
