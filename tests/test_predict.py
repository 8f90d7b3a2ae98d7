"""Preprocessing, the Predictor (Python API) and `resnetlab predict` on real files of every kind."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from resnetlab.cli import main
from resnetlab.errors import CheckpointError, DataError
from resnetlab.inference.batch import collect_inputs, predict_files
from resnetlab.inference.predictor import Predictor
from resnetlab.inference.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    image_to_array,
    load_image,
    normalize,
)
from resnetlab.models import create_model
from resnetlab.models.files import save_model_file

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    model.meta.classes = list(CLASSES)
    run_dir = tmp_path_factory.mktemp("run")
    save_model_file(model, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return resnetlab.load(model_dir)


def _rng_image(height=40, width=56, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory) -> dict[str, Path]:
    """Real files of every kind a user may throw at `predict`."""
    root = tmp_path_factory.mktemp("images")
    sub = root / "nested" / "deeper"
    sub.mkdir(parents=True)
    files = {}
    files["jpeg"] = root / "photo.jpg"
    Image.fromarray(_rng_image(seed=1)).save(files["jpeg"], quality=90)
    files["png"] = sub / "drawing.png"
    Image.fromarray(_rng_image(64, 48, seed=2)).save(files["png"])
    files["gray"] = root / "gray.png"
    Image.fromarray(_rng_image(seed=3)[..., 0], mode="L").save(files["gray"])
    files["rgba"] = root / "transparent.png"
    Image.fromarray(np.dstack([_rng_image(seed=4), np.full((40, 56), 128, np.uint8)]), mode="RGBA").save(files["rgba"])
    files["palette"] = root / "palette.gif"
    Image.fromarray(_rng_image(seed=5)).convert("P").save(files["palette"])
    files["huge"] = root / "huge.jpg"
    Image.new("RGB", (4000, 3000), (30, 120, 200)).save(files["huge"], quality=70)
    files["corrupt"] = root / "corrupt.jpg"
    files["corrupt"].write_bytes(files["jpeg"].read_bytes()[:300])  # truncated JPEG
    files["garbage"] = sub / "garbage.png"
    files["garbage"].write_bytes(b"\x89PNG not really" + bytes(200))
    files["empty"] = root / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["text"] = root / "notes.txt"
    files["text"].write_text("not an image\n")
    return files


# ---- preprocessing -------------------------------------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a portrait phone photo stored sideways
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (10, 20)


def test_modes_become_rgb(mixed_files):
    for key in ("gray", "rgba", "palette", "png", "jpeg"):
        assert load_image(mixed_files[key]).mode == "RGB"
    gray = np.asarray(load_image(mixed_files["gray"]))
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_alpha_is_dropped_like_the_training_decoder():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [10, 20, 30]


def test_matches_the_training_decoder(mixed_files):
    # A file must reach the model exactly as it did in training (resnetlab.data.decode).
    decode = pytest.importorskip("resnetlab.data.decode")
    for key in ("png", "gray", "rgba", "palette"):
        data = mixed_files[key].read_bytes()
        assert np.array_equal(image_to_array(data, (24, 24)), decode.decode_bytes(data, image_size=24)), key


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    array = np.full((8, 8), 65535, dtype=np.uint16)
    array[:4] = 0
    image = load_image(Image.fromarray(array))
    assert Image.fromarray(array).mode.startswith("I;16")
    pixels = np.asarray(image)
    assert pixels[0, 0, 0] == 0 and pixels[7, 7, 0] == 255


def test_fit_resizes_shorter_side_and_center_crops():
    # A wide image: left third red, middle green, right third blue -> the crop keeps mostly green.
    wide = np.zeros((30, 90, 3), np.uint8)
    wide[:, :30, 0] = 255
    wide[:, 30:60, 1] = 255
    wide[:, 60:, 2] = 255
    out = image_to_array(wide, (32, 32))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[16, 16, 1] > 200 and out[16, 16, 0] < 50 and out[16, 16, 2] < 50


def test_errors_are_clear(mixed_files, tmp_path):
    with pytest.raises(ImageDecodeError, match="empty file"):
        load_image(mixed_files["empty"])
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(mixed_files["text"])
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        load_image(mixed_files["corrupt"])
    with pytest.raises(ImageDecodeError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError, match="upload.bin"):
        load_image(b"\x00\x01garbage", name="upload.bin")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # 10000 x 6000 1-bit PNG: a few KB on disk, 60 MP (180 MB as RGB) once decoded.
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10000, 6000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageTooLargeError, match="10000x6000"):
        load_image(bomb)
    with pytest.raises(ImageTooLargeError):
        load_image(Image.new("RGB", (200, 200)), max_pixels=100 * 100)


def test_normalize_layout_and_values():
    images = torch.zeros((2, 4, 5, 3), dtype=torch.uint8)
    images[..., 0] = 255
    x = normalize(images, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.full((2, 4, 5), 2.0))
    assert torch.allclose(x[:, 1], torch.full((2, 4, 5), -1.0))
    assert torch.allclose(x[:, 2], torch.full((2, 4, 5), -0.5))


# ---- Predictor / Python API ------------------------------------------------------------------------

def test_load_and_classes(predictor, model_dir):
    assert predictor.classes == CLASSES
    assert predictor.meta.name == "resnet20" and predictor.backend == "torch"
    assert predictor.image_size == (32, 32)
    # The model file itself and a model.json path load the same model.
    assert resnetlab.load(model_dir / "model.safetensors").classes == CLASSES


def test_logits_match_the_model_with_trained_normalization(predictor, model_dir):
    from resnetlab.models.files import load_model_file

    model = load_model_file(model_dir).eval()
    images = torch.from_numpy(np.stack([_rng_image(32, 32, seed=s) for s in range(3)]))
    mean = torch.tensor(model.meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((images.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    assert torch.allclose(predictor.logits(images), expected, atol=1e-5)


def test_every_accepted_input_form_gives_the_same_answer(predictor, tmp_path):
    pixels = _rng_image(32, 32, seed=7)
    path = tmp_path / "same.png"
    Image.fromarray(pixels).save(path)
    chw = torch.from_numpy(pixels).permute(2, 0, 1)
    forms = {
        "path str": str(path),
        "Path": path,
        "bytes": path.read_bytes(),
        "file object": io.BytesIO(path.read_bytes()),
        "PIL": Image.fromarray(pixels),
        "numpy HWC uint8": pixels,
        "numpy HWC float": pixels / 255.0,
        "tensor CHW uint8": chw,
        "tensor CHW float": chw.float() / 255,
        "tensor HWC": torch.from_numpy(pixels),
        "tensor NCHW": chw.unsqueeze(0).float() / 255,
        "tensor NHWC": torch.from_numpy(pixels).unsqueeze(0),
        "numpy NHWC": pixels[None],
        "list": [Image.fromarray(pixels)],
    }
    reference = predictor.probabilities(pixels)
    assert reference.shape == (1, 10)
    for name, images in forms.items():
        got = predictor.probabilities(images)
        assert got.shape == (1, 10), name
        assert torch.allclose(got, reference, atol=1e-5), name


def test_predict_returns_sorted_top_k_per_image(predictor):
    batch = np.stack([_rng_image(32, 32, seed=s) for s in range(5)])
    results = predictor.predict(batch, top_k=3)
    assert len(results) == 5
    for row in results:
        assert len(row) == 3
        probabilities = [p for _, p in row]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(name in CLASSES for name, _ in row)
        assert 0 < sum(probabilities) <= 1 + 1e-6
    assert sum(p for _, p in predictor.predict(batch[:1], top_k=100)[0]) == pytest.approx(1.0, abs=1e-5)


def test_bad_arrays_are_user_errors(predictor):
    with pytest.raises(DataError, match="shape"):
        predictor.predict(np.zeros((4, 4, 7), np.uint8))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        predictor.predict(np.full((8, 8, 3), 3.5, np.float32))


def test_missing_model_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        resnetlab.load(tmp_path / "nothing-here")


def test_checkpoint_loads_too(tmp_path, predictor, model_dir):
    from resnetlab.models.files import CHECKPOINT_KIND, load_model_file

    model = load_model_file(model_dir)
    checkpoint = {"kind": CHECKPOINT_KIND, "format_version": 1, "model": model.state_dict(), "meta": model.meta.to_dict()}
    torch.save(checkpoint, tmp_path / "best.pt")
    images = torch.from_numpy(_rng_image(32, 32)[None])
    assert torch.allclose(resnetlab.load(tmp_path / "best.pt").logits(images), predictor.logits(images))


# ---- batch prediction and the CLI ----------------------------------------------------------------

def test_collect_inputs_expands_folders_and_globs(mixed_files, tmp_path):
    root = mixed_files["jpeg"].parent
    from_folder = [p for p, err in collect_inputs([root]) if err is None]
    assert str(mixed_files["png"]) in from_folder  # recursive
    assert str(mixed_files["text"]) not in from_folder  # folders only yield image extensions
    from_glob = [p for p, _ in collect_inputs([str(root / "**" / "*.png")])]
    assert set(from_glob) == {str(mixed_files[k]) for k in ("png", "gray", "rgba", "garbage")}
    missing = collect_inputs([tmp_path / "nope.jpg", str(tmp_path / "*.webp")])
    assert [bool(err) for _, err in missing] == [True, True]


def test_predict_files_keeps_going_past_bad_files(predictor, mixed_files):
    failures = []
    results = predict_files(predictor, list(mixed_files.values()), top_k=3, batch_size=4, on_error=failures.append)
    by_name = {Path(r.path).name: r for r in results}
    assert len(results) == len(mixed_files)
    bad = {"corrupt.jpg", "garbage.png", "empty.jpg", "notes.txt"}
    assert {name for name, r in by_name.items() if r.error} == bad
    assert {Path(r.path).name for r in failures} == bad
    for name, result in by_name.items():
        if name not in bad:
            assert len(result.top_k) == 3 and result.top_k[0][0] in CLASSES


def test_batching_does_not_change_results(predictor, mixed_files):
    good = [mixed_files[k] for k in ("jpeg", "png", "gray", "rgba", "palette")]
    one = predict_files(predictor, good, top_k=2, batch_size=1)
    many = predict_files(predictor, good, top_k=2, batch_size=64)
    for a, b in zip(one, many):
        assert [c for c, _ in a.top_k] == [c for c, _ in b.top_k]
        assert [p for _, p in a.top_k] == pytest.approx([p for _, p in b.top_k], abs=1e-5)


def test_cli_json_output(model_dir, mixed_files, tmp_path, capsys):
    out = tmp_path / "predictions.json"
    code = main(["predict", str(model_dir), str(mixed_files["jpeg"].parent), "--top-k", "3", "--output", str(out), "--batch-size", "3"])
    assert code == 0
    captured = capsys.readouterr()
    assert "%" in captured.out and any(name in captured.out for name in CLASSES)  # the table
    assert "corrupt.jpg" in captured.err and "empty.jpg" in captured.err
    payload = json.loads(out.read_text())
    assert payload["model"] == "resnet20" and payload["classes"] == CLASSES
    rows = {Path(p["path"]).name: p for p in payload["predictions"]}
    assert "error" in rows["corrupt.jpg"] and "top_k" not in rows["corrupt.jpg"]
    assert len(rows["huge.jpg"]["top_k"]) == 3
    assert rows["huge.jpg"]["top_k"][0]["class"] in CLASSES
    assert "notes.txt" not in rows  # not an image extension, folder listing skips it


def test_cli_csv_output(model_dir, mixed_files, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    paths = [str(mixed_files[k]) for k in ("jpeg", "text", "gray")]
    assert main(["predict", str(model_dir), *paths, "--top-k", "2", "--output", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [Path(r["path"]).name for r in rows] == ["photo.jpg", "notes.txt", "gray.png"]
    assert rows[0]["top1_class"] in CLASSES and float(rows[0]["top1_probability"]) >= float(rows[0]["top2_probability"])
    assert rows[1]["error"] and rows[1]["top1_class"] == ""
    assert "notes.txt" in capsys.readouterr().err


def test_cli_fails_only_when_nothing_is_readable(model_dir, mixed_files, tmp_path, capsys):
    out = tmp_path / "none.json"
    code = main(["predict", str(model_dir), str(mixed_files["empty"]), str(mixed_files["text"]), "--output", str(out)])
    assert code == 1
    assert "2 of 2" in capsys.readouterr().err
    assert all("error" in p for p in json.loads(out.read_text())["predictions"])


def test_cli_rejects_bad_output_name_before_work(model_dir, mixed_files, tmp_path, capsys):
    assert main(["predict", str(model_dir), str(mixed_files["jpeg"]), "--output", str(tmp_path / "x.xml")]) == 1
    assert "--output" in capsys.readouterr().err
    assert not (tmp_path / "x.xml").exists()
