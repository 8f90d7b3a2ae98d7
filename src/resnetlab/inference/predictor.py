"""``Predictor``: a trained model (PyTorch or ONNX Runtime) plus the preprocessing it was trained with.

>>> import resnetlab
>>> model = resnetlab.load("runs/resnet20-cifar10")          # run dir, model file, .pt or .onnx
>>> model.predict(["cat.jpg", "dog.png"], top_k=3)           # [[("cat", 0.91), ...], [...]]

Accepted images (one image, or a list of them, or a batch):
- file paths (``str`` / ``Path``), raw ``bytes``, binary file objects, PIL images (any mode);
- numpy arrays (H, W), (H, W, 3/4) and batches (N, H, W, 3), uint8 0..255 or float in [0, 1];
- torch tensors (3, H, W), (H, W, 3) and batches (N, 3, H, W) / (N, H, W, 3), uint8 or float in [0, 1].
Every image is resized (shorter side + center crop) to ``meta.input_size`` and normalized with
``meta.mean``/``meta.std`` (see :mod:`resnetlab.inference.preprocess`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from resnetlab.errors import CheckpointError, ConfigError
from resnetlab.imaging import fit_batch, normalize, tta_canvas_size
from resnetlab.inference.preprocess import MAX_IMAGE_PIXELS, image_to_array, split_batch
from resnetlab.utils.device import resolve_device

ONNX_META_KEY = "resnetlab.meta"


class Predictor:
    """Runs a classifier on images. Thread-safe for concurrent ``predict`` calls (the model is read-only)."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], meta, *, backend: str,
                 device: torch.device | str = "cpu", source: str | None = None, extra: dict | None = None):
        self._run = run  # float32 (N, 3, H, W) normalized, on CPU -> float32 logits (N, K) on CPU
        self.meta = meta
        self.backend = backend  # "torch" or "onnxruntime"
        self.device = torch.device(device)
        self.source = source
        self.extra = extra or {}
        self.max_pixels = MAX_IMAGE_PIXELS

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", source_format: str | None = None) -> "Predictor":
        """Load a run directory, a ``.safetensors`` model file, a ``.pt`` checkpoint, an ``.onnx`` file, or an
        outside checkpoint (akamaster, kuangliu, torchvision, timm: see :mod:`resnetlab.models.importers`;
        ``source_format`` or a ``FORMAT:PATH`` prefix names the format where the keys cannot)."""
        from resnetlab.models.importers import load_any_model, split_format_prefix

        source_format, text = split_format_prefix(path, source_format)
        path = Path(text)
        if path.suffix.lower() == ".onnx" and source_format is None:
            return cls.from_onnx(path, device=device)
        if path.name.endswith(".torchscript.pt"):
            raise CheckpointError(f"{path}: TorchScript exports are for other runtimes (torch.jit.load, libtorch); "
                                  "give resnetlab the run directory, model file or the .onnx export instead")
        device = resolve_device(device)
        model = load_any_model(path, source_format, map_location=device)
        return cls.from_model(model, device=device, source=str(path))

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: str | torch.device = "cpu", source: str | None = None) -> "Predictor":
        """Wrap an in-memory ``nn.Module`` that carries ``.meta`` (as built by ``create_model``)."""
        if not hasattr(model, "meta"):
            raise ConfigError("Predictor.from_model needs a model with .meta (build it with resnetlab.create_model)")
        device = resolve_device(device)
        model = model.to(device).eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(x.to(device, non_blocking=True)).float().cpu()

        predictor = cls(run, model.meta, backend="torch", device=device, source=source,
                        extra=getattr(model, "extra", {}))
        predictor.model = model
        return predictor

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "Predictor":
        """An ONNX file written by ``resnetlab export`` run with onnxruntime."""
        import onnxruntime as ort

        from resnetlab.models.metadata import validate_meta

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX file not found: {path}")
        device = resolve_device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        # Idle worker threads sleep instead of spin-waiting: on a small CPU shared with image
        # decoding (serve, predict) spinning steals the cores the next request needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise CheckpointError(f"{path}: onnxruntime cannot load this file ({str(exc).splitlines()[0]})") from exc
        meta = validate_meta(*_onnx_meta(session, path))  # checked at load: serve must not answer 500 later
        _check_onnx_shapes(session, meta, path)
        input_name = session.get_inputs()[0].name
        output_name = session.get_outputs()[0].name

        def run(x: torch.Tensor) -> torch.Tensor:
            (logits,) = session.run([output_name], {input_name: x.cpu().numpy()})
            return torch.from_numpy(np.asarray(logits, dtype=np.float32))

        predictor = cls(run, meta, backend="onnxruntime", device=device, source=str(path))
        predictor.session = session
        return predictor

    # ---- properties ---------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """Class names in output order (``"0"``, ``"1"``... when the model was saved without names)."""
        if self.meta.classes:
            return list(self.meta.classes)
        return [str(i) for i in range(self.meta.num_classes)]

    @property
    def crop_pct(self) -> float:
        """The recorded evaluation crop (:func:`resnetlab.imaging.fit`); 1.0 for models saved before it existed."""
        return float(getattr(self.meta, "crop_pct", 1.0) or 1.0)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) every image is resized to."""
        _, height, width = self.meta.input_size
        return int(height), int(width)

    @property
    def tta_input_size(self) -> tuple[int, int]:
        """(H, W) of what :meth:`probabilities_tta` takes: the image size, or for a photo model (crop_pct < 1)
        the size / crop_pct canvas around the evaluation crop that its crop views are cut from."""
        return tta_canvas_size(self.image_size, self.crop_pct)

    @property
    def name(self) -> str:
        return self.meta.name

    # ---- inference ----------------------------------------------------------------------------

    def prepare(self, images: Any, names: list[str] | None = None, *, tta: bool = False) -> torch.Tensor:
        """Images in any accepted form -> uint8 (N, H, W, 3) at the model's input size (``tta``: at
        :attr:`tta_input_size`, the input of :meth:`probabilities_tta`)."""
        items = split_batch(images)
        keep = self.tta_input_size if tta else None
        arrays = [
            image_to_array(item, self.image_size, name=names[i] if names else None, max_pixels=self.max_pixels,
                           crop_pct=self.crop_pct, keep=keep)
            for i, item in enumerate(items)
        ]
        if not arrays:
            return torch.empty((0, *(keep or self.image_size), 3), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays))

    def logits(self, images_uint8_nhwc: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Raw scores (N, num_classes) float32 on CPU for uint8 (N, H, W, 3) images (an ``ImageSet``'s layout)."""
        images = torch.as_tensor(images_uint8_nhwc)
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Predictor.logits expects uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        if tuple(images.shape[1:3]) != self.image_size:  # arrays at another size: the file path's geometry
            images = fit_batch(images, self.image_size, self.crop_pct)
        outputs = []
        for start in range(0, images.shape[0], batch_size):
            x = normalize(images[start:start + batch_size], self.meta.mean, self.meta.std)  # (B, 3, H, W)
            outputs.append(self._run(x))
        if not outputs:
            return torch.empty((0, self.meta.num_classes), dtype=torch.float32)
        return torch.cat(outputs)

    @property
    def temperature(self) -> float:
        """T of temperature scaling (``resnetlab calibrate``): probabilities are softmax(logits / T); 1.0 uncalibrated.
        An ONNX export divides inside its graph and records 1.0 here, so T is never applied twice."""
        return float(getattr(self.meta, "temperature", 1.0) or 1.0)

    def probabilities_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax(logits / T): the one place predict, serve and batch prediction turn logits into probabilities."""
        return torch.softmax(logits / self.temperature, dim=1)

    def tta_views(self) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        """(name, uint8 NHWC at :attr:`tta_input_size` -> uint8 NHWC at the image size) views of test-time
        augmentation: evaluate --tta's own list (:func:`resnetlab.evaluation.predictions.tta_views`), so
        predict, serve and evaluate agree. crop_pct 1.0: flip x small shifts; a photo model (crop_pct < 1):
        flip x {centre, four corner} crops of the canvas around the evaluation crop."""
        from resnetlab.evaluation.predictions import tta_views

        return tta_views(self.image_size, self.crop_pct)

    @property
    def tta_view_names(self) -> list[str]:
        """The names of :meth:`tta_views`, in order (recorded in predict's JSON and serve's answers)."""
        return [name for name, _ in self.tta_views()]

    def probabilities_tta(self, images_uint8_nhwc: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Mean over :meth:`tta_views` of the (calibrated) probabilities, (N, num_classes), for uint8 (N, H, W, 3)
        at :attr:`tta_input_size` (``prepare(..., tta=True)``); arrays of another size are whole pictures,
        fitted to it with the model's geometry.

        Probabilities are averaged, not logits: each view votes with a distribution (as evaluate --tta).
        """
        images = torch.as_tensor(images_uint8_nhwc)
        if images.ndim == 4 and tuple(images.shape[1:3]) != self.tta_input_size:
            # the views' shifts and crops are sized for the canvas
            images = fit_batch(images, self.image_size, self.crop_pct, keep=self.tta_input_size)
        views = self.tta_views()
        total = sum(self.probabilities_from_logits(self.logits(view(images), batch_size=batch_size)) for _, view in views)
        return total / len(views)

    def probabilities(self, images: Any, batch_size: int = 64) -> torch.Tensor:
        """Softmax probabilities (N, num_classes), calibrated by the model's temperature, for images in any accepted form."""
        return self.probabilities_from_logits(self.logits(self.prepare(images), batch_size=batch_size))

    def predict(self, images: Any, top_k: int = 5, batch_size: int = 64) -> list[list[tuple[str, float]]]:
        """Top-k ``(class, probability)`` pairs, best first, one list per image (also for a single image)."""
        return self.top_k(self.probabilities(images, batch_size=batch_size), top_k)

    def top_k(self, probabilities: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        k = max(1, min(int(k), probabilities.shape[1] if probabilities.ndim == 2 else 1))
        values, indices = probabilities.topk(k, dim=1)
        names = self.classes
        return [[(names[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
                for row_p, row_i in zip(values, indices)]

    def __repr__(self) -> str:
        return (f"Predictor({self.meta.name!r}, backend={self.backend!r}, classes={len(self.classes)}, "
                f"input_size={tuple(self.meta.input_size)}, device={str(self.device)!r})")


def _check_onnx_shapes(session, meta, path: Path) -> None:
    """The graph's fixed dimensions must be what the metadata says: a class count that differs would name
    the wrong classes (or fail on an index), an input size that differs would fail on every request."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise CheckpointError(f"{path}: expected one image input and a logits output, found {len(inputs)} inputs and {len(outputs)} outputs")
    expected = {"input": (inputs[0].shape, [None, *meta.input_size]), "output": (outputs[0].shape, [None, meta.num_classes])}
    for what, (shape, wanted) in expected.items():
        fixed = shape if isinstance(shape, list) else []
        clash = len(fixed) != len(wanted) or any(isinstance(d, int) and w is not None and d != w for d, w in zip(fixed, wanted))
        if clash:
            shown = "[" + ", ".join(str(d) if isinstance(d, int) else "N" for d in fixed) + "]"
            raise CheckpointError(f"{path}: the graph's {what} shape {shown} does not match its metadata "
                                  f"(input_size {list(meta.input_size)}, num_classes {meta.num_classes})")


def _onnx_meta(session, path: Path) -> tuple[object, str]:
    """(ModelMeta dict, where it was read) from the ONNX metadata_props, or from the ``.onnx.json`` sidecar."""
    props = session.get_modelmeta().custom_metadata_map
    if ONNX_META_KEY in props:
        try:
            return json.loads(props[ONNX_META_KEY]), f"{path} ({ONNX_META_KEY})"
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: metadata {ONNX_META_KEY!r} is not valid JSON") from exc
    sidecar = path.with_name(path.name + ".json")
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text())["meta"], str(sidecar)
        except (OSError, KeyError, TypeError, ValueError) as exc:  # ValueError: invalid JSON or not UTF-8
            raise CheckpointError(f"{sidecar}: unreadable ONNX sidecar ({exc})") from exc
    raise CheckpointError(f"{path}: no resnetlab metadata (class names, normalization); "
                          "export it with 'resnetlab export MODEL --format onnx'")
