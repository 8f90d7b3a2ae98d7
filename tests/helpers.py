"""Builders shared by several test files (pytest puts tests/ on sys.path for the rootdir conftest).

Test modules import from here, never from each other: importing a test module runs its fixtures'
module-level setup and makes its private helpers a public contract.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
import torch

from resnetlab.data.imageset import DataSplits, ImageSet


@contextlib.contextmanager
def one_thread():
    """Run the block on one torch thread. Tests are small: on CI's 2 shared cores a second OpenMP thread
    only adds synchronisation and spin-waiting. conftest.py applies it to every test; module-scoped
    fixtures, which are set up outside any one test, use it directly."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_image_folder(root: Path, classes: int = 4, per_class: int = 24, size: int = 32, test_per_class: int = 6, seed: int = 0) -> Path:
    """A learnable synthetic image folder: each class is a colour with a bright square at a class-specific place."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                image[..., c % 3] += 100
                y, x = (c * 7) % (size - 8), (c * 11) % (size - 8)
                image[y : y + 8, x : x + 8] = 250
                Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def random_class_folder(root: Path, names=("a", "b"), per_class: int = 3, size: int = 32, seed: int = 0) -> Path:
    """A plain ``<class>/*.png`` folder (no split subfolders) of random-noise images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def tiny_splits(n_train: int = 64, n_val: int = 16, classes: int = 4) -> DataSplits:
    """In-memory 32x32 splits whose class is (mostly) the dominant colour: no files, no decode."""
    g = torch.Generator().manual_seed(0)

    def make(n):
        labels = torch.arange(n) % classes
        images = torch.randint(0, 60, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
        images[torch.arange(n), :, :, labels % 3] += 150  # learnable: class = dominant colour (mostly)
        return ImageSet(images, labels.long(), [f"c{i}" for i in range(classes)], source="synthetic")

    return DataSplits(make(n_train), make(n_val), make(n_val), name="synthetic")


@contextlib.contextmanager
def running_server(app):
    """Run ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yield its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def checkpoint_dict(step: int, value: float = 1.0) -> dict:
    """A complete training checkpoint of a 4x4 toy model at ``step`` (what CheckpointManager saves)."""
    from resnetlab.engine import checkpoint as ckpt

    return {
        "model": {"w": torch.full((4, 4), value), "n": torch.tensor(3)},
        "meta": {"name": "tiny", "num_classes": 2},
        "optimizer": {"state": {}, "param_groups": []},
        "schedule": {"step": step},
        "scaler": None,
        "ema": None,
        "rng": ckpt.capture_rng_state(),
        "epoch": 0,
        "step_in_epoch": step,
        "step": step,
        "best": {"val_acc": None},
        "config": {"seed": 0},
    }
