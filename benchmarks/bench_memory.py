"""Peak memory per recipe: resident set size (CPU) or peak allocated CUDA memory (GPU).

Each recipe runs as a real ``resnetlab train`` process on the shared CIFAR-10 JPEG archive with
its own batch size, for a few optimizer steps (the peak is reached by the first forward/backward
and optimizer step: activations of one batch, gradients, optimizer state, the decoded dataset).
The CPU figure is the child's ``ru_maxrss`` from ``os.wait4`` (this process's own memory is not
counted); on a GPU the run's ``summary.json`` also carries ``torch.cuda.max_memory_allocated``
(``peak_cuda_allocated_mb``), printed beside it.

    .venv/bin/python benchmarks/bench_memory.py [--recipes fast,resnet20-he2016] [--steps 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"
DEFAULT_RECIPES = "resnet20-he2016,resnet56-he2016,resnet110-he2016,resnet18-cosine,cnn-baseline,fast,fast96"


def peak_rss_of_run(recipe: str, archive: Path, steps: int, device: str, workdir: Path) -> dict:
    run_dir = workdir / recipe
    command = [sys.executable, "-m", "resnetlab", "train", "--recipe", str(REPO / "recipes" / f"{recipe}.yaml"),
               "--data", str(archive), "--device", device, "--max-steps", str(steps), "--val-size", "1000",
               "--run-dir", str(run_dir), "--set", "eval_report=false", "--set", "tta=false"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{recipe}: resnetlab train exited {proc.returncode}\n{output[-3000:]}")
    config = (run_dir / "config.yaml").read_text()
    batch = next(int(line.split(":")[1]) for line in config.splitlines() if line.startswith("batch_size:"))
    model = next(line.split(":")[1].strip() for line in config.splitlines() if line.strip().startswith("name:"))
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"recipe": recipe, "model": model, "batch_size": batch, "steps": steps, "peak_rss_mb": usage.ru_maxrss / 1024,
            "peak_cuda_allocated_mb": summary.get("peak_cuda_allocated_mb"), "wall_s": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", default=str(ARCHIVE))
    parser.add_argument("--recipes", default=DEFAULT_RECIPES)
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="resnetlab-mem-") as tmp:
        for recipe in args.recipes.split(","):
            row = peak_rss_of_run(recipe.strip(), Path(args.archive), args.steps, args.device, Path(tmp))
            rows.append(row)
            gpu = f"  peak CUDA allocated {row['peak_cuda_allocated_mb']:.0f} MB" if row["peak_cuda_allocated_mb"] else ""
            print(f"{row['recipe']:<18} {row['model']:<15} batch {row['batch_size']:>5}  peak RSS {row['peak_rss_mb']:>7.0f} MB{gpu}"
                  f"  ({row['wall_s']:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join([".venv/bin/python", "benchmarks/bench_memory.py", *sys.argv[1:]]),
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
