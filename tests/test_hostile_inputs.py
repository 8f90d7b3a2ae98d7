"""Hostile folders (issue 21, item 5): only regular files are read, with a size bound; the rest is skipped.

- A FIFO named ``x.jpg`` used to hang ``data info`` (even with ``--skip-bad``), ``train`` and the cache key:
  opening it waits for a writer. Tests that meet a FIFO run under :func:`fifo_guard`, which plays that
  writer after a timeout, so a regression fails the test instead of hanging the suite.
- A symlink to ``/dev/zero`` named ``x.jpg`` used to be read without end until the process was
  killed; that test runs the real CLI in a child with a memory limit and a timeout.
- A folder named ``x.jpg`` was silently ignored; it is reported.
- A symlink pointing outside the folder is followed (the documented policy), and a warning names it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import kill_process_group, random_class_folder
from PIL import Image

from resnetlab.cli import main
from resnetlab.data.folders import load_image_folder
from resnetlab.errors import DataError
from resnetlab.inference.batch import collect_inputs, predict_files

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Two classes of four 32x32 PNGs: enough for data info, a train step and predict."""
    return random_class_folder(tmp_path / "ds", names=("cat", "dog"), per_class=4)


@contextlib.contextmanager
def fifo_guard(fifo: Path, timeout_s: float = 20.0):
    """Fail, not hang, if the code under test blocks on ``fifo``: after ``timeout_s`` keep opening it for
    writing and closing it, which releases a reader blocked in open() or read() (it then sees EOF)."""
    done = threading.Event()
    fired: list[bool] = []

    def rescue() -> None:
        if done.wait(timeout_s):
            return
        fired.append(True)
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while nobody is reading
            except OSError as exc:
                if exc.errno not in (errno.ENXIO, errno.ENOENT):
                    raise
            done.wait(0.05)

    thread = threading.Thread(target=rescue, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    assert not fired, f"blocked on the FIFO {fifo} for over {timeout_s:g} s: it was opened for reading"


# --------------------------------------------------------------------------- the reader itself


def test_read_regular_file_refuses_fifo_device_folder_and_oversize(tmp_path):
    from resnetlab.utils.regular_files import FileRefused, read_regular_file

    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    with fifo_guard(fifo), pytest.raises(FileRefused, match="FIFO"):
        read_regular_file(fifo, 1 << 20)
    with pytest.raises(FileRefused, match="character device"):
        read_regular_file("/dev/zero", 1 << 20)
    with pytest.raises(FileRefused, match="a folder"):
        read_regular_file(tmp_path, 1 << 20)
    big = tmp_path / "big.jpg"
    big.write_bytes(bytes(1001))
    with pytest.raises(FileRefused, match="over the limit"):
        read_regular_file(big, 1000)
    assert read_regular_file(big, 1001) == bytes(1001)


# --------------------------------------------------------------------------- a FIFO named x.jpg


@pytest.mark.parametrize("skip_bad", [False, True])
def test_fifo_is_reported_not_read_by_the_loader(folder, skip_bad, caplog):
    fifo = folder / "cat" / "x.jpg"
    os.mkfifo(fifo)
    with fifo_guard(fifo), caplog.at_level(logging.WARNING):
        if skip_bad:
            splits = load_image_folder(folder, skip_bad=True)
            assert len(splits["train"]) == 8
            assert "skipped 1 bad" in caplog.text and "cat/x.jpg: is a FIFO (named pipe), not a regular file" in caplog.text
        else:
            with pytest.raises(DataError, match=r"cat/x\.jpg: is a FIFO \(named pipe\), not a regular file.*--skip-bad"):
                load_image_folder(folder)


def test_data_info_with_a_fifo(folder, tmp_path, capsys):
    fifo = folder / "dog" / "x.jpg"
    os.mkfifo(fifo)
    with fifo_guard(fifo):
        assert main(["data", "info", str(folder), "--out", str(tmp_path / "info")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "dog/x.jpg: is a FIFO" in err, err
        assert main(["data", "info", str(folder), "--skip-bad", "--out", str(tmp_path / "info")]) == 0
    assert (tmp_path / "info" / "info.json").is_file()


@pytest.mark.slow  # ~7 s: a real one-step training run and its final report
def test_train_with_a_fifo(folder, tmp_path, capsys):
    fifo = folder / "cat" / "x.jpg"
    os.mkfifo(fifo)
    base = ["train", "--model", "cnn_baseline", "--data", str(folder), "--device", "cpu", "--batch-size", "2",
            "--val-size", "2", "--max-steps", "1"]
    with fifo_guard(fifo):
        assert main([*base, "--run-dir", str(tmp_path / "run1")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "cat/x.jpg: is a FIFO" in err, err
        assert main([*base, "--skip-bad", "--run-dir", str(tmp_path / "run2")]) == 0
    assert (tmp_path / "run2" / "model.safetensors").is_file()


def test_predict_reports_a_fifo_and_a_dev_zero_link(folder, tmp_path):
    from resnetlab.inference.predictor import Predictor
    from resnetlab.models import create_model

    fifo = folder / "cat" / "x.jpg"
    os.mkfifo(fifo)
    (folder / "dog" / "zero.jpg").symlink_to("/dev/zero")
    predictor = Predictor.from_model(create_model("cnn_baseline", num_classes=2))
    with fifo_guard(fifo):
        results = {Path(r.path).relative_to(folder).as_posix(): r for r in predict_files(predictor, [folder, fifo], top_k=1)}
    assert "FIFO (named pipe), not a regular file" in results["cat/x.jpg"].error
    assert "/dev/zero" in results["dog/zero.jpg"].error and "character device" in results["dog/zero.jpg"].error
    assert sorted(r for r, result in results.items() if result.error is None) == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(4)]


# --------------------------------------------------------------------------- a symlink to /dev/zero


def _limit_memory() -> None:
    # The old loader read /dev/zero until the machine ran out; 3 GiB of data makes that a quick failure.
    resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))


@pytest.mark.slow  # ~6 s: a child process imports torch
@pytest.mark.parametrize("skip_bad", [False, True])
def test_dev_zero_link_is_not_read(folder, tmp_path, skip_bad):
    """The real command in a child process (memory-limited, with a timeout): the read must not even start."""
    (folder / "cat" / "x.jpg").symlink_to("/dev/zero")
    argv = [sys.executable, "-m", "resnetlab", "data", "info", str(folder), "--out", str(tmp_path / "info")]
    process = subprocess.Popen([*argv, *(["--skip-bad"] if skip_bad else [])], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_limit_memory,
                               env=dict(os.environ, RESNETLAB_CACHE=str(tmp_path / "cache")))
    try:
        out, err = process.communicate(timeout=120)
    finally:
        kill_process_group(process)
    assert "Traceback" not in err, err
    assert "cat/x.jpg: is a symbolic link to /dev/zero, which is a character device, not a regular file" in err, err
    assert process.returncode == (0 if skip_bad else 1), err


# --------------------------------------------------------------------------- folders named like images


def test_folder_named_like_an_image_is_reported(folder, tmp_path, caplog):
    (folder / "cat" / "y.jpg").mkdir()
    with pytest.raises(DataError, match=r"cat/y\.jpg: is a folder, not an image file"):
        load_image_folder(folder)
    with caplog.at_level(logging.WARNING):
        assert len(load_image_folder(folder, skip_bad=True)["train"]) == 8
    assert "cat/y.jpg: is a folder" in caplog.text
    errors = {path: error for path, error in collect_inputs([folder]) if error}
    assert errors == {str(folder / "cat" / "y.jpg"): f"{folder / 'cat' / 'y.jpg'}: is a folder, not an image file"}


# --------------------------------------------------------------------------- symlinks out of the folder


def test_symlinks_outside_the_folder_are_followed_and_named(folder, tmp_path, caplog):
    outside = tmp_path / "elsewhere"
    _image(outside / "far.png", 99)
    _image(outside / "birds" / "0.png", 98)
    (folder / "cat" / "far.png").symlink_to(outside / "far.png")
    (folder / "bird").symlink_to(outside / "birds", target_is_directory=True)
    (folder / "dog" / "near.png").symlink_to(folder / "dog" / "0.png")  # inside: followed without a word
    with caplog.at_level(logging.WARNING):
        train = load_image_folder(folder)["train"]
    assert sorted(train.classes) == ["bird", "cat", "dog"]
    assert {"cat/far.png", "bird/0.png", "dog/near.png"} <= set(train.paths)
    warning = next(r.getMessage() for r in caplog.records if "outside the folder" in r.getMessage())
    assert "following 2 symbolic link(s)" in warning, warning
    assert f"cat/far.png -> {outside / 'far.png'}" in warning and f"bird -> {outside / 'birds'}" in warning, warning
    assert "near.png" not in warning

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        found = [path for path, error in collect_inputs([folder]) if error is None]
    assert str(folder / "cat" / "far.png") in found and str(folder / "bird" / "0.png") in found
    assert f"{folder / 'cat' / 'far.png'} -> {outside / 'far.png'}" in caplog.text
    assert f"{folder / 'bird'} -> {outside / 'birds'}" in caplog.text


def test_two_links_to_one_folder_are_read_once(folder, tmp_path):
    outside = tmp_path / "shared"
    _image(outside / "0.png", 1)
    (folder / "owl").symlink_to(outside, target_is_directory=True)
    (folder / "hawk").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match=rf"owl: is a link to a folder read already \({outside}\); not read twice"):
        load_image_folder(folder)  # not a silently dropped class
