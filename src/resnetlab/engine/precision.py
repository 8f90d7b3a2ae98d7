"""Device and numeric precision, decided once per run (in the manner of nanoGPT).

``auto``: on CUDA bf16 where the GPU supports it (no loss scaling needed), fp16 with a GradScaler
otherwise; on a CPU plain fp32 (bit-for-bit reproducible, no autocast).
``fastest``: as ``auto`` on CUDA; on a CPU bf16 autocast when the CPU multiplies bf16 natively
(Intel AMX or AVX512-BF16: fastnet94 trains 2.7-3x faster than in fp32 on a 2-core Sapphire-Rapids-class
Xeon, benchmarks/speed.md), fp32 on CPUs without it (bf16 would be emulated, slower than fp32).
``bf16``: bf16 autocast on any device (on a CPU without native bf16 it runs, slowly; a warning says so).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from resnetlab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Precision:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None means plain fp32
    scaler: torch.amp.GradScaler | None  # only for fp16

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16), which oneDNN's
    convolutions and matmuls use under autocast. Older torch builds lack the probes: False."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_precision(name: str, device: torch.device) -> Precision:
    if device.type != "cuda":
        if name == "fastest":
            name = "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
        if name == "bf16" and device.type == "cpu":
            if not cpu_has_native_bf16():
                log.warning("precision bf16 on a CPU without AMX/AVX512-BF16: emulated, likely slower than fp32")
            return Precision(device, torch.bfloat16, None)
        if name not in ("auto", "fp32"):
            log.warning("precision %s requested on %s: using fp32 (fp16 autocast is for GPUs)", name, device)
        return Precision(device, None, None)
    if name in ("auto", "fastest"):
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    return Precision(device, dtype, scaler)


def resolve_channels_last(value: bool | str, device: torch.device) -> bool:
    """``auto`` -> NHWC on CPU and CUDA (measured on this project's CPU: benchmarks/speed.md)."""
    if value == "auto":
        return device.type in ("cpu", "cuda")
    return bool(value)


def resolve_compile(value: bool | str, device: torch.device) -> bool | str:
    """``auto`` -> torch.compile on CUDA only: on the CPU it cost ~50 s and gained nothing (speed.md).

    ``reduce-overhead`` stays as it is (the mode passed to torch.compile) on CUDA and is refused
    elsewhere: CUDA graphs exist only there, and silently training uncompiled would misreport speed.
    """
    if value == "auto":
        return device.type == "cuda"
    if value == COMPILE_CUDA_GRAPHS:
        if device.type != "cuda":
            raise ConfigError(f"config model.compile={value}: CUDA graphs need a CUDA device, and this run is on {device} "
                              "(use model.compile=true or auto there)")
        return value
    return bool(value)


COMPILE_CUDA_GRAPHS = "reduce-overhead"  # torch.compile's mode that captures the compiled step as CUDA graphs


def compile_model(model: torch.nn.Module, setting: bool | str) -> torch.nn.Module:
    """``model`` compiled as a resolved ``model.compile`` says (False: unchanged)."""
    if not setting:
        return model
    return torch.compile(model, mode=COMPILE_CUDA_GRAPHS if setting == COMPILE_CUDA_GRAPHS else None)
