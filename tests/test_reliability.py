"""Issue 21, items 2, 3, 4 and 7: what a careless user, a full disk or a crash used to break.

Every failure here must be one line on stderr and exit code 1, and must lose nothing: no stub run
directory that blocks the retry, no model file overwritten, no trained model lost to its report.
Commands run through the real CLI ``main()`` in process, on a tiny image folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from resnetlab.cli import main
from resnetlab.engine.checkpoint import CheckpointManager
from resnetlab.models import create_model
from resnetlab.models.files import CHECKPOINT_KIND, load_checkpoint_dict
from helpers import debug_hooks, make_image_folder

# cnn_baseline at its smallest: a run of two epochs on 32 images takes about a second.
TRAIN = ["train", "--model", "cnn_baseline", "--set", "model.options={width: 4, hidden: 8}", "--epochs", "2",
         "--batch-size", "8", "--val-size", "4", "--device", "cpu", "--seed", "0"]
UNSAFE_ADVICE = ("weights_only` set to `False", "will likely succeed", "trusted source", "safe_globals")


def one_line_error(capsys, code: int) -> str:
    """The CLI's answer to a mistake: exit code 1 and exactly one line on stderr, no traceback."""
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("resnetlab: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", classes=3, per_class=10, test_per_class=3)


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main([*TRAIN, "--data", str(folder), "--run-dir", str(run)]) == 0
    return run


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- simulated storage faults


class _LimitedFile:
    """A file on a disk with ``free`` bytes left: the write past them fails as a full disk does."""

    def __init__(self, handle, free: int):
        self._handle, self._free = handle, free

    def write(self, data) -> int:
        if len(data) > self._free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._free -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@contextlib.contextmanager
