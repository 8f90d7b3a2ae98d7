"""`resnetlab serve` under load: N concurrent clients for a bounded time against a real server process.

A resnet20 model file (10 classes; weights do not matter for speed) is written to a temporary
folder, ``python -m resnetlab serve MODEL --port 0`` is started on 127.0.0.1, and N client threads
(httpx, one connection each) POST one 32x32 image per request for ``--duration`` seconds after a
warm-up. Any non-200 answer or transport error counts as an error; the script exits 1 if there is one.

    .venv/bin/python benchmarks/bench_serve.py [--clients 8] [--duration 20] [--out benchmarks/serve.md]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from resnetlab.models import create_model
from resnetlab.models.files import save_model_file

REPO = Path(__file__).resolve().parents[1]


def make_images(count: int = 16) -> list[tuple[str, bytes, str]]:
    """CIFAR-sized uploads, half PNG, half JPEG (what the web page sends)."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        fmt, mime = ("PNG", "image/png") if i % 2 else ("JPEG", "image/jpeg")
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format=fmt)
        images.append((f"{i}.{fmt.lower()}", buffer.getvalue(), mime))
    return images


def start_server(model_dir: Path, threads: int | None, *options: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    process = subprocess.Popen([sys.executable, "-m", "resnetlab", "serve", str(model_dir), "--port", "0", *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if match:
            url = match.group(1)
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # drain the log
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        return process, url
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


def hammer(url: str, images, clients: int, seconds: float) -> tuple[list[float], list[str], float]:
    """Run ``clients`` threads for ``seconds``; return (latencies in s, errors, wall time)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        mine, bad = [], []
        with httpx.Client(base_url=url, timeout=60) as session:
            i = index
            while time.monotonic() < stop_at:
                name, data, mime = images[i % len(images)]
                i += clients
                started = time.perf_counter()
                try:
                    response = session.post("/predict", files={"file": (name, data, mime)})
                    ok = response.status_code == 200 and response.json()["predictions"][0]["filename"] == name
                    if not ok:
                        bad.append(f"{response.status_code}: {response.text[:120]}")
                except httpx.HTTPError as exc:
                    bad.append(f"{type(exc).__name__}: {exc}")
                    continue
                mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores usable, Python {platform.python_version()}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default: 8)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (default: 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default: 3)")
    parser.add_argument("--model", default="resnet20", help="architecture to serve (default: resnet20)")
    parser.add_argument("--server-threads", type=int, help="OMP_NUM_THREADS for the server (default: torch's)")
    parser.add_argument("--out", help="write the results as Markdown to this file")
    args = parser.parse_args(argv)

    images = make_images()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=10)
        model.meta.classes = [f"class{i}" for i in range(10)]
        save_model_file(model, Path(tmp))
        process, url = start_server(Path(tmp), args.server_threads)
        try:
            hammer(url, images, args.clients, args.warmup)
            latencies, errors, wall = hammer(url, images, args.clients, args.duration)
            alive = httpx.get(f"{url}/health", timeout=10).status_code == 200
        finally:
            process.terminate()
            process.wait(15)
    load_after = os.getloadavg()

    count = len(latencies)
    p50, p90, p99 = (percentile(latencies, q) * 1000 for q in (50, 90, 99))
    rows = {
        "requests": f"{count:,}",
        "errors": f"{len(errors)}",
        "throughput": f"{count / wall:.1f} requests/s (= images/s)",
        "latency p50 / p90 / p99 / max": f"{p50:.1f} / {p90:.1f} / {p99:.1f} / {max(latencies, default=float('nan')) * 1000:.1f} ms",
        "mean latency": f"{statistics.fmean(latencies) * 1000:.1f} ms" if latencies else "n/a",
        "server healthy afterwards": "yes" if alive else "NO",
    }
    command = "python benchmarks/bench_serve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load = (f"load average (1, 5, 15 min) before {', '.join(f'{v:.1f}' for v in load_before)}; "
            f"after {', '.join(f'{v:.1f}' for v in load_after)}")
    print(f"{args.clients} clients x {args.duration:g} s against `resnetlab serve` ({args.model}) at {url}")
    for key, value in rows.items():
        print(f"  {key}: {value}")
    print(f"  machine: {machine()}; {load}")
    for error in errors[:5]:
        print(f"  error: {error}")
    if args.out:
        lines = [
            "# Serving benchmark: `resnetlab serve` under concurrent load",
            "",
            f"{args.clients} client threads (httpx, one keep-alive connection each) POST one 32x32 image "
            f"(PNG or JPEG, ~1-3 KB) per request to `/predict` for {args.duration:g} s after a {args.warmup:g} s warm-up, "
            f"against a real `python -m resnetlab serve MODEL --port 0` process on 127.0.0.1 serving a {args.model} "
            "model file (10 classes, CPU). Latency is measured by the client, request sent to JSON parsed; "
            "an error is any non-200 answer, a wrong file name in the answer, or a transport error.",
            "",
            f"- Machine: {machine()}",
            f"- Command: `{command.strip()}`",
            f"- Server threads: {args.server_threads or 'torch default'}; the clients run on the same machine and share its cores.",
            f"- Machine load: {load}. The box is shared (other engineers' test suites run on the same "
            "cores at times) and the clients compete with the server for the 2 cores, so absolute figures are noisy.",
            "",
            "| measure | value |",
            "| --- | --- |",
            *[f"| {key} | {value} |" for key, value in rows.items()],
            "",
            "Abuse (oversized bodies, wrong content types, malformed multipart, decompression bombs, stalled "
            "uploads) is tested in `tests/test_security_serve.py`: each gets its 4xx within seconds and "
            "normal requests keep being answered.",
            "",
        ]
        Path(args.out).write_text("\n".join(lines))
        print(f"wrote {args.out}")
    return 1 if errors or not alive else 0


if __name__ == "__main__":
    raise SystemExit(main())
