"""`resnetlab serve` under load (issue 21): many normal clients, then many huge uploads at once.

A resnet20 model file (10 classes; weights do not matter) is written to a temporary folder and a
real ``python -m resnetlab serve MODEL --port 0`` process is started on 127.0.0.1 for each run:

(a) ``--clients`` (200) concurrent clients (asyncio + httpx, one connection each) POST one 32x32
    image per request for ``--duration`` (20) s after a warm-up; an error is any non-200 answer, a
    wrong file name in the answer or a transport error; latency is measured by the client.
(b) ``--uploads`` (40) concurrent uploads of a 7000x7000 single-colour PNG (49 megapixels, ~160 KB
    on the wire, ~200 MB decoded); every answer must be 200 or 503 with Retry-After, the server must
    answer /health afterwards, and its peak RSS (``VmHWM`` in /proc) is recorded. The baseline, in
    the same run, is the same server with the decode budget lifted (``--decode-budget-mb 1000000``);
    it is killed when its RSS passes ``--kill-mb`` (3 GB) so it cannot take the machine down.

Each part runs ``--repeats`` times on a fresh server (peak RSS is per process); medians are reported.

    .venv/bin/python benchmarks/bench_serve_load.py [--clients 200] [--duration 20] [--uploads 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
import torch

from bench_serve import machine, make_images, percentile, start_server  # same server start-up and images
from resnetlab.models import create_model
from resnetlab.models.files import save_model_file


def flat_png(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    """A single-colour RGB PNG, compressed row by row (the decoded pixels are never held here)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" + bytes(colour) * width
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(15)


async def normal_clients(url: str, images, clients: int, seconds: float) -> tuple[list[float], list[str], float]:
    """``clients`` concurrent loops posting small images for ``seconds``: (latencies s, errors, wall s)."""
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as session:
        async def client(index: int) -> None:
            i = index
            while time.monotonic() < stop_at:
                name, data, mime = images[i % len(images)]
                i += clients
                started = time.perf_counter()
                try:
                    response = await session.post("/predict", files={"file": (name, data, mime)})
                    if response.status_code != 200 or response.json()["predictions"][0]["filename"] != name:
                        errors.append(f"{response.status_code}: {response.text[:120]}")
                        continue
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc} at {time.monotonic() - stop_at + seconds:.1f} s, {time.perf_counter() - started:.2f} s after sending")
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies, errors, time.perf_counter() - started


async def big_uploads(url: str, data: bytes, count: int) -> tuple[list, float]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as session:
        async def one(i: int):
            try:
                return await session.post("/predict", files={"file": (f"big{i}.png", data, "image/png")})
            except httpx.HTTPError as exc:
                return exc
        started = time.perf_counter()
        answers = await asyncio.gather(*(one(i) for i in range(count)))
    return answers, time.perf_counter() - started


def run_normal(model_dir: Path, args) -> dict:
    process, url = start_server(model_dir, args.server_threads)
    try:
        images = make_images()
        asyncio.run(normal_clients(url, images, args.clients, args.warmup))
        latencies, errors, wall = asyncio.run(normal_clients(url, images, args.clients, args.duration))
        alive = httpx.get(f"{url}/health", timeout=30).status_code == 200
    finally:
        stop(process)
    return {"requests": len(latencies), "errors": len(errors), "throughput": len(latencies) / wall,
            "p50_ms": percentile(latencies, 50) * 1000, "p90_ms": percentile(latencies, 90) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "max_ms": max(latencies, default=float("nan")) * 1000,
            "healthy_after": alive, "first_errors": errors[:3]}


def run_big(model_dir: Path, data: bytes, args, *options: str) -> dict:
    process, url = start_server(model_dir, args.server_threads, *options)
    killed_after: list[float] = []
    peak = [0.0]
    started = time.monotonic()

    def guard() -> None:  # samples RSS; kills the server past --kill-mb
        while process.poll() is None and not killed_after:
            try:
                rss = status_mb(process.pid, "VmRSS")
            except (OSError, KeyError):
                return
            peak[0] = max(peak[0], rss)
            if rss > args.kill_mb:
                killed_after.append(time.monotonic() - started)
                process.kill()
                return
            time.sleep(0.02)

    try:
        idle_mb = status_mb(process.pid, "VmRSS")
        watcher = threading.Thread(target=guard, daemon=True)
        watcher.start()
        answers, wall = asyncio.run(big_uploads(url, data, args.uploads))
        alive = process.poll() is None and httpx.get(f"{url}/health", timeout=30).status_code == 200
        peak_mb = status_mb(process.pid, "VmHWM") if process.poll() is None else peak[0]
    finally:
        stop(process)
    statuses = [a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers]
    bad = [s for s, a in zip(statuses, answers)
           if not (isinstance(a, httpx.Response) and (a.status_code == 200 or (a.status_code == 503 and a.headers.get("retry-after"))))]
    return {"idle_rss_mb": idle_mb, "peak_rss_mb": peak_mb, "ok_200": statuses.count(200), "busy_503": statuses.count(503),
            "other": len(bad), "wall_s": wall, "healthy_after": alive,
            "killed_after_s": killed_after[0] if killed_after else None}


