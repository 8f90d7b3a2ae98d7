"""Builders shared by several test files (pytest puts tests/ on sys.path for the rootdir conftest).

Test modules import from here, never from each other: importing a test module runs its fixtures'
module-level setup and makes its private helpers a public contract.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from resnetlab.data.imageset import DataSplits, ImageSet

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def make_image_folder(root: Path, classes: int = 4, per_class: int = 24, size: int = 32, test_per_class: int = 6, seed: int = 0,
                      names: Sequence[str] | None = None, flat: bool = False) -> Path:
    """A learnable synthetic image folder: each class is a colour with a bright square at a class-specific place.

    ``root/{train,test}/<class>/*.png``; with ``flat`` only ``root/<class>/*.png`` (``per_class`` each, no test
    split). Class folders are ``class0``, ``class1``, ... unless ``names`` gives them (then ``classes`` is its length).
    """
    from PIL import Image

    names = list(names) if names is not None else [f"class{c}" for c in range(classes)]
    rng = np.random.default_rng(seed)
    layout = (("", per_class),) if flat else (("train", per_class), ("test", test_per_class))
    for split, count in layout:
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                image[..., c % 3] += 100
                side = min(8, size // 2)
                y, x = (c * 7) % (size - side), (c * 11) % (size - side)
                image[y : y + side, x : x + side] = 250
                Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def class_folder(root: Path, names: Sequence[str] = ("a", "b"), per_class: int | Sequence[int] = 3, size: int = 32,
                 fill: str = "noise", seed: int = 0) -> dict[str, np.ndarray]:
    """A plain ``root/<class>/<i>.png`` folder; returns {path relative to root: the pixels written}.

    ``per_class`` is one count or one per class. ``fill="noise"``: uniform random pixels; ``fill="solid"``:
    one flat colour per image, different for every image of the folder (so an image's pixels tell its file).
    ``root`` may already exist (e.g. to add a split folder beside another).
    """
    from PIL import Image

    counts = [per_class] * len(names) if isinstance(per_class, int) else list(per_class)
    if len(counts) != len(names) or fill not in ("noise", "solid"):
        raise ValueError(f"class_folder: {len(counts)} counts for {len(names)} classes, fill={fill!r}")
    rng = np.random.default_rng(seed)
    written = {}
    for ci, (name, count) in enumerate(zip(names, counts)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            if fill == "noise":
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            else:
                pixels = np.full((size, size, 3), ((ci * 60 + i * 7) % 256, 100 + i, 200 - ci), dtype=np.uint8)  # G: image, B: class
            rel = f"{name}/{i}.png"
            Image.fromarray(pixels).save(root / rel)
            written[rel] = pixels
    return written


def random_class_folder(root: Path, names=("a", "b"), per_class: int = 3, size: int = 32, seed: int = 0) -> Path:
    """A plain ``<class>/*.png`` folder (no split subfolders) of random-noise images; returns ``root``."""
    class_folder(root, names, per_class, size, fill="noise", seed=seed)
    return root


def random_imageset(n: int, size: int = 8, classes: int = 4, seed: int = 0, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)) -> ImageSet:
    """``n`` uniform-noise ``size``x``size`` images in memory, labels ``0, 1, ..., classes-1, 0, ...``; no files, no decode."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.arange(n) % classes, [f"c{i}" for i in range(classes)], mean=mean, std=std)


def tiny_splits(n_train: int = 64, n_val: int = 16, classes: int = 4, size: int = 32, n_test: int | None = None,
                names: Sequence[str] | None = None, **imageset_options) -> DataSplits:
    """In-memory ``size``x``size`` splits whose class is (mostly) the dominant colour: no files, no decode.

    The test split has ``n_test`` images (default ``n_val``); ``imageset_options`` (e.g. mean, std) go to every ImageSet.
    """
    g = torch.Generator().manual_seed(0)
    names = list(names) if names is not None else [f"c{i}" for i in range(classes)]

    def make(n):
        labels = torch.arange(n) % len(names)
        images = torch.randint(0, 60, (n, size, size, 3), generator=g, dtype=torch.uint8)
        images[torch.arange(n), :, :, labels % 3] += 150  # learnable: class = dominant colour (mostly)
        return ImageSet(images, labels.long(), list(names), source="synthetic", **imageset_options)

    return DataSplits(make(n_train), make(n_val), make(n_val if n_test is None else n_test), name="synthetic")


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


def kill_process_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the group ``process`` leads (started with ``start_new_session=True``); SIGKILL what is left after ``grace_s``."""
    def group_alive() -> bool:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_alive() and time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(0.1)  # reaps the leader, whose zombie would keep the group "alive"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def debug_hooks(stop_after_steps: int | None = None, nan_at_step: int | None = None, sleep_per_step: float = 0.0,
                save_delay_s: float = 0.0, skip_rng_restore: Sequence[str] = ()):
    """``engine.TrainHooks`` for the engine tests' deterministic stops and fault injection.

    - ``stop_after_steps``: save a checkpoint and stop (completed=False, exit 0) after this global step;
    - ``nan_at_step``: make the loss at this global step NaN;
    - ``sleep_per_step``: slow a tiny run so a test can signal it mid-training;
    - ``save_delay_s``: time spent inside each checkpoint save (a signal arriving then);
    - ``skip_rng_restore``: resume without these RNG states (the resume test's negative control).
    """
    from resnetlab.engine.hooks import TrainHooks

    def after_step(context, state, record) -> bool:
        if sleep_per_step:
            time.sleep(sleep_per_step)
        return stop_after_steps is not None and state.step >= stop_after_steps

    def on_loss(step, loss):
        return loss * float("nan") if step == nan_at_step else loss

    return TrainHooks(
        after_step=after_step if stop_after_steps is not None or sleep_per_step else None,
        before_save=(lambda context, state: time.sleep(save_delay_s)) if save_delay_s else None,
        on_loss=on_loss if nan_at_step is not None else None,
        skip_rng_restore=tuple(skip_rng_restore),
    )
