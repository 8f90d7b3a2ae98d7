"""Fuzzing (issue 8, item 7): only resnetlab's own errors may escape the byte-facing loaders.

Targets: images from bytes (``resnetlab.inference.preprocess.load_image`` / ``image_to_array``, used
by predict and serve; ``resnetlab.data.decode.decode_bytes``, used for datasets), checkpoint /
model-file loading (``load_checkpoint_dict``, ``load_trained_model``, ``load_model_file``) and the
metadata readers (issue 21, item 6): ``validate_meta`` itself, an ONNX file's ``resnetlab.meta``
(``Predictor.from_onnx``) and ``finetune --from`` sources (``load_source``). What a metadata reader
accepts must then be usable: class names for every output, finite probabilities, bounded sizes.

Inputs are random bytes and mutations (bit flips, byte/int overwrites, cuts, inserts, splices) of
the seed corpus in ``tests/fuzz/corpus`` (tiny valid files of every format; regenerate with
``tests/fuzz/make_corpus.py``). Any input that once made a loader raise something else is kept in
``corpus/regressions/`` and replayed on every run. The run is bounded for CI; fuzz longer with
``RESNETLAB_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnetlab.data.decode import decode_bytes
from resnetlab.errors import ResnetlabError
from resnetlab.inference.preprocess import image_to_array, load_image
from resnetlab.models.files import load_checkpoint_dict, load_model_file, load_trained_model
from resnetlab.models.metadata import MAX_CLASSES, MAX_INPUT_SIDE, MIN_STD, validate_meta

CORPUS = Path(__file__).resolve().parent / "fuzz" / "corpus"
IMAGE_SEEDS = {p.name: p.read_bytes() for p in sorted((CORPUS / "images").iterdir())}
CHECKPOINT_SEED = (CORPUS / "checkpoints" / "tiny.pt").read_bytes()
WEIGHTS_SEED = (CORPUS / "checkpoints" / "model.safetensors").read_bytes()
SIDECAR_SEED = json.loads((CORPUS / "checkpoints" / "model.json").read_text())
ONNX_SEED = (CORPUS / "onnx" / "tiny.onnx").read_bytes()
REGRESSIONS = sorted((CORPUS / "regressions").glob("*"))

FUZZ = settings(
    max_examples=int(os.environ.get("RESNETLAB_FUZZ_EXAMPLES", "100")),
    deadline=timedelta(seconds=5),  # one decode or load; generous for a busy 2-core CI box
    database=None,  # nothing written into the tree; failures are kept by hand in corpus/regressions
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


# --------------------------------------------------------------------------- strategies

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed with 1-6 random edits: the kinds of damage real files and hostile uploads have."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "byte", "int", "cut", "insert", "delete", "splice"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[i] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, 1]))
        elif op == "int":  # size fields: widths, heights, chunk and header lengths
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from(INTERESTING)) & ((1 << (8 * width)) - 1)
            data[i : i + width] = value.to_bytes(width, draw(st.sampled_from(["big", "little"])))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        else:  # splice a piece of the file somewhere else (repeated markers and chunks)
            j = draw(st.integers(0, len(data) - 1))
            data[i:i] = data[j : j + draw(st.integers(1, 128))]
    return bytes(data)


image_bytes = st.one_of(
    st.binary(max_size=2048),
    mutated(list(IMAGE_SEEDS.values())),
    st.sampled_from(list(IMAGE_SEEDS.values())),
)


def _only_ours(load, *args, **kwargs):
    """Call ``load``; a ResnetlabError is a fine answer (None), anything else fails the test."""
    try:
        return load(*args, **kwargs)
    except ResnetlabError as exc:
        assert str(exc), "errors must say what is wrong"
        return None


# --------------------------------------------------------------------------- images from bytes


def _check_image_targets(data: bytes) -> None:
    array = _only_ours(image_to_array, data, (16, 16), name="upload.jpg")
    if array is not None:
        assert array.shape == (16, 16, 3) and array.dtype == np.uint8
    image = _only_ours(load_image, data, name="upload.jpg")
    if image is not None:
        assert image.mode == "RGB"
    for size in (None, 16):
        decoded = _only_ours(decode_bytes, data, size)
        if decoded is not None:
            assert decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3
            if size:
                assert decoded.shape == (16, 16, 3)


@pytest.mark.parametrize("name", sorted(IMAGE_SEEDS))
def test_every_seed_image_decodes(name):
    """The seeds are valid: both decoders agree on them (so mutations start from real files)."""
    data = IMAGE_SEEDS[name]
    assert image_to_array(data, (16, 16)).shape == (16, 16, 3)
    assert decode_bytes(data, 16).shape == (16, 16, 3)


@FUZZ
@given(data=image_bytes)
def test_fuzz_images_from_bytes(data):
    _check_image_targets(data)


# --------------------------------------------------------------------------- checkpoints and model files

_TMP = tempfile.TemporaryDirectory(prefix="resnetlab-fuzz-")  # hypothesis examples cannot use function-scoped tmp_path
_TMPDIR = Path(_TMP.name)


def _check_checkpoint_targets(data: bytes) -> None:
    path = _TMPDIR / "fuzzed.pt"
    path.write_bytes(data)
    _only_ours(load_checkpoint_dict, path)
    model = _only_ours(load_trained_model, path)
    if model is not None:
        assert hasattr(model, "meta")


def _check_model_file(weights: bytes, sidecar: bytes) -> None:
    folder = _TMPDIR / "model"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "model.json").write_bytes(sidecar)
    _only_ours(load_model_file, folder)
    _only_ours(load_trained_model, folder / "model.safetensors")


def test_seed_checkpoint_and_model_file_are_refused_only_for_their_tiny_weights():
    """The seeds are well-formed files whose weights fit no real model: each loader says so itself."""
    path = _TMPDIR / "seed.pt"
    path.write_bytes(CHECKPOINT_SEED)
    assert load_checkpoint_dict(path)["meta"]["name"] == "cnn_baseline"
    with pytest.raises(ResnetlabError, match="do not fit 'cnn_baseline'"):
        load_trained_model(path)
    _check_model_file(WEIGHTS_SEED, json.dumps(SIDECAR_SEED).encode())
    with pytest.raises(ResnetlabError, match="do not fit 'cnn_baseline'"):
        load_model_file(_TMPDIR / "model")


@FUZZ
@given(data=st.one_of(st.binary(max_size=4096), mutated([CHECKPOINT_SEED])))
def test_fuzz_checkpoint_bytes(data):
    _check_checkpoint_targets(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
META_KEYS = ["name", "num_classes", "input_size", "mean", "std", "classifier", "options", "classes"]


@st.composite
def mutated_meta(draw) -> dict:
    """The seed metadata with some fields replaced by arbitrary JSON values (or removed)."""
    meta = dict(SIDECAR_SEED["meta"])
    for key in draw(st.lists(st.sampled_from(META_KEYS + ["unknown"]), min_size=1, max_size=4, unique=True)):
        if draw(st.booleans()) and key in meta:
            del meta[key]
        else:
            meta[key] = draw(json_values | st.sampled_from(["resnet20", "cnn_baseline", 3, 10**12, -1, [3, 32, 32]]))
    return meta


@pytest.mark.slow  # ~8 s: each example torch.saves a checkpoint and builds a model
@FUZZ
@given(meta=mutated_meta(), data=st.sampled_from(["checkpoint", "sidecar"]))
def test_fuzz_metadata_values(meta, data):
    """Well-formed files whose metadata lies (wrong types, absurd class counts, unknown models)."""
    if data == "checkpoint":
        payload = torch.load(io.BytesIO(CHECKPOINT_SEED), weights_only=True)
        payload["meta"] = meta
        path = _TMPDIR / "meta.pt"
        torch.save(payload, path)
        _check_checkpoint_targets(path.read_bytes())
    else:
        _check_model_file(WEIGHTS_SEED, json.dumps({**SIDECAR_SEED, "meta": meta}).encode())


@FUZZ
@given(weights=st.one_of(mutated([WEIGHTS_SEED]), st.binary(max_size=1024)),
       sidecar=st.one_of(st.just(json.dumps(SIDECAR_SEED).encode()), mutated([json.dumps(SIDECAR_SEED).encode()])))
def test_fuzz_model_file_bytes(weights, sidecar):
    _check_model_file(weights, sidecar)


# --------------------------------------------------------------------------- metadata readers

# One example is a file write plus an onnxruntime session (~10 ms) or a safetensors read: few
# examples and no deadline keep this under a few seconds on a busy 2-core box.
META_FUZZ = settings(FUZZ, max_examples=int(os.environ.get("RESNETLAB_FUZZ_EXAMPLES", "40")), deadline=None)

# Values just past each bound (issue 21, item 6) mixed with valid ones, so examples reach every check.
NEAR_MISSES = {
    "num_classes": [0, 1, 2, 3, 4, MAX_CLASSES, MAX_CLASSES + 1, "ten", 3.0, True, None],
    "classes": [None, ["a", "b", "c"], ["a", "b"], ["a", "b", "c", "d"], "abc", ["a", "a", "b"], [1, 2, 3], ["a", None, "c"]],
    "input_size": [[3, 32, 32], [3, 1, 1], [3, MAX_INPUT_SIDE, 8], [3, MAX_INPUT_SIDE + 1, 8], [3, 6000, 6000], [3, -32, 32],
                   [4, 32, 32], [1, 32, 32], [3, 32], [3, 32.0, 32], "3x32x32"],
    "mean": [[0.5, 0.5, 0.5], [0, 1, 1], [-0.1, 0.5, 0.5], [0.5, 0.5, 128], [float("nan")] * 3, [0.5, 0.5]],
    "std": [[0.25, 0.25, 0.25], [0, 0, 0], [MIN_STD] * 3, [MIN_STD / 10] * 3, [float("inf")] * 3, [float("nan"), 1, 1], [-1, 1, 1]],
}


@st.composite
def hostile_meta(draw) -> dict:
    """The seed metadata with fields set to near misses of their bounds, or to arbitrary JSON."""
    if draw(st.booleans()):
        return draw(mutated_meta())
    meta = dict(SIDECAR_SEED["meta"])
    for key in draw(st.lists(st.sampled_from(sorted(NEAR_MISSES)), min_size=1, max_size=3, unique=True)):
        meta[key] = draw(st.sampled_from(NEAR_MISSES[key]))
    return meta


def _assert_usable(meta) -> None:
    """What a metadata reader hands on is safe to use: the promises validate_meta makes."""
    assert isinstance(meta.num_classes, int) and 1 <= meta.num_classes <= MAX_CLASSES
    assert meta.classes is None or (len(meta.classes) == meta.num_classes and all(isinstance(c, str) for c in meta.classes))
    assert meta.input_size[0] == 3 and all(isinstance(v, int) and 1 <= v <= MAX_INPUT_SIDE for v in meta.input_size[1:])
    assert all(0.0 <= m <= 1.0 for m in meta.mean) and all(np.isfinite(s) and s >= MIN_STD for s in meta.std)


def _check_meta_targets(meta) -> None:
    """``meta`` (any JSON value) through every metadata reader: refused with our error, or usable."""
    checked = _only_ours(validate_meta, meta, "fuzzed.json")
    if checked is not None:
        _assert_usable(checked)
    _check_onnx_meta(json.dumps(meta), valid=checked is not None)
    _check_source_meta(meta)


def _check_onnx_meta(text: str, valid: bool | None = None) -> None:
    import onnx

    from resnetlab.inference.predictor import Predictor

    proto = onnx.load_from_string(ONNX_SEED)
    proto.metadata_props[0].value = text
    path = _TMPDIR / "fuzzed.onnx"
    onnx.save(proto, str(path))
    predictor = _only_ours(Predictor.from_onnx, path)
    if predictor is None:
        return
    _assert_usable(predictor.meta)
    # The graph has 3 outputs at 32x32: accepted metadata must agree, or requests fail later (a 500).
    probabilities = predictor.probabilities(np.zeros((8, 8, 3), np.uint8))
    assert probabilities.shape == (1, 3) and torch.isfinite(probabilities).all()
    assert len(predictor.predict(np.zeros((8, 8, 3), np.uint8), top_k=3)[0]) == 3  # a name for every output


def _check_source_meta(meta) -> None:
    from resnetlab.finetune.sources import load_source

    folder = _TMPDIR / "source"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(WEIGHTS_SEED)
    (folder / "model.json").write_text(json.dumps({**SIDECAR_SEED, "meta": meta}))
    source = _only_ours(load_source, folder)
    if source is not None:
        assert all(0.0 <= m <= 1.0 for m in source.mean) and all(np.isfinite(s) and s >= MIN_STD for s in source.std)
        assert source.input_size[0] == 3 and all(1 <= v <= MAX_INPUT_SIDE for v in source.input_size[1:])


def test_seed_metadata_is_accepted_by_every_reader():
    """The seeds are valid, so the fuzzed examples start from metadata every reader takes."""
    _assert_usable(validate_meta(SIDECAR_SEED["meta"], "seed"))
    _check_meta_targets(SIDECAR_SEED["meta"])
    import resnetlab

    assert resnetlab.load(_TMPDIR / "fuzzed.onnx").classes == SIDECAR_SEED["meta"]["classes"]


@META_FUZZ
@given(meta=hostile_meta())
def test_fuzz_metadata_readers(meta):
    _check_meta_targets(meta)


@META_FUZZ
@given(text=st.one_of(st.text(max_size=200), mutated([json.dumps(SIDECAR_SEED["meta"]).encode()]).map(
    lambda b: b.decode("utf-8", "replace"))))
def test_fuzz_onnx_metadata_text(text):
    """resnetlab.meta is free text in the ONNX file: broken JSON included."""
    _check_onnx_meta(text)


# --------------------------------------------------------------------------- regressions


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_regression_corpus(path):
    """Inputs that once escaped as a non-resnetlab error; the file name prefix says which target."""
    data = path.read_bytes()
    if path.name.startswith("image-"):
        _check_image_targets(data)
    elif path.name.startswith("checkpoint-"):
        _check_checkpoint_targets(data)
    elif path.name.startswith("weights-"):
        _check_model_file(data, json.dumps(SIDECAR_SEED).encode())
    elif path.name.startswith("sidecar-"):
        _check_model_file(WEIGHTS_SEED, data)
    elif path.name.startswith("meta-"):  # the value of a "meta" field, fed to every metadata reader
        _check_meta_targets(json.loads(data))
        _check_model_file(WEIGHTS_SEED, json.dumps({**SIDECAR_SEED, "meta": json.loads(data)}).encode())
    else:
        pytest.fail(f"{path.name}: name regression files image-*, checkpoint-*, weights-*, sidecar-* or meta-*")
