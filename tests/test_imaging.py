"""One file, one tensor: train, evaluate, predict, serve and the ONNX path go through resnetlab.imaging.

Each path is run for real and the float tensor that reaches the network is captured (a forward
pre-hook on the torch model; the input handed to onnxruntime for the ONNX predictor).
"""

from __future__ import annotations

import io

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
