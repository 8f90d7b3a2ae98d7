"""Training images/s on CPU: resnetlab's engine step vs a plain PyTorch loop, side by side.

Both sides train the same model (fresh copies of one initialisation), batch 128, SGD (momentum
0.9, weight decay 5e-4), fp32 eager (``--precision fastest`` puts the engine side in bf16 autocast where
the CPU has native bf16, as ``precision: fastest`` does), on the same decoded CIFAR-10 training images:

- engine: ``resnetlab.engine.loop.train_step`` (the step ``resnetlab train`` runs: lr set from
  the schedule, loss, backward, grad-norm check, one host sync, optimizer step) fed by
  ``DeviceLoader`` (batched pad-4 crop + flip on uint8, normalize).
- plain: torchvision ``DataLoader`` (num_workers=2) over the uint8 array with
  RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, then
  ``zero_grad / forward / cross_entropy / backward / step / loss.item()``.

Each side runs in its own process, as each would in practice: the engine side with the host-memory
setting ``resnetlab train`` applies on a CPU (``keep_host_memory: auto``: glibc keeps freed
activations instead of unmapping them; ``--no-keep-host-memory`` turns it off), the plain side with
glibc's defaults. Windows alternate (plain, engine, plain, ...) so background load hits both alike;
the plain loop's workers start, warm up and shut down inside its own window. Medians over the windows.
Achieved GFLOP/s = 3 x forward FLOPs (fwd + ~2x for bwd) x images/s.

    .venv/bin/python benchmarks/bench_train.py [--models resnet20,resnet56,resnet18_cifar] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import ARCHIVE, MEAN, STD, baseline_loader, machine  # noqa: E402

from resnetlab.data import AugmentConfig, DeviceLoader  # noqa: E402
from resnetlab.data.folders import load_image_folder  # noqa: E402
from resnetlab.engine.host_memory import keep_freed_memory  # noqa: E402
from resnetlab.engine.loop import StepOptions, TrainState, train_step  # noqa: E402
from resnetlab.engine.optim import build_optimizer, param_groups  # noqa: E402
from resnetlab.engine.precision import resolve_precision  # noqa: E402
from resnetlab.engine.schedule import TrainErrorWarmup  # noqa: E402
from resnetlab.config import OptimConfig  # noqa: E402
from resnetlab.models import count_flops, create_model  # noqa: E402

# Steps per timed window, by model: about 5 s per window on machine B (20 s on machine A). Windows of
# about 1 s (6/3/1 steps, the session-2 choice) mostly measured the first, slow steps after the other
# process had the cores: resnet20's ratio read 0.98x with 6-step windows, 1.21-1.38x with 30 (machine B).
DEFAULT_STEPS = {"resnet20": 30, "resnet56": 12, "resnet18_cifar": 4}


def engine_runner(model: nn.Module, train_set, batch_size: int, channels_last: bool, micro_batch: int | None = None,
                  precision: str = "fp32"):
    """A generator function: each next() runs one engine training step."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = OptimConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    state = TrainState(
        model=model, optimizer=build_optimizer(param_groups(model, cfg.weight_decay, False), cfg),
        criterion=nn.CrossEntropyLoss(), precision=resolve_precision(precision, torch.device("cpu")),
        lr_fn=lambda step: cfg.lr, warmup=TrainErrorWarmup(None, 0.01, 50),
    )
    loader = DeviceLoader(train_set, batch_size, train=True, device="cpu", seed=0, mean=MEAN, std=STD,
                          augment=AugmentConfig(crop_padding=4, pad_mode="zeros", flip=True), channels_last=channels_last)
    options = StepOptions(micro_batch=micro_batch)

    def steps():
        epoch = 0
        while True:
            for x, y in loader.epoch(epoch):
                train_step(state, x, y, options)
                yield len(y)
            epoch += 1

    return steps()


