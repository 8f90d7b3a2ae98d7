"""Write the fuzz seed corpus (tests/fuzz/corpus/): tiny valid files of every format the loaders read
(images, checkpoints, model files, an ONNX model with resnetlab metadata).

    python tests/fuzz/make_corpus.py

The files are committed; rerun only to add seeds. Inputs the fuzzer found to crash a loader are
kept beside them in ``corpus/regressions/`` (one file each) and replayed by tests/test_fuzz.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as safetensors_save

CORPUS = Path(__file__).resolve().parent / "corpus"


def _pixels(h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def images() -> dict[str, bytes]:
    rgb = Image.fromarray(_pixels())
    palette = rgb.convert("P")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90 degrees
    frames = [Image.fromarray(_pixels(seed=s)).convert("P") for s in range(3)]
    anim = io.BytesIO()
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return {
        "rgb.png": _encode(rgb, "PNG"),
        "gray.png": _encode(rgb.convert("L"), "PNG"),
        "rgba.png": _encode(rgb.convert("RGBA"), "PNG"),
        "palette.png": _encode(palette, "PNG"),
        "i16.png": _encode(Image.fromarray((np.arange(48, dtype=np.uint16) * 1300).reshape(6, 8)), "PNG"),
        "one-pixel.png": _encode(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"),
        "rgb.jpg": _encode(rgb, "JPEG", quality=90),
        "gray.jpg": _encode(rgb.convert("L"), "JPEG"),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "progressive.jpg": _encode(rgb, "JPEG", progressive=True),
        "exif-rotated.jpg": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "anim.gif": anim.getvalue(),
        "rgb.bmp": _encode(rgb, "BMP"),
        "rgb.webp": _encode(rgb, "WEBP", lossless=True),
        "rgb.tiff": _encode(rgb, "TIFF"),
        "i16.tiff": _encode(Image.fromarray((np.arange(48, dtype=np.uint16) * 1300).reshape(6, 8)), "TIFF"),
        "rgb.ppm": _encode(rgb, "PPM"),
    }


def tiny_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(3, 4, generator=g), "fc.bias": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(5)}


META = {"name": "cnn_baseline", "num_classes": 3, "input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25], "classifier": "fc", "options": {}, "classes": ["a", "b", "c"]}


def checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"kind": "resnetlab-checkpoint", "format_version": 1, "complete": True, "model": tiny_state(), "meta": META,
                "step": 3, "epoch": 0, "rng": {"torch": torch.zeros(4, dtype=torch.uint8)}, "config": {"lr": 0.1}}, buffer)
    return buffer.getvalue()


def model_file() -> tuple[bytes, bytes]:
    weights = safetensors_save(tiny_state(), metadata={"format": "resnetlab", "version": "1"})
    sidecar = json.dumps({"format": "resnetlab-model", "format_version": 1, "weights": "model.safetensors", "meta": META,
                          "extra": {"val_acc": 0.5}}, indent=2).encode()
    return weights, sidecar


def onnx_model() -> bytes:
    """A real ONNX classifier of META's shape (global average pool -> linear) carrying META as resnetlab.meta."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),  # (N, 3, 1, 1)
         helper.make_node("Flatten", ["pooled"], ["flat"]),  # (N, 3)
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],  # (N, 3 classes)
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weight],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8  # readable by older onnxruntime releases too
    entry = proto.metadata_props.add()
    entry.key, entry.value = "resnetlab.meta", json.dumps(META)
    return proto.SerializeToString()


def main() -> None:
    (CORPUS / "images").mkdir(parents=True, exist_ok=True)
    (CORPUS / "checkpoints").mkdir(parents=True, exist_ok=True)
    (CORPUS / "regressions").mkdir(parents=True, exist_ok=True)
    for name, data in images().items():
        (CORPUS / "images" / name).write_bytes(data)
    (CORPUS / "checkpoints" / "tiny.pt").write_bytes(checkpoint_bytes())
    weights, sidecar = model_file()
    (CORPUS / "checkpoints" / "model.safetensors").write_bytes(weights)
    (CORPUS / "checkpoints" / "model.json").write_bytes(sidecar)
    (CORPUS / "onnx").mkdir(parents=True, exist_ok=True)
    (CORPUS / "onnx" / "tiny.onnx").write_bytes(onnx_model())
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    print(f"wrote {CORPUS} ({total:,} bytes)")


if __name__ == "__main__":
    main()
