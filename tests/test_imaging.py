"""One file, one tensor: train, evaluate, predict, serve and the ONNX path go through resnetlab.imaging.

Each path is run for real and the float tensor that reaches the network is captured (a forward
pre-hook on the torch model; the input handed to onnxruntime for the ONNX predictor).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from resnetlab import imaging
from resnetlab.data.decode import decode_bytes
from resnetlab.data.folders import load_image_folder
from resnetlab.data.loader import DeviceLoader
from resnetlab.evaluation.predictions import collect_outputs
from resnetlab.inference.predictor import Predictor
from resnetlab.inference.preprocess import image_to_array
from resnetlab.models import create_model
from resnetlab.serve.app import create_app


def _photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    return Image.fromarray((ramp * 0.6 + rng.integers(0, 100, (height, width, 3))).astype(np.uint8))


@pytest.fixture(scope="module")
def awkward_folder(tmp_path_factory):
    """Files that exercise every rule: resize + crop, JPEG draft, EXIF rotation, alpha, 16-bit, palette."""
    root = tmp_path_factory.mktemp("imaging") / "images"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, as phones do
    _photo(300, 200, 0).save(root / "cat" / "sideways.jpg", quality=90, exif=exif.tobytes())
    _photo(32, 32, 1).save(root / "cat" / "exact.jpg", quality=90)
    _photo(45, 37, 2).convert("RGBA").save(root / "cat" / "alpha.png")
    deep = (np.arange(50 * 40, dtype=np.uint16).reshape(40, 50) * 31) % 65535
    Image.fromarray(deep.astype(np.uint16)).save(root / "dog" / "deep.png")
    _photo(64, 90, 3).convert("P").save(root / "dog" / "palette.gif")
    _photo(33, 31, 4).save(root / "dog" / "odd.tif")
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create_model("cnn_baseline", num_classes=2)
    net.meta.classes = ["cat", "dog"]
    return net.eval()


class _Capture:
    """Forward pre-hook that keeps every batch the network receives, one row per image."""

    def __init__(self, net):
        self.rows: list[torch.Tensor] = []
        self.handle = net.register_forward_pre_hook(lambda _m, args: self.rows.extend(args[0].detach().cpu().clone()))

    def take(self) -> list[torch.Tensor]:
        rows, self.rows = self.rows, []
        return rows


def _predict_and_serve_inputs(predictor, names: list[str], capture) -> tuple[list, list]:
    """The tensors the network received from ``predict`` on the files, then from ``serve`` on their uploads."""
    predictor.probabilities(names)
    predict = capture.take()
    client = TestClient(create_app(predictor, report_dir=None))
    for name in names:
        with open(name, "rb") as f:
            assert client.post("/predict", files={"file": (name.rsplit("/", 1)[-1], f.read())}).status_code == 200
    return predict, capture.take()


@pytest.mark.slow  # 2.5-9 s on 2 shared cores: a real ONNX export with its parity check
def test_every_path_feeds_identical_tensors(awkward_folder, model, tmp_path):
    data = load_image_folder(awkward_folder, image_size=32, data_dir=tmp_path / "cache")["train"]
    names = [str(awkward_folder / p) for p in data.paths]
    assert len(names) == 6
    capture = _Capture(model)
    try:
        loader = DeviceLoader(data, batch_size=len(names), train=False, mean=model.meta.mean, std=model.meta.std)
        (x, _), = list(loader)
        train = list(x)

        collect_outputs(model, data.images, batch_size=len(names))
        evaluate = capture.take()

        predictor = Predictor.from_model(model)
        predict, serve = _predict_and_serve_inputs(predictor, names, capture)
    finally:
        capture.handle.remove()

    from resnetlab.inference.export import export_onnx

    export_onnx(model, tmp_path / "m.onnx")
    onnx = Predictor.from_onnx(tmp_path / "m.onnx")
    fed: list[torch.Tensor] = []
    run = onnx._run
    onnx._run = lambda batch: (fed.extend(batch.clone()), run(batch))[1]
    onnx.probabilities(names)

    for path, expected in (("evaluate", evaluate), ("predict", predict), ("serve", serve), ("onnx", fed)):
        assert len(expected) == len(names), path
        for name, a, b in zip(names, train, expected):
            assert torch.equal(a, b), f"{path} differs from train on {name}: max {float((a - b).abs().max()):.3g}"


def test_evaluate_resizes_to_the_model_input_as_training_does(awkward_folder, tmp_path):
    """A model trained at 48x48 on 32x32 data (finetune --resize 48) is evaluated at 48x48, like training
    (this replaced a forward hook that fine-tuning used to patch into its models)."""
    data = load_image_folder(awkward_folder, image_size=32, data_dir=tmp_path / "cache")["train"]
    model = create_model("resnet20", num_classes=2).eval()  # global pooling: takes any size
    model.meta.input_size = (3, 48, 48)
    capture = _Capture(model)
    try:
        loader = DeviceLoader(data, batch_size=len(data), train=False, mean=model.meta.mean, std=model.meta.std, resize_to=48)
        (x, _), = list(loader)
        collect_outputs(model, data.images, batch_size=len(data))
        evaluate = capture.take()
    finally:
        capture.handle.remove()
    assert x.shape[-2:] == (48, 48)
    assert all(torch.equal(a, b) for a, b in zip(x, evaluate)) and len(evaluate) == len(data)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # PIL's note on the deliberately broken block
def test_train_decoder_and_predict_share_the_rules(tmp_path):
    """The disagreements issue 22 lists: formats, pixel limit, bad EXIF, error classes."""
    from resnetlab.data import decode
    from resnetlab.inference import preprocess

    assert decode.IMAGE_EXTENSIONS is preprocess.IMAGE_EXTENSIONS is imaging.IMAGE_EXTENSIONS
    assert {".ppm", ".jfif"} <= imaging.IMAGE_EXTENSIONS
    assert decode.MAX_PIXELS == preprocess.MAX_IMAGE_PIXELS == imaging.MAX_PIXELS
    # The resize is recorded in the model's metadata; a file asking for another one is refused.
    from resnetlab.errors import CheckpointError
    from resnetlab.models.metadata import validate_meta

    meta = create_model("cnn_baseline", num_classes=2).meta.to_dict()
    assert meta["interpolation"] == imaging.INTERPOLATION == "bicubic"
    with pytest.raises(CheckpointError, match="model.json: .*interpolation must be 'bicubic'"):
        validate_meta({**meta, "interpolation": "nearest"}, "model.json")

    # A picture with an EXIF block that cannot be parsed: both paths decode it, identically.
    buf = io.BytesIO()
    _photo(40, 30, 5).save(buf, format="JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    data = buf.getvalue()
    assert np.array_equal(decode_bytes(data, 32), image_to_array(data, (32, 32)))

    # One error family: an unreadable file is an ImageDecodeError on both paths.
    with pytest.raises(imaging.ImageDecodeError):
        decode_bytes(b"not an image at all")
    with pytest.raises(imaging.ImageDecodeError):
        image_to_array(b"not an image at all", (32, 32))
    # Over the limit: ImageTooLargeError on both paths (a header claiming 8000x7000 = 56 M pixels).
    big = io.BytesIO()
    Image.new("L", (8000, 7000)).save(big, format="PNG")
    with pytest.raises(imaging.ImageTooLargeError):
        decode_bytes(big.getvalue())
    with pytest.raises(imaging.ImageTooLargeError):
        image_to_array(big.getvalue(), (32, 32))


def test_photo_crop_pct_feeds_identical_tensors(awkward_folder, tmp_path):
    """A photo model (crop_pct 0.875 recorded): validation on the photo path, evaluate, predict and serve
    all resize to size / crop_pct and take the same centre crop, so the same tensors reach the network."""
    from resnetlab.data.photo import eval_imageset, for_model

    torch.manual_seed(0)
    net = create_model("cnn_baseline", num_classes=2).eval()
    net.meta.classes, net.meta.crop_pct = ["cat", "dog"], 0.875
    data = load_image_folder(awkward_folder, image_size=32, data_dir=tmp_path / "cache")["train"]
    names = [str(awkward_folder / p) for p in data.paths]
    capture = _Capture(net)
    try:
        val = eval_imageset(data, 32, 0.875)  # what training validates on
        (x, _), = list(DeviceLoader(val, batch_size=len(names), train=False, mean=net.meta.mean, std=net.meta.std))
        train = list(x)
        collect_outputs(net, for_model(data, net.meta).images, batch_size=len(names))
        evaluate = capture.take()
        predict, serve = _predict_and_serve_inputs(Predictor.from_model(net), names, capture)
    finally:
        capture.handle.remove()
    # The crop is really tighter than crop_pct 1.0's on the non-square files.
    assert not all(torch.equal(a, b) for a, b in zip(val.images, data.images))
    for path, expected in (("evaluate", evaluate), ("predict", predict), ("serve", serve)):
        assert len(expected) == len(names), path
        for name, a, b in zip(names, train, expected):
            assert torch.equal(a, b), f"{path} differs from validation on {name}"


# ---------------------------------------------------------------------- TTA of a photo model (issue 23, item 4)
def _ten_crops_by_hand(path, side: int, crop_pct: float) -> list[np.ndarray]:
    """The photo TTA views written from their description with PIL alone: resize the shorter side to
    side / crop_pct (bicubic), take the evaluation crop (side x side, offset floor((new - side) / 2)) and
    the four corners of the (side / crop_pct)-square centred on it; each as is, then mirrored."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = (side / crop_pct) / min(width, height)
    new_w, new_h = round(width * scale), round(height * scale)
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    square = round(side / crop_pct)
    left0, top0 = (new_w - side) // 2, (new_h - side) // 2  # the plain evaluation crop
    left, top = left0 - (square - side) // 2, top0 - (square - side) // 2  # the square around it
    far = square - side
    corners = [(left0, top0), (left, top), (left + far, top), (left, top + far), (left + far, top + far)]
    crops = [np.asarray(resized.crop((x, y, x + side, y + side))) for x, y in corners]
    return crops + [c[:, ::-1] for c in crops]


