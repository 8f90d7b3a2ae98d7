"""Export a trained model to ONNX or TorchScript, with its metadata, and prove the export is faithful.

ONNX: input ``images`` float32 (batch, 3, H, W) already normalized with ``meta.mean``/``meta.std``,
output ``logits`` (batch, num_classes); the batch dimension is dynamic. The ModelMeta (architecture,
class names, mean/std, input size) is stored as JSON in ``metadata_props`` (key ``resnetlab.meta``,
plus readable single keys) and in a ``<file>.json`` sidecar. After writing, onnxruntime runs a random
batch of a *different* size than the one traced and the max abs difference to PyTorch is checked.
A calibrated model (``meta.temperature`` T != 1, ``resnetlab calibrate``) is exported with the logits
divided by T inside the graph; its written metadata then says temperature 1.0 (``temperature_in_graph``
records T), so softmax of the output is the calibrated probability in any runtime.

Exporter: torch.export with the dynamo ONNX exporter (``torch.onnx.export(..., dynamo=True)``), the
maintained path; the TorchScript-based ONNX exporter it replaces is deprecated. It needs opset 18 or
later. The onnxruntime parity check above guards every export.

TorchScript: kept because ``../shared/CLI.md`` promises ``--format torchscript`` for runtimes that only
read TorchScript (libtorch in C++, ``torch.jit.load`` without resnetlab). torch.export's
ExportedProgram cannot be turned into TorchScript, so this one format still uses ``torch.jit.trace``
(the models are static graphs); metadata in ``_extra_files`` under ``resnetlab_meta.json``; parity is
checked by running the saved file again. Everything inside resnetlab reads ONNX or our model files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from resnetlab.errors import CheckpointError, ConfigError
from resnetlab.inference.predictor import ONNX_META_KEY
from resnetlab.utils.atomic import atomic_write_bytes, atomic_write_text, check_output_path


INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18  # the oldest opset the dynamo exporter writes
DEFAULT_ATOL = 1e-4
TORCHSCRIPT_META_FILE = "resnetlab_meta.json"
FORMATS = ("onnx", "torchscript")
EXPORTER = "torch.export"  # recorded in the sidecar and printed by the CLI


class ExportParityError(CheckpointError):
    """The exported file does not reproduce the PyTorch model's outputs within tolerance."""


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    tolerance: float
    sidecar: Path | None = None
    exporter: str = ""


def default_output(model_path: str | os.PathLike, fmt: str) -> Path:
    """run dir -> ``RUN/model.onnx``; ``x.safetensors``/``x.pt`` -> ``x.onnx`` beside it."""
    path = Path(model_path)
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    if path.is_dir():
        return path / f"model{suffix}"
    return path.with_name(path.stem + suffix)


def export_model(model_path: str | os.PathLike, fmt: str, output: str | os.PathLike | None = None, *,
                 opset: int = DEFAULT_OPSET, atol: float = DEFAULT_ATOL) -> ExportResult:
    """Load a run directory / model file / checkpoint and export it (see module docstring)."""
    from resnetlab.models.files import model_source_files
    from resnetlab.models.importers import load_any_model

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    output = Path(output) if output else default_output(model_path, fmt)
    # Checked before any work: `-o RUN/model` would otherwise replace RUN/model.json with the ONNX sidecar.
    protected = model_source_files(model_path)
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    check_output_path(output, protected, example=f"model{suffix}")
    if fmt == "onnx":
        sidecar = output.with_name(output.name + ".json")
        check_output_path(sidecar, protected, label=f"--output {output} (its metadata goes to {sidecar})")
    # An outside checkpoint (akamaster .th, ...) is imported exactly or refused, like evaluate/predict/serve do.
    model = load_any_model(model_path, map_location="cpu")
    if fmt == "onnx":
        return export_onnx(model, output, opset=opset, atol=atol,
                           extra={"source": str(model_path), **getattr(model, "extra", {})})
    return export_torchscript(model, output, atol=atol)


def _check_tolerance(diff: float, reference: torch.Tensor, atol: float, what: str, path: Path) -> float:
    # atol is per unit of logit scale: random-weight or deep nets can have logits in the hundreds,
    # where float32 reassociation alone moves the last digits.
    allowed = atol * max(1.0, float(reference.abs().max()))
    if not diff <= allowed:  # also catches NaN
        raise ExportParityError(f"{path}: {what} differs from PyTorch by max abs {diff:.3g} > tolerance {allowed:.3g}; "
                                "the export was not written")
    return allowed


