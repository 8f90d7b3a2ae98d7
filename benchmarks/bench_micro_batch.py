"""Training and evaluation images/s by pass size: one batch run as one pass vs as micro-batches.

The engine's ``micro_batch`` runs a batch's forward/backward in passes of that many images and
adds their gradients up before the one optimizer step. On a CPU this is faster whenever a pass of
the whole batch no longer keeps its activations in cache (fastnet94 at batch 1,000 is the case
that motivated it). This script measures forward+backward images/s of one optimizer batch split
into passes of each size (the optimizer step itself does not depend on the split and is left
out), and forward-only images/s by evaluation batch size, on random NHWC inputs (the cost of a
dense convolution does not depend on the values). Median of ``--repeats`` timed repeats after one
untimed warm-up, sizes interleaved per repeat so drifts of the machine hit every size alike.

    .venv/bin/python benchmarks/bench_micro_batch.py --json /tmp/micro.json
    .venv/bin/python benchmarks/bench_micro_batch.py --cases resnet56:128:32 --passes 128,64,32

``--precision bf16`` times the passes under CPU bf16 autocast and ``--keep-host-memory`` applies
the engine's host-memory setting (process-wide: compare two runs of the script, with and without).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import machine  # noqa: E402

from resnetlab.engine.host_memory import keep_freed_memory  # noqa: E402
from resnetlab.models import create_model  # noqa: E402

# model:batch:image side — the fast recipe's batch at its two training sides, and the
# bench_train.py models at their batch of 128.
DEFAULT_CASES = "fastnet94:1000:24,fastnet94:1000:32,resnet20:128:32,resnet56:128:32,resnet18_cifar:128:32"


def autocast(precision: str):
    """bf16 autocast on the CPU as ``precision: bf16`` / ``fastest`` (on AMX CPUs) trains; fp32: none."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def train_pass_timer(name: str, batch: int, side: int, passes: list[int], precision: str = "fp32"):
    """A function timing one forward+backward of the whole batch in passes of ``p`` images."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def run(p: int) -> float:
        start = time.perf_counter()
        for xs, ys in zip(x.split(p), y.split(p)):
            with autocast(precision):
                logits = model(xs)
            (F.cross_entropy(logits.float(), ys) * (len(ys) / batch)).backward()
        model.zero_grad(set_to_none=True)
        return batch / (time.perf_counter() - start)

    return run


def eval_pass_timer(name: str, batch: int, side: int, precision: str = "fp32"):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).to(memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(p: int) -> float:
        start = time.perf_counter()
        for xs in x.split(p):
            with autocast(precision):
                model(xs)
        return batch / (time.perf_counter() - start)

    return run


def measure(run, sizes: list[int], repeats: int) -> dict[int, list[float]]:
    for p in sizes:
        run(p)  # warm-up: allocator and oneDNN primitives for this shape
    rates = {p: [] for p in sizes}
    for _ in range(repeats):
        for p in sizes:
            rates[p].append(run(p))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated model:batch:side")
    parser.add_argument("--passes", default=None,
                        help="pass sizes to try (default: the batch, 1/2, 1/4 and 1/8 of it, when >= 16)")
    parser.add_argument("--eval", default="fastnet94:1000:32", help="model:images:side for the forward-only sweep ('' skips)")
    parser.add_argument("--eval-batches", default="1000,500,250,125,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: CPU autocast, as the engine's bf16")
    parser.add_argument("--keep-host-memory", action="store_true",
                        help="glibc keeps freed blocks in the process, as `resnetlab train` does on a CPU (keep_host_memory: auto)")
    parser.add_argument("--json", default=None, help="write the raw results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_host_memory:
        keep_freed_memory()
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}; load {os.getloadavg()}", flush=True)
    t0 = time.perf_counter()
    results = []
    for case in args.cases.split(","):
        name, batch, side = case.split(":")
        batch, side = int(batch), int(side)
        sizes = [int(p) for p in args.passes.split(",")] if args.passes else [batch // d for d in (1, 2, 4, 8) if batch // d >= 16]
        rates = measure(train_pass_timer(name, batch, side, sizes, args.precision), sizes, args.repeats)
        medians = {p: statistics.median(r) for p, r in rates.items()}
        whole = medians[batch] if batch in medians else None
        row = {"kind": "train", "model": name, "batch": batch, "side": side, "runs": rates, "median": medians}
        results.append(row)
        text = ", ".join(f"pass {p}: {m:.1f} img/s" + (f" ({m / whole:.2f}x)" if whole else "") for p, m in medians.items())
        print(f"{name} batch {batch} at {side}px fwd+bwd: {text}", flush=True)
    if args.eval:
        name, total, side = args.eval.split(":")
        sizes = [int(b) for b in args.eval_batches.split(",")]
        rates = measure(eval_pass_timer(name, int(total), int(side), args.precision), sizes, args.repeats)
        medians = {b: statistics.median(r) for b, r in rates.items()}
        results.append({"kind": "eval", "model": name, "images": int(total), "side": int(side), "runs": rates, "median": medians})
        print(f"{name} forward-only at {side}px by batch: " + ", ".join(f"{b}: {m:.0f} img/s" for b, m in medians.items()), flush=True)
    out = {"machine": machine(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
           "precision": args.precision, "keep_host_memory": args.keep_host_memory,
           "load_after": os.getloadavg(), "wall_s": time.perf_counter() - t0,
           "command": " ".join([".venv/bin/python", "benchmarks/bench_micro_batch.py", *sys.argv[1:]]), "results": results}
    print(f"wall {out['wall_s']:.0f} s; load after {out['load_after']}")
    if args.json:
        from resnetlab.utils.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