def plain_runner(model: nn.Module, images, labels, batch_size: int, workers: int):
    """Returns make_window(): a fresh DataLoader iterator driving a textbook training loop."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = baseline_loader(images, labels, batch_size, workers)

    def window():
        model.train()
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            loss.item()
            yield len(y)

    return window


def timed(steps, warmup: int, n: int) -> float:
    """Images/s over n steps of the iterator ``steps`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        next(steps)
    start, seen = time.perf_counter(), 0
    for _ in range(n):
        seen += next(steps)
    return seen / (time.perf_counter() - start)


def load_train(archive: str, limit: int | None):
    train = load_image_folder(archive)["train"]
    if limit and len(train) > limit:
        from resnetlab.data.imageset import ImageSet

        train = ImageSet(images=train.images[:limit], labels=train.labels[:limit], classes=train.classes,
                         mean=train.mean, std=train.std, source=train.source)
    return train


def side_process(conn, side: str, name: str, args: argparse.Namespace) -> None:
    """One side of the comparison in its own process: build, warm up, then time windows on request."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if side == "engine" and args.keep_host_memory:
        keep_freed_memory()  # what `resnetlab train` does on a CPU (keep_host_memory: auto)
    train_set = load_train(args.archive, args.limit)
    torch.manual_seed(0)  # the same initialisation in both processes
    model = create_model(name, num_classes=10)
    if side == "engine":
        engine_steps = engine_runner(model, train_set, args.batch_size, not args.nchw, args.micro_batch, args.precision)
        timed(engine_steps, args.warmup, 0)  # one-time warm-up (allocator, oneDNN primitives)
    else:
        make_plain = plain_runner(model, train_set.images.numpy(), train_set.labels.numpy(), args.batch_size, args.workers)
    conn.send("ready")
    while (steps := conn.recv()) is not None:
        if side == "engine":
            conn.send(timed(engine_steps, 1, steps))
        else:
            plain = make_plain()
            conn.send(timed(plain, args.warmup, steps))
            plain.close()  # shuts the workers down before the engine window


def bench_model(name: str, args) -> dict:
    flops = count_flops(create_model(name, num_classes=10), (3, 32, 32))  # forward FLOPs (2 x MACs) per image
    steps = args.steps or DEFAULT_STEPS.get(name, 3)
    ctx = mp.get_context("spawn")
    sides = {}
    for side in ("plain", "engine"):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=side_process, args=(child, side, name, args))
        proc.start()
        sides[side] = (parent, proc)
    try:
        for parent, _ in sides.values():
            assert parent.recv() == "ready"
        runs = {"plain": [], "engine": []}
        for r in range(args.repeats):
            for side in ("plain", "engine"):
                sides[side][0].send(steps)
                runs[side].append(sides[side][0].recv())
            print(f"  {name} round {r + 1}: plain {runs['plain'][-1]:.1f} img/s, engine {runs['engine'][-1]:.1f} img/s", flush=True)
    finally:
        for parent, proc in sides.values():
            parent.send(None)
            proc.join(timeout=60)
    engine_runs, plain_runs = runs["engine"], runs["plain"]
    eng, plain = statistics.median(engine_runs), statistics.median(plain_runs)
    return {
        "model": name, "fwd_gflops_per_image": flops / 1e9, "steps_per_window": steps,
        "engine_runs": engine_runs, "plain_runs": plain_runs, "engine_median": eng, "plain_median": plain,
        "ratio": eng / plain, "engine_gflops_s": 3 * flops * eng / 1e9, "plain_gflops_s": 3 * flops * plain / 1e9,
    }


def cpu_peak_gflops() -> tuple[float, str]:
    """Theoretical fp32 peak: cores x GHz x FLOPs/cycle (from the SIMD width and FMA pipes)."""
    cores = len(os.sched_getaffinity(0))
    mhz = 0.0
    flags = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu MHz") and not mhz:
            mhz = float(line.split(":")[1])
        if line.startswith("flags") and not flags:
            flags = line
    if "avx512f" in flags:
        per_cycle, why = 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2"
    elif "avx2" in flags and "fma" in flags:
        # Under KVM the CPU model may be QEMU's generic "EPYC" (family 23, model 1, i.e. Zen 1, which
        # would split 256-bit FMAs in two: 16 FLOPs/cycle). The measured sgemm below beats that
        # figure on this machine, so the host executes full 256-bit FMAs: 32 FLOPs/cycle.
        per_cycle, why = 32, "AVX2+FMA: 2 FMA pipes x 8 fp32 lanes x 2"
    else:
        per_cycle, why = 8, "SSE: 4 fp32 lanes x (add + mul)"
    peak = cores * mhz / 1000 * per_cycle
    return peak, f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} fp32 FLOPs/cycle ({why}) = {peak:.0f} GFLOP/s"


def sgemm_roof_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best of ``repeats`` fp32 matrix products (MKL) with the torch threads: the practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", default=str(ARCHIVE))
    parser.add_argument("--models", default="resnet20,resnet56,resnet18_cifar")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--nchw", action="store_true", help="engine side in NCHW (default: channels_last, as the engine's auto)")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="engine side: forward/backward in passes of this many images (train config micro_batch)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fastest"],
                        help="engine side's precision (train config precision); the plain loop is always fp32")
    parser.add_argument("--repeats", type=int, default=3, help="alternating windows per side")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per window (default: by model)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each window")
    parser.add_argument("--limit", type=int, default=10000, help="training images used (the step cost does not depend on it)")
    parser.add_argument("--json", default=None, help="write the raw results here")
    parser.add_argument("--no-keep-host-memory", dest="keep_host_memory", action="store_false",
                        help="engine side with glibc's default allocator (as keep_host_memory: false)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    peak, peak_text = cpu_peak_gflops()
    load_before = os.getloadavg()
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}; load {load_before}", flush=True)
    roof = sgemm_roof_gflops()
    if roof > peak:
        # Under KVM /proc/cpuinfo shows the nominal clock; a host that turbo-boosts beats the "peak".
        peak_text += " (below the measured sgemm: the host clocks above the nominal frequency; the sgemm is the roof)"
    print(f"peak estimate: {peak_text}; measured sgemm 2048^3: {roof:.1f} GFLOP/s", flush=True)
    results = []
    t0 = time.perf_counter()
    for name in args.models.split(","):
        res = bench_model(name.strip(), args)
        results.append(res)
        print(f"{name}: plain {res['plain_median']:.1f} img/s ({res['plain_gflops_s']:.1f} GFLOP/s), engine {res['engine_median']:.1f} "
              f"img/s ({res['engine_gflops_s']:.1f} GFLOP/s, {100 * res['engine_gflops_s'] / roof:.0f}% of sgemm), ratio {res['ratio']:.2f}x", flush=True)
    out = {
        "machine": machine(), "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "workers": args.workers, "channels_last": not args.nchw, "keep_host_memory": args.keep_host_memory, "micro_batch": args.micro_batch,
        "precision": args.precision, "sgemm_gflops": roof, "repeats": args.repeats,
        "load_before": load_before, "load_after": os.getloadavg(), "wall_s": time.perf_counter() - t0,
        "peak_gflops": peak, "peak_text": peak_text, "command": " ".join([".venv/bin/python", "benchmarks/bench_train.py", *sys.argv[1:]]),
        "results": results,
    }
    print(f"load after: {out['load_after']}; wall {out['wall_s']:.0f} s")
    if args.json:
        from resnetlab.utils.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
