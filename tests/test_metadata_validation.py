"""Model metadata is bounded and fully checked by every reader (issue 21, item 6; item 7's 4-channel input).

Each bad value is written into the three places metadata comes from: a model file's ``model.json``,
an ONNX file's ``resnetlab.meta`` property, and a ``finetune --from`` source (a model directory and a
training checkpoint). Every reader must refuse it at load with a one-line CheckpointError naming the
file and the field; before the validator, most were accepted and failed later (an IndexError, NaN
probabilities, an out-of-memory kill, letters as class names). The valid metadata of the same files
loads, so the checks do not simply refuse everything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import resnetlab
from helpers import random_class_folder
from resnetlab.cli import main
from resnetlab.errors import CheckpointError
from resnetlab.finetune.sources import load_source
from resnetlab.models import create_model
from resnetlab.models.files import CHECKPOINT_KIND, load_model_file, save_model_file

NUM_CLASSES = 3
CLASSES = ["cat", "dog", "eel"]

# case id -> (change to the metadata, words the error must contain)
BAD = {
    "classes-shorter-than-num-classes": ({"classes": ["cat", "dog"]}, "classes lists 2 names but num_classes is 3"),
    "classes-a-string": ({"classes": "abc"}, "classes must be a list"),
    "classes-not-strings": ({"classes": [1, 2, 3]}, "classes must be a list"),
    "num-classes-ten": ({"num_classes": "ten"}, "num_classes"),
    "num-classes-zero": ({"num_classes": 0, "classes": None}, "num_classes"),
    "std-zero": ({"std": [0, 0, 0]}, "std"),
    "std-nan": ({"std": [float("nan"), 0.2, 0.2]}, "std"),
    "std-two-values": ({"std": [0.2, 0.2]}, "std"),
    "mean-out-of-range": ({"mean": [0.5, 0.5, 128]}, "mean"),
    "input-size-huge": ({"input_size": [3, 6000, 6000]}, "input_size"),
    "input-size-negative": ({"input_size": [3, -32, 32]}, "input_size"),
    "input-size-four-channels": ({"input_size": [4, 32, 32]}, "4 channels"),
    "input-size-text": ({"input_size": "3x32x32"}, "input_size"),
}


def _meta(change: dict | None = None) -> dict:
    meta = create_model("cnn_baseline", num_classes=NUM_CLASSES).meta
    meta.classes = list(CLASSES)
    data = meta.to_dict()
    data.update(change or {})
    return data


def _check_one_line(exc: BaseException, where: str, words: str) -> None:
    message = str(exc)
    assert "\n" not in message, message
    assert where in message, message
    assert words in message, message


# --------------------------------------------------------------------------- model.json


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model")
    model = create_model("cnn_baseline", num_classes=NUM_CLASSES)
    model.meta.classes = list(CLASSES)
    save_model_file(model, path)
    return path


def _model_file_with(model_dir: Path, tmp_path: Path, change: dict) -> Path:
    target = tmp_path / "bad-model"
    target.mkdir()
    (target / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    info = json.loads((model_dir / "model.json").read_text())
    info["meta"].update(change)
    (target / "model.json").write_text(json.dumps(info))  # NaN is written as NaN: a file can hold it
    return target


def test_valid_model_json_loads_in_every_reader(model_dir, tmp_path):
    predictor = resnetlab.load(model_dir)
    assert predictor.classes == CLASSES
    probabilities = predictor.probabilities(np.zeros((8, 8, 3), np.uint8))
    assert torch.isfinite(probabilities).all()
    assert load_source(model_dir).classes == CLASSES


@pytest.mark.parametrize("case", sorted(BAD))
def test_model_json_is_refused_at_load(model_dir, tmp_path, case):
    change, words = BAD[case]
    bad = _model_file_with(model_dir, tmp_path, change)
    with pytest.raises(CheckpointError) as info:
        load_model_file(bad)
    _check_one_line(info.value, "model.json", words)
    with pytest.raises(CheckpointError) as info:  # predict, evaluate and serve load through the Predictor
        resnetlab.load(bad)
    _check_one_line(info.value, "model.json", words)


@pytest.mark.parametrize("case", ["classes-shorter-than-num-classes", "std-zero", "input-size-four-channels"])
def test_predict_and_serve_refuse_it_with_one_line(model_dir, tmp_path, case, capsys):
    """The commands stop at load with one line (before: an IndexError, NaN in -o, a 500 from serve)."""
    from resnetlab.serve.server import build_app_for

    change, words = BAD[case]
    bad = _model_file_with(model_dir, tmp_path, change)
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    out = tmp_path / "out.json"
    assert main(["predict", str(bad), str(image), "--output", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnetlab: error:") and err.count("\n") == 0 and words in err, err
    assert not out.exists()
    with pytest.raises(CheckpointError, match="model.json"):
        build_app_for(bad)
    assert main(["serve", str(bad), "--port", "0"]) == 1  # fails before it binds a port
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err


# --------------------------------------------------------------------------- ONNX resnetlab.meta


def _onnx_file(path: Path, meta: dict) -> Path:
    """A tiny real ONNX classifier (global average pool -> linear) carrying ``meta`` as resnetlab.meta.

    Built by hand instead of exported: the readers only need a loadable graph and its metadata.
    """
    weight = numpy_helper.from_array(np.arange(3 * NUM_CLASSES, dtype=np.float32).reshape(3, NUM_CLASSES), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),  # (N, 3, 1, 1)
         helper.make_node("Flatten", ["pooled"], ["flat"]),  # (N, 3)
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],  # (N, K)
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        initializer=[weight],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    entry = proto.metadata_props.add()
    entry.key, entry.value = "resnetlab.meta", json.dumps(meta)
    onnx.save(proto, str(path))
    return path


def test_valid_onnx_meta_loads(tmp_path):
    predictor = resnetlab.load(_onnx_file(tmp_path / "ok.onnx", _meta()))
    assert predictor.classes == CLASSES
    assert torch.isfinite(predictor.probabilities(np.zeros((8, 8, 3), np.uint8))).all()


@pytest.mark.parametrize("case", sorted(BAD))
def test_onnx_meta_is_refused_at_load(tmp_path, case):
    change, words = BAD[case]
    path = _onnx_file(tmp_path / "bad.onnx", _meta(change))
    with pytest.raises(CheckpointError) as info:
        resnetlab.load(path)
    _check_one_line(info.value, "bad.onnx (resnetlab.meta)", words)


@pytest.mark.parametrize("change, words", [
    ({"num_classes": 2, "classes": ["cat", "dog"]}, "output shape [N, 3]"),  # before: an IndexError naming the 3rd output
    ({"input_size": [3, 64, 64]}, "input shape [N, 3, 32, 32]"),  # before: onnxruntime refused every request
])
def test_onnx_metadata_must_match_the_graph(tmp_path, change, words):
    path = _onnx_file(tmp_path / "other.onnx", _meta(change))
    with pytest.raises(CheckpointError) as info:
        resnetlab.load(path)
    _check_one_line(info.value, "other.onnx", words)


# --------------------------------------------------------------------------- finetune --from


def _checkpoint_with(path: Path, meta: dict) -> Path:
    model = create_model("cnn_baseline", num_classes=NUM_CLASSES)
    torch.save({"kind": CHECKPOINT_KIND, "format_version": 1, "model": model.state_dict(), "meta": meta}, path)
    return path


def test_valid_checkpoint_is_a_source(tmp_path):
    source = load_source(_checkpoint_with(tmp_path / "ok.pt", _meta()))
    assert source.classes == CLASSES and source.input_size == (3, 32, 32)


@pytest.mark.parametrize("case", sorted(BAD))
def test_finetune_sources_refuse_it(model_dir, tmp_path, case):
    change, words = BAD[case]
    with pytest.raises(CheckpointError) as info:
        load_source(_model_file_with(model_dir, tmp_path, change))
    _check_one_line(info.value, "model.json", words)
    with pytest.raises(CheckpointError) as info:
        load_source(_checkpoint_with(tmp_path / "bad.pt", _meta(change)))
    _check_one_line(info.value, "bad.pt", words)


def test_finetune_from_command_refuses_num_classes_ten(model_dir, tmp_path, capsys):
    folder = random_class_folder(tmp_path / "data")
    bad = _model_file_with(model_dir, tmp_path, {"num_classes": "ten"})
    run = tmp_path / "ft"
    # A batch the 6 images allow: without the check, the command would go on to train on this source.
    code = main(["finetune", "--from", str(bad), "--model", "cnn_baseline", "--data", str(folder), "--epochs", "1", "--batch-size", "2",
                 "--device", "cpu", "--run-dir", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "num_classes" in err and "model.json" in err, err
    assert not (run / "model.safetensors").exists()


def test_predict_batches_shrink_with_the_input_size(tmp_path, monkeypatch):
    """input_size may reach MAX_INPUT_SIDE, so predict bounds the bytes of one batch, not only its count."""
    from resnetlab.inference import batch
    from resnetlab.inference.predictor import Predictor

    predictor = Predictor.from_model(create_model("cnn_baseline", num_classes=NUM_CLASSES))
    seen: list[int] = []
    logits = predictor.logits
    monkeypatch.setattr(predictor, "logits", lambda images, batch_size: seen.append(len(images)) or logits(images, batch_size))
    monkeypatch.setattr(batch, "BATCH_BYTES", 2 * 32 * 32 * 3 * 4)  # two 32x32 float images
    for i in range(5):
        Image.fromarray(np.full((32, 32, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    results = batch.predict_files(predictor, [tmp_path], top_k=1, batch_size=64)
    assert [r.error for r in results] == [None] * 5
    assert seen == [2, 2, 1]
