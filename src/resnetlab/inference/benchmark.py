"""Inference throughput, PyTorch eager vs ONNX Runtime, measured side by side in one process.

    python -m resnetlab.inference.benchmark --models resnet20 resnet18 --batch-sizes 1 64

Honest-benchmark rules (STYLE.md): warm-up runs first, then ``--repeats`` timed runs of
``--iters`` forward passes each; the median images/s is reported with min..max; both backends
see the same input in the same process, alternating per repeat so drifting machine load hits both.
Only the forward pass is timed (inputs already normalized tensors), not decoding.
Random weights: speed does not depend on the values. ImageNet-shaped nets run at their meta size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Row:
    model: str
    input_size: tuple[int, int, int]
    batch: int
    torch_ips: float  # images per second, median
    torch_range: tuple[float, float]
    onnx_ips: float
    onnx_range: tuple[float, float]

    @property
    def speedup(self) -> float:
        return self.onnx_ips / self.torch_ips


def _time(fn, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return time.perf_counter() - start


def benchmark_model(name: str, batch_sizes=(1, 64), *, repeats: int = 5, min_seconds: float = 0.5,
                    threads: int | None = None) -> list[Row]:
    """Rows of images/s for one registered model at each batch size, both backends."""
    import onnxruntime as ort

    from resnetlab.inference.export import export_onnx
    from resnetlab.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / f"{name}.onnx").path
        options = ort.SessionOptions()
        # As in Predictor: idle ORT threads must not spin, or they steal the cores PyTorch is timed on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = []
    for batch in batch_sizes:
        x = torch.randn((batch, *model.meta.input_size))
        feed = {"images": x.numpy()}

        def run_torch():
            with torch.inference_mode():
                model(x)

        def run_onnx():
            session.run(["logits"], feed)

        # Warm-up, and pick an iteration count that runs for about min_seconds.
        for fn in (run_torch, run_onnx):
            fn()
            fn()
        per_call = max(_time(run_torch, 1), _time(run_onnx, 1))
        iters = max(1, int(min_seconds / max(per_call, 1e-6)))
        torch_rates, onnx_rates = [], []
        for _ in range(repeats):
            torch_rates.append(batch * iters / _time(run_torch, iters))
            onnx_rates.append(batch * iters / _time(run_onnx, iters))
        rows.append(Row(name, tuple(model.meta.input_size), batch,
                        statistics.median(torch_rates), (min(torch_rates), max(torch_rates)),
                        statistics.median(onnx_rates), (min(onnx_rates), max(onnx_rates))))
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| model | input | batch | PyTorch eager img/s (min..max) | ONNX Runtime img/s (min..max) | ORT / eager |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        size = "x".join(str(v) for v in r.input_size[1:])
        lines.append(f"| {r.model} | {size} | {r.batch} | {r.torch_ips:,.0f} ({r.torch_range[0]:,.0f}..{r.torch_range[1]:,.0f}) "
                     f"| {r.onnx_ips:,.0f} ({r.onnx_range[0]:,.0f}..{r.onnx_range[1]:,.0f}) | {r.speedup:.2f}x |")
    return "\n".join(lines)


def environment() -> str:
    import onnxruntime as ort

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__}, python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f} (other processes share these CPUs when it exceeds ~0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet18"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per backend (median reported)")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="length of one timed repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads (default: library default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        rows += benchmark_model(name, args.batch_sizes, repeats=args.repeats, min_seconds=args.min_seconds, threads=args.threads)
    print(markdown(rows))
    print(f"\nmachine: {environment()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