def full_disk(name_part: str, free: int = 0):
    """Writes of files whose name contains ``name_part`` run out of space after ``free`` bytes.

    A tiny tmpfs would be the real thing but needs root; this fails the same ``write`` call.
    """
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
    limits: dict[int, int] = {}

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if name_part in os.path.basename(name):
            limits[fd] = free
        return fd, name

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        return _LimitedFile(handle, limits.pop(fd)) if fd in limits else handle

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", mkstemp)
        patch.setattr(os, "fdopen", fdopen)
        yield


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(directory)``: nothing can be created under ``directory``.

    chmod where it binds; root ignores permissions, so there every way resnetlab creates files
    (mkstemp, mkdtemp, mkdir, open for writing) fails with EROFS as on a read-only mount.
    """
    changed: list[tuple[Path, int]] = []

    def install(directory: Path) -> None:
        directory = Path(directory).resolve()
        if os.geteuid() != 0:
            for path in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
                changed.append((path, path.stat().st_mode))
                path.chmod(0o555)
            return

        def inside(path) -> bool:
            return str(Path(path).resolve()).startswith(str(directory))

        def refuse(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        real_mkstemp, real_mkdtemp, real_mkdir, real_open = tempfile.mkstemp, tempfile.mkdtemp, Path.mkdir, open

        def mkstemp(suffix=None, prefix=None, dir=None, text=False):
            return refuse(Path(dir) / f"{prefix}XXXXXXXX{suffix}") if dir and inside(dir) else real_mkstemp(suffix, prefix, dir, text)

        def mkdtemp(suffix=None, prefix=None, dir=None):
            return refuse(Path(dir) / f"{prefix}XXXXXXXX{suffix}") if dir and inside(dir) else real_mkdtemp(suffix, prefix, dir)

        def mkdir(self, mode=0o777, parents=False, exist_ok=False):
            if inside(self) and not (exist_ok and self.is_dir()):
                refuse(self)
            return real_mkdir(self, mode, parents, exist_ok)

        def open_(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and inside(file):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
        monkeypatch.setattr(Path, "mkdir", mkdir)
        monkeypatch.setattr("builtins.open", open_)

    yield install
    for path, mode in reversed(changed):
        path.chmod(mode)


# ----------------------------------------------------------------------------- item 2: the final evaluation


@pytest.mark.slow  # two trainings, and the first import of the evaluation report (matplotlib, sklearn)
def test_a_failing_report_is_a_warning_and_the_model_is_kept(folder, tmp_path, capsys, caplog, monkeypatch):
    import resnetlab.evaluation

    def broken_report(*args, **kwargs):
        raise RuntimeError("report exploded")

    monkeypatch.setattr(resnetlab.evaluation, "evaluate_model", broken_report)
    run = tmp_path / "run"
    assert main([*TRAIN, "--data", str(folder), "--run-dir", str(run)]) == 0, capsys.readouterr().err
    assert "report exploded" in caplog.text and "resnetlab evaluate" in caplog.text  # the reason, and what to do
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_error"] == "RuntimeError: report exploded"
    assert isinstance(summary["test_acc"], float)  # measured without the report
    meta = json.loads((run / "model.json").read_text())
    assert meta["extra"]["test_acc"] == summary["test_acc"]
    # --resume of the finished run goes through the same final evaluation: it must not crash again.
    assert main(["train", "--resume", str(run)]) == 0, capsys.readouterr().err
    assert (run / "model.safetensors").is_file()


def test_one_class_is_refused_before_the_run_directory_exists(tmp_path, capsys):
    data = make_image_folder(tmp_path / "one", classes=1, per_class=12, test_per_class=2)
    run = tmp_path / "run"
    line = one_line_error(capsys, main([*TRAIN, "--data", str(data), "--run-dir", str(run)]))
    assert "at least 2 classes" in line and "class0" in line
    assert not run.exists()


@pytest.mark.slow  # a training run with its full evaluation report
def test_a_class_folder_name_that_is_not_utf8_trains_and_reports(tmp_path, capsys):
    data = make_image_folder(tmp_path / "bytes", classes=2, per_class=10, test_per_class=3)
    try:
        for split in (b"train", b"test"):
            os.rename(os.path.join(bytes(data), split, b"class1"), os.path.join(bytes(data), split, b"caf\xe9"))
    except OSError:
        pytest.skip("this filesystem refuses file names that are not UTF-8")
    run = tmp_path / "run"
    assert main([*TRAIN, "--data", str(data), "--run-dir", str(run)]) == 0, capsys.readouterr().err
    assert "warning" not in capsys.readouterr().err
    assert json.loads((run / "model.json").read_text())["meta"]["classes"] == ["caf\\xe9", "class0"]
    assert "caf\\xe9" in (run / "eval" / "report.html").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- item 3: no stub run directory


@pytest.mark.parametrize("options, words", [
    (["--data", "{tmp}/no-such-folder"], ["no-such-folder", "no such file"]),
    (["--model", "resnet21"], ["unknown model 'resnet21'"]),
    (["--set", "model.options={widht: 4}"], ["widht"]),
    (["--limit-train", "0"], ["limit_train", "--limit-train"]),
    (["--val-size", "-3"], ["val_size", "--val-size"]),
    (["--image-size", "0"], ["image_size", "--image-size"]),
    (["--lr", "nan"], ["optim.lr=nan", "finite"]),
    (["--set", "optim.weight_decay=.inf"], ["optim.weight_decay=inf", "finite"]),
    (["--set", "optim.momentum=-1"], ["optim.momentum=-1"]),
    (["--batch-size", "64"], ["batch"]),  # more than the training images: known only once the data is loaded
])
def test_a_mistake_leaves_no_run_directory(folder, tmp_path, capsys, options, words):
    run = tmp_path / "run"
    argv = [*TRAIN, "--data", str(folder), "--run-dir", str(run), *[o.replace("{tmp}", str(tmp_path)) for o in options]]
    line = one_line_error(capsys, main(argv))
    for word in words:
        assert word in line, line
    assert not run.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]  # no staging directory either


def test_a_failed_finetune_leaves_no_run_directory(trained, folder, tmp_path, capsys):
    run = tmp_path / "ft"
    argv = ["finetune", "--from", str(trained), "--data", str(folder), "--run-dir", str(run), "--device", "cpu",
            "--epochs", "1", "--val-size", "4", "--batch-size", "64"]  # more than the 26 training images
    line = one_line_error(capsys, main(argv))
    assert "batch" in line and not run.exists()  # finetune.json used to be written before the check


def test_a_malformed_recipe_is_one_line_naming_file_line_and_column(folder, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  name: cnn_baseline\noptim:\n  lr: 0.1\n lr2: [1, 2\nepochs: 3\n")
    run = tmp_path / "run"
    line = one_line_error(capsys, main(["train", "--recipe", str(recipe), "--data", str(folder), "--run-dir", str(run)]))
    assert f"{recipe}: invalid YAML: line 5, column 2:" in line, line
    assert not run.exists()


def test_full_disk_at_the_first_checkpoint_then_resume_continues(folder, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    # 26 training images at batch 8: 4 steps an epoch (the last batch of 2 is kept: engine/small_data.py).
    with full_disk(".last-", free=1000):  # best.pt is written, then last-00000004.pt does not fit
        line = one_line_error(capsys, main([*TRAIN, "--data", str(folder), "--run-dir", str(run)]))
    assert "last-00000004.pt" in line and "No space left on device" in line
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["best.pt"]  # no partial file left
    # best.pt holds the same complete state as the lost last-*.pt: the epoch is not lost.
    caplog.set_level(logging.INFO)
    assert main(["train", "--resume", str(run)]) == 0, capsys.readouterr().err
    assert "from best.pt (step 4)" in caplog.text and (run / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_full_disk_before_any_checkpoint_then_the_plain_retry_reuses_the_directory(folder, tmp_path, capsys):
    run = tmp_path / "run"
    with full_disk(".best.pt."):
        line = one_line_error(capsys, main([*TRAIN, "--data", str(folder), "--run-dir", str(run)]))
    assert "best.pt" in line and "No space left on device" in line
    assert (run / "config.yaml").is_file() and not list((run / "checkpoints").iterdir())
    assert main([*TRAIN, "--data", str(folder), "--run-dir", str(run)]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # the failed attempt's row is gone, not repeated
    assert (run / "model.safetensors").is_file()
    # A directory that holds a checkpoint is still refused.
    line = one_line_error(capsys, main([*TRAIN, "--data", str(folder), "--run-dir", str(run)]))
    assert "already holds a run" in line and "--resume" in line


# ----------------------------------------------------------------------------- item 4: outputs never destroy the model


@pytest.mark.parametrize("argv, words", [
    (["export", "{run}", "--format", "onnx", "-o", "{run}/model"], ["{run}/model.json", "read from"]),
    (["export", "{run}", "--format", "torchscript", "-o", "{run}/model.safetensors"], ["{run}/model.safetensors", "read from"]),
    (["export", "{run}/model.safetensors", "--format", "onnx", "-o", "{run}/model.safetensors"], ["read from"]),
    (["export", "{run}", "--format", "onnx", "-o", "{run}/checkpoints"], ["is a directory"]),
    (["predict", "{run}", "{image}", "-o", "{run}/model.json"], ["{run}/model.json", "read from"]),
    (["predict", "{run}/model.safetensors", "{image}", "-o", "{run}/config.yaml"], ["{run}/config.yaml", "read from"]),
    (["evaluate", "{run}", "--device", "cpu", "--batch-size", "0"], ["--batch-size 0"]),
    (["evaluate", "{run}", "--device", "cpu", "--out", "{run}/model.json"], ["--out", "is a file"]),
])
def test_an_output_never_replaces_the_models_own_files(trained, folder, capsys, argv, words):
    before = _files(trained)
    fill = {"{run}": str(trained), "{image}": str(folder / "test" / "class0" / "000.png")}

    def expand(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    line = one_line_error(capsys, main([expand(a) for a in argv]))
    for word in words:
        assert expand(word) in line, line
    assert _files(trained) == before  # nothing written, nothing replaced


def test_a_model_file_named_like_a_report_file_is_not_overwritten_by_evaluate(trained, folder, tmp_path, capsys):
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"metrics{suffix}").write_bytes((trained / f"model{suffix}").read_bytes())
    before = _files(tmp_path)
    line = one_line_error(capsys, main(["evaluate", str(tmp_path / "metrics.safetensors"), "--data", str(folder),
                                        "--device", "cpu", "--out", str(tmp_path)]))
    assert "metrics.json" in line and "read from" in line
    assert _files(tmp_path) == before


def test_export_beside_the_model_still_works(trained, tmp_path, capsys):
    """Positive control: the checks refuse only what would destroy something."""
    assert main(["export", str(trained), "--format", "onnx", "-o", str(tmp_path / "model")]) == 0, capsys.readouterr().err
    assert (tmp_path / "model").is_file() and (tmp_path / "model.json").is_file()


# ----------------------------------------------------------------------------- item 7: storage faults are one line


def test_read_only_run_directory(trained, folder, tmp_path, capsys, read_only):
    parent = tmp_path / "ro"
    parent.mkdir()
    stopped = parent / "stopped"
    argv = [*TRAIN, "--data", str(folder), "--run-dir", str(stopped)]
    assert main(argv, hooks=debug_hooks(stop_after_steps=3)) == 0, capsys.readouterr().err
    finished = parent / "finished"
    finished.mkdir()
    for name in ("model.safetensors", "model.json", "config.yaml"):
        (finished / name).write_bytes((trained / name).read_bytes())
    before = _files(parent)
    read_only(parent)

    line = one_line_error(capsys, main([*TRAIN, "--data", str(folder), "--run-dir", str(parent / "new")]))
    assert str(parent / "new") in line
    for argv, where in (
        (["train", "--resume", str(stopped)], stopped / "config.yaml"),
        (["evaluate", str(finished), "--device", "cpu"], finished / "eval-test"),
        (["export", str(finished), "--format", "onnx"], finished / "model.onnx"),
    ):
        line = one_line_error(capsys, main(argv))
        assert f"{where}:" in line, line
        assert "Read-only file system" in line or "Permission denied" in line, line
    assert _files(parent) == before


def test_a_write_error_keeps_the_destination_path_and_the_old_file(tmp_path):
    from resnetlab.utils.atomic import atomic_write_bytes, atomic_write_with

    target = tmp_path / "last-00000001.pt"
    target.write_bytes(b"the previous checkpoint")
    with full_disk(".last-", free=100):
        with pytest.raises(OSError) as info:  # torch.save wraps the failing write into a RuntimeError
            atomic_write_with(target, lambda handle: torch.save({"w": torch.zeros(1000)}, handle))
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
        with pytest.raises(OSError, match="No space left"):
            atomic_write_bytes(target, b"x" * 1000)
    assert target.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def _evil(path: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    model = create_model("cnn_baseline", num_classes=2)
    torch.save({"kind": CHECKPOINT_KIND, "format_version": 1, "model": model.state_dict(), "meta": model.meta.to_dict(),
                "extra": Payload()}, path)
    return path


def test_refusals_never_advise_loading_with_weights_only_false(tmp_path, folder, capsys):
    from resnetlab.errors import CheckpointError
    from resnetlab.finetune.sources import load_source

    evil = _evil(tmp_path / "evil.pt")
    for load in (load_checkpoint_dict, load_source):
        with pytest.raises(CheckpointError) as info:
            load(evil)
        message = str(info.value)
        assert "posix.getcwd" in message and "nothing in it was run" in message, message
        assert not any(advice in message for advice in UNSAFE_ADVICE), message
    line = one_line_error(capsys, main(["predict", str(evil), str(folder / "test" / "class0" / "000.png")]))
    assert "evil.pt" in line and not any(advice in line for advice in UNSAFE_ADVICE), line


# ----------------------------------------------------------------------------- item 7: stale temporaries


def _killed_mid_save(path: Path) -> Path:
    """Start a writer, SIGKILL it while its temporary is open, return the temporary it left."""
    code = ("import sys, time\n"
            "from resnetlab.utils.atomic import atomic_open\n"
            "with atomic_open(sys.argv[1]) as handle:\n"
            "    handle.write(b'half a checkpoint'); handle.flush(); print('writing', flush=True); time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
        writer.stdout.close()
    (left,) = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not path.exists() and str(writer.pid) in left.name
    return left


def test_a_temporary_left_by_a_killed_save_is_removed_at_the_next_save(tmp_path):
    from helpers import checkpoint_dict as _checkpoint

    left = _killed_mid_save(tmp_path / "last-00000002.pt")
    alive = tmp_path / f".best.pt.{os.getpid()}.abcdefgh.tmp"  # a save in progress (this process) is kept
    alive.write_bytes(b"being written")
    CheckpointManager(tmp_path).save_last(_checkpoint(3))
    assert not left.exists() and alive.exists()
    assert (tmp_path / "last-00000003.pt").is_file()


def test_a_temporary_left_by_a_killed_save_is_removed_at_resume(tmp_path, folder, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--data", str(folder), "--run-dir", str(run)], hooks=debug_hooks(stop_after_steps=3)) == 0
    left = [_killed_mid_save(run / "checkpoints" / "last-00000006.pt"), _killed_mid_save(run / "model.safetensors")]
    assert main(["train", "--resume", str(run)]) == 0, capsys.readouterr().err
    assert not any(p.exists() for p in left)
    assert not [p for p in run.rglob("*.tmp")]