class _Calibrated(nn.Module):
    """``model(x) / T``: temperature scaling inside the exported graph, so any runtime's softmax is calibrated."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def _calibrated(model: nn.Module) -> tuple[nn.Module, object, float]:
    """(module to export, metadata to write, T): with T != 1 the graph divides the logits by T and the
    written metadata says temperature 1.0, so a reader that applies the metadata's T does not apply it twice."""
    meta = model.meta
    temperature = float(getattr(meta, "temperature", 1.0) or 1.0)
    if temperature == 1.0:
        return model, meta, 1.0
    return _Calibrated(model, temperature).eval(), replace(meta, temperature=1.0), temperature


def _example(meta, batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *meta.input_size), generator=generator)  # (B, C, H, W), like normalized input


def onnx_metadata(meta, extra: dict | None = None) -> dict[str, str]:
    """The ``metadata_props`` written into the ONNX file (strings only)."""
    props = {
        ONNX_META_KEY: json.dumps(meta.to_dict()),
        "architecture": meta.name,
        "classes": json.dumps(meta.classes or [str(i) for i in range(meta.num_classes)]),
        "mean": json.dumps(list(meta.mean)),
        "std": json.dumps(list(meta.std)),
        "input_size": json.dumps(list(meta.input_size)),
        "input_layout": "float32 NCHW, (pixel/255 - mean) / std",
    }
    if extra:
        props["resnetlab.extra"] = json.dumps(extra, default=str)
        if extra.get("temperature_in_graph"):
            props["temperature_in_graph"] = json.dumps(extra["temperature_in_graph"])
            props["output_layout"] = "logits already divided by temperature_in_graph: softmax gives calibrated probabilities"
    return props


def _onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    import onnx

    if opset < DEFAULT_OPSET:
        raise ConfigError(f"--opset {opset}: the torch.export ONNX exporter writes opset {DEFAULT_OPSET} or later")
    # The CLI logs at INFO; the exporter's graph passes would print dozens of "Removed N unused
    # nodes" lines there. Their warnings and errors still come through.
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        program = torch.onnx.export(
            model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=opset,
            dynamo=True, verbose=False,
        )
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return onnx.ModelProto.SerializeToString(program.model_proto)


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET, atol: float = DEFAULT_ATOL,
                extra: dict | None = None) -> ExportResult:
    """Write ``model`` as ONNX at ``path`` (+ ``path.json``) after checking parity with onnxruntime."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    model, meta, temperature = _calibrated(model.cpu().eval())
    if temperature != 1.0:
        extra = {**(extra or {}), "temperature_in_graph": temperature}
    example = _example(meta, 2, seed=0)
    try:
        data = _onnx_bytes(model, example, opset)
    except ConfigError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"ONNX export of {meta.name!r} failed: {first}") from exc
    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for key, value in onnx_metadata(meta, extra).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "resnetlab"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    # Parity on a batch size different from the traced one proves the batch axis is really dynamic.
    check = _example(meta, 3, seed=1)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        reference = model(check).float()
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: check.numpy()})
    diff = float((torch.from_numpy(got) - reference).abs().max())
    allowed = _check_tolerance(diff, reference, atol, "onnxruntime output", path)

    atomic_write_bytes(path, data)
    sidecar = path.with_name(path.name + ".json")
    atomic_write_text(sidecar, json.dumps({
        "format": "resnetlab-onnx", "file": path.name, "input": INPUT_NAME, "output": OUTPUT_NAME,
        "input_layout": "float32 NCHW, (pixel/255 - mean) / std", "opset": opset,
        "exporter": EXPORTER, "max_abs_diff": diff, "tolerance": allowed, "meta": meta.to_dict(), "extra": extra or {},
    }, indent=2, default=str))
    return ExportResult(path=path, format="onnx", max_abs_diff=diff, tolerance=allowed, sidecar=sidecar, exporter=EXPORTER)


def export_torchscript(model: nn.Module, path: str | os.PathLike, *, atol: float = DEFAULT_ATOL) -> ExportResult:
    """Write ``model`` traced with TorchScript, metadata in ``_extra_files``; parity checked on reload."""
    path = Path(path)
    model, meta, _ = _calibrated(model.cpu().eval())
    example = _example(meta, 2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit as deprecated
        try:
            with torch.no_grad():
                traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as exc:
            raise CheckpointError(f"TorchScript trace of {meta.name!r} failed: {exc}") from exc
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_META_FILE: json.dumps(meta.to_dict())})
        data = buffer.getvalue()
        reloaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    check = _example(meta, 3, seed=1)
    # The profiling executor spends its first runs optimizing; one plain run is all a check needs.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        reference = model(check).float()
        got = reloaded(check).float()
    diff = float((got - reference).abs().max())
    allowed = _check_tolerance(diff, reference, atol, "TorchScript output", path)
    atomic_write_bytes(path, data)
    return ExportResult(path=path, format="torchscript", max_abs_diff=diff, tolerance=allowed, exporter="jit.trace")