def _softmax_by_hand(net, views: list[np.ndarray]) -> torch.Tensor:
    """Mean softmax of ``net`` over uint8 (H, W, 3) views, normalized by hand with the model's mean/std."""
    x = torch.from_numpy(np.stack(views).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    x = (x - torch.tensor(net.meta.mean).view(1, 3, 1, 1)) / torch.tensor(net.meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return net(x).softmax(1).mean(0)


def _photo_net(classes: list[str]):
    """A random photo model: crop_pct 0.875 recorded, as the photo path writes it."""
    torch.manual_seed(0)
    net = create_model("cnn_baseline", num_classes=len(classes)).eval()
    net.meta.classes, net.meta.crop_pct = list(classes), 0.875
    return net


def test_photo_tta_is_flipped_centre_and_corner_crops_in_predict_and_serve(tmp_path):
    """predict --tta on raw photos of other sizes and aspects equals the mean softmax over the ten crops
    cut by hand with PIL, and serve feeds the network the very same ten tensors."""
    from resnetlab.inference.batch import predict_files, results_to_json

    photo_net = _photo_net(["a", "b", "c"])
    names = []
    for i, (w, h) in enumerate([(90, 61), (47, 83)]):  # landscape and portrait, neither a multiple of 32
        names.append(str(tmp_path / f"photo{i}.png"))
        _photo(w, h, 10 + i).save(names[-1])
    predictor = Predictor.from_model(photo_net)
    assert predictor.tta_input_size == (37, 37)  # round(32 / 0.875)
    capture = _Capture(photo_net)
    try:
        results = predict_files(predictor, names, top_k=3, tta=True)
        predict = capture.take()
        client = TestClient(create_app(predictor, report_dir=None))
        # One request with both files, as predict batches them (the capture is in view-major order).
        uploads = [("file", (f"p{i}.png", Path(name).read_bytes())) for i, name in enumerate(names)]
        answer = client.post("/predict", params={"tta": 1, "top_k": 3}, files=uploads)
        serve = capture.take()
    finally:
        capture.handle.remove()

    views = ["centre", "top-left", "top-right", "bottom-left", "bottom-right"]
    assert predictor.tta_view_names == views + [f"flip+{v}" for v in views]
    assert json.loads(results_to_json(results, predictor, tta=True))["tta_views"] == predictor.tta_view_names
    assert len(predict) == len(serve) == 10 * len(names)  # ten passes per image
    assert all(torch.equal(a, b) for a, b in zip(predict, serve))
    assert answer.status_code == 200 and answer.json()["tta_views"] == predictor.tta_view_names
    for name, result, served in zip(names, results, answer.json()["predictions"]):
        expected = _softmax_by_hand(photo_net, _ten_crops_by_hand(name, 32, 0.875))
        got = dict(result.top_k)
        torch.testing.assert_close(torch.tensor([got[c] for c in "abc"]), expected, atol=1e-5, rtol=1e-4)
        assert {e["class"]: e["probability"] for e in served["top_k"]} == got  # identical
    # Without TTA the one view is the centre crop: it is what plain predict feeds.
    plain = predictor.probabilities(names[0])[0]
    torch.testing.assert_close(plain, _softmax_by_hand(photo_net, _ten_crops_by_hand(names[0], 32, 0.875)[:1]))


def test_evaluate_tta_of_a_photo_model_uses_the_same_views(awkward_folder, tmp_path):
    """evaluate --tta on an image folder averages the same ten crops as predict --tta, file by file."""
    from resnetlab.data.photo import for_model
    from resnetlab.evaluation.predictions import tta_canvases
    from resnetlab.inference.batch import predict_files

    photo_net = _photo_net(["cat", "dog"])
    data = load_image_folder(awkward_folder, image_size=32, data_dir=tmp_path / "cache")["train"]
    outputs = collect_outputs(photo_net, for_model(data, photo_net.meta).images, tta=True,
                              tta_images=tta_canvases(data, photo_net))
    assert outputs.tta_views == Predictor.from_model(photo_net).tta_view_names and len(outputs.tta_views) == 10
    results = predict_files(Predictor.from_model(photo_net), [str(awkward_folder / p) for p in data.paths], top_k=2, tta=True)
    for row, result in zip(outputs.probs_tta, results):
        got = dict(result.top_k)
        torch.testing.assert_close(torch.tensor([got[c] for c in photo_net.meta.classes]), row, atol=1e-6, rtol=1e-5)
    # The crops see more than the centre: TTA changes the answer.
    assert not torch.allclose(outputs.probs_tta, outputs.probs, atol=1e-4)
    # evaluate_model (evaluate --tta) decodes the canvases itself and reports those views.
    from resnetlab.evaluation.evaluate import evaluate_model

    metrics = evaluate_model(photo_net, for_model(data, photo_net.meta), tmp_path / "eval", tta=True)
    assert metrics["tta"]["views"] == outputs.tta_views
    labels = data.labels
    assert metrics["tta"]["accuracy_with"] == pytest.approx(float((outputs.probs_tta.argmax(1) == labels).float().mean()))


@pytest.mark.parametrize("crop_pct", [1.0, 0.875, 0.9])
def test_tta_canvas_centre_is_the_evaluation_crop(crop_pct):
    """The canvas the photo views crop is cut from the very resize of the plain input, placed so that its
    centre crop is that input pixel for pixel (odd margins and non-square sizes included); at crop_pct 1.0
    the canvas is the input itself, so CIFAR models' views see what they always saw."""
    rng = np.random.default_rng(0)
    for (w, h), size in [((90, 61), (32, 32)), ((47, 83), (32, 32)), ((300, 200), (24, 40)), ((33, 31), (32, 32))]:
        picture = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        keep = imaging.tta_canvas_size(size, crop_pct)
        assert keep == (size if crop_pct == 1.0 else tuple(round(s / crop_pct) for s in size))
        top, left = (keep[0] - size[0]) // 2, (keep[1] - size[1]) // 2
        canvas = np.asarray(imaging.fit(picture, size, crop_pct, keep=keep))
        assert canvas.shape[:2] == keep
        assert np.array_equal(canvas[top:top + size[0], left:left + size[1]], np.asarray(imaging.fit(picture, size, crop_pct)))
        batch = torch.from_numpy(np.array(picture))[None]  # the in-memory twin, fit_batch
        canvas = imaging.fit_batch(batch, size, crop_pct, keep=keep)
        assert torch.equal(canvas[:, top:top + size[0], left:left + size[1]], imaging.fit_batch(batch, size, crop_pct))