def describe_big(row: dict, args, data: bytes) -> str:
    killed = f"KILLED at {args.kill_mb} MB RSS after {row['killed_after_s']:.1f} s; " if row["killed_after_s"] is not None else ""
    return (f"{args.uploads} x {args.side}x{args.side} PNG ({len(data) / 1024:.0f} KB): {killed}"
            f"{row['ok_200']} x 200, {row['busy_503']} x 503, {row['other']} other, in {row['wall_s']:.1f} s; "
            f"RSS idle {row['idle_rss_mb']:.0f} MB, peak {row['peak_rss_mb']:.0f} MB; healthy after: {row['healthy_after']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="(a) concurrent normal clients (default: 200)")
    parser.add_argument("--duration", type=float, default=20.0, help="(a) measured seconds per run (default: 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="(a) unmeasured seconds first (default: 3)")
    parser.add_argument("--uploads", type=int, default=40, help="(b) concurrent 49-megapixel uploads (default: 40)")
    parser.add_argument("--side", type=int, default=7000, help="(b) image side in pixels (default: 7000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each part, fresh server each (default: 3)")
    parser.add_argument("--parts", default="ab", help="which parts to run: a, b or ab (default: ab)")
    parser.add_argument("--server-threads", type=int, default=1, help="OMP_NUM_THREADS for the server (default: 1)")
    parser.add_argument("--kill-mb", type=float, default=3072, help="(b) kill a server past this RSS (default: 3072)")
    parser.add_argument("--no-baseline", action="store_true", help="(b) skip the run without the decode budget")
    parser.add_argument("--json", help="write every run's figures to this JSON file")
    args = parser.parse_args(argv)

    command = "python benchmarks/bench_serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"machine: {machine()}")
    print(f"command: {command.strip()}")
    results: dict = {"machine": machine(), "command": command.strip(), "normal": [], "big": [], "big_unbounded": []}
    with tempfile.TemporaryDirectory(prefix="bench-serve-load-") as tmp:
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=10)
        model.meta.classes = [f"class{i}" for i in range(10)]
        save_model_file(model, Path(tmp))
        data = flat_png(args.side, args.side) if "b" in args.parts else b""
        for repeat in range(args.repeats):
            load = os.getloadavg()[0]
            if "a" in args.parts:
                row = run_normal(Path(tmp), args) | {"load_before": load}
                results["normal"].append(row)
                print(f"(a) run {repeat + 1}: {args.clients} clients x {args.duration:g} s: {row['requests']} requests, "
                      f"{row['errors']} errors, {row['throughput']:.1f} req/s, p50/p90/p99/max "
                      f"{row['p50_ms']:.0f}/{row['p90_ms']:.0f}/{row['p99_ms']:.0f}/{row['max_ms']:.0f} ms, "
                      f"healthy after: {row['healthy_after']}, load {load:.1f}", flush=True)
                for error in row["first_errors"]:
                    print(f"    error: {error}")
            if "b" in args.parts:
                load = os.getloadavg()[0]
                row = run_big(Path(tmp), data, args) | {"load_before": load}
                results["big"].append(row)
                print(f"(b) run {repeat + 1}: {describe_big(row, args, data)}, load {load:.1f}", flush=True)
                if not args.no_baseline:
                    load = os.getloadavg()[0]
                    row = run_big(Path(tmp), data, args, "--decode-budget-mb", "1000000") | {"load_before": load}
                    results["big_unbounded"].append(row)
                    print(f"(b) run {repeat + 1}, baseline without the decode budget: {describe_big(row, args, data)}, "
                          f"load {load:.1f}", flush=True)
    if results["normal"]:
        rows = results["normal"]
        print(f"(a) median of {len(rows)}: errors {statistics.median(r['errors'] for r in rows):g} "
              f"(total {sum(r['errors'] for r in rows)}), {statistics.median(r['throughput'] for r in rows):.1f} req/s, "
              f"p50 {statistics.median(r['p50_ms'] for r in rows):.0f} ms, p99 {statistics.median(r['p99_ms'] for r in rows):.0f} ms")
    if results["big"]:
        rows = results["big"]
        print(f"(b) median of {len(rows)}: peak RSS {statistics.median(r['peak_rss_mb'] for r in rows):.0f} MB "
              f"(max {max(r['peak_rss_mb'] for r in rows):.0f}), idle {statistics.median(r['idle_rss_mb'] for r in rows):.0f} MB, "
              f"200s {statistics.median(r['ok_200'] for r in rows):g}, 503s {statistics.median(r['busy_503'] for r in rows):g}, "
              f"wall {statistics.median(r['wall_s'] for r in rows):.1f} s")
    if results["big_unbounded"]:
        rows = results["big_unbounded"]
        kills = [r["killed_after_s"] for r in rows if r["killed_after_s"] is not None]
        print(f"(b) baseline without the budget, {len(rows)} runs: {len(kills)} killed at {args.kill_mb:g} MB"
              + (f" (median after {statistics.median(kills):.1f} s)" if kills else "")
              + f", peak RSS median {statistics.median(r['peak_rss_mb'] for r in rows):.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    failed = any(r["errors"] or not r["healthy_after"] for r in results["normal"]) or any(
        r["other"] or not r["healthy_after"] or not r["peak_rss_mb"] < 1536 for r in results["big"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
