"""docs/guide.md stays true: every ```bash command in it runs, on a tiny budget, in order.

Substitutions (the guide says so too): the CIFAR-10 archive becomes a tiny archive of the same
layout (``train/<class>/NNNN.jpg``, 10 classes x 12 images); training budgets become one epoch on
a few images (``TINY``); ``resnetlab serve`` runs in the background on a free port, which the
``curl`` lines use. Quoted source code (```python blocks starting ``# from <path>``) must appear
verbatim in that file; other ```python blocks are executed.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "guide.md"
ARCHIVE = "../shared/data/cifar10-jpeg-train.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Option values forced per command (replaced when present, appended when absent).
TINY = {
    "train": {"--epochs": "1", "--limit-train": "40", "--val-size": "20", "--batch-size": "8"},
    "finetune": {"--epochs": "1", "--limit-train": "40", "--val-size": "20", "--batch-size": "8"},
    "experiment": {"--epochs": "1", "--limit-train": "40", "--val-size": "20", "--batch-size": "8", "--seeds": "1"},
    "data": {"--val-size": "20"},
}


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def commands(text: str) -> list[str]:
    """The command lines of every ```bash block (backslash continuations joined, comments dropped)."""
    out = []
    for block in blocks(text, "bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        out += [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return out


def tiny(command: str, port: int) -> str:
    """The command with the tiny archive, the tiny budget and the free port substituted."""
    if not command.startswith("resnetlab "):  # shell lines (mkdir, tar, curl): plain text substitution
        return command.replace(ARCHIVE, "tiny-cifar10.tar.gz").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    words = shlex.split(command)
    words = ["tiny-cifar10.tar.gz" if w == ARCHIVE else w for w in words]
    if words[0] == "resnetlab" and len(words) > 1 and words[1] in TINY:
        for option, value in TINY[words[1]].items():
            if option in words:
                words[words.index(option) + 1] = value
            else:
                words += [option, value]
    if "--port" in words:
        words[words.index("--port") + 1] = str(port)
    return shlex.join(words).replace("127.0.0.1:8000", f"127.0.0.1:{port}")


def make_tiny_archive(path: Path, per_class: int = 12) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for c, name in enumerate(CLASSES):
            for i in range(per_class):
                image = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
                image[:, :, c % 3] += 120 + 10 * (c // 3)
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="JPEG", quality=90)
                info = tarfile.TarInfo(f"train/{name}/{i:04d}.jpg")
                info.size = len(buffer.getvalue())
                tar.addfile(info, io.BytesIO(buffer.getvalue()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(port: int, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"resnetlab serve exited early: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("resnetlab serve did not answer /health")


def test_guide_commands_are_extracted_and_substituted():
    text = GUIDE.read_text()
    cmds = commands(text)
    assert any(c.startswith("resnetlab experiment degradation") for c in cmds)
    for name in ("data info", "train", "evaluate", "compare", "finetune", "predict", "export", "serve"):
        assert any(c.startswith(f"resnetlab {name}") for c in cmds), name
    line = tiny(f"resnetlab train --data {ARCHIVE} --epochs 4 --run-dir runs/x", 1234)
    assert line == "resnetlab train --data tiny-cifar10.tar.gz --epochs 1 --run-dir runs/x --limit-train 40 --val-size 20 --batch-size 8"
    assert tiny("curl http://127.0.0.1:8000/health", 1234) == "curl http://127.0.0.1:1234/health"
    assert tiny(f"mkdir -p x && tar -xzf {ARCHIVE} -C x", 1) == "mkdir -p x && tar -xzf tiny-cifar10.tar.gz -C x"


def test_every_figure_exists_and_is_small():
    text = GUIDE.read_text()
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", text)
    expected = {"samples", "curves", "confusion_matrix", "roc", "degradation", "grad_flow"}
    assert expected <= {Path(f).stem for f in figures}
    for figure in figures:
        path = GUIDE.parent / figure
        assert path.is_file(), figure
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size < 300_000, figure


def test_quoted_code_matches_the_source():
    quoted = [b for b in blocks(GUIDE.read_text(), "python") if b.startswith("# from ")]
    assert quoted, "the guide quotes the residual block"
    for block in quoted:
        first, _, code = block.partition("\n")
        source = (REPO / first[len("# from "):].strip()).read_text()
        assert code.strip() and code in source, f"{first}: the quoted code is not in the file any more"


def test_python_examples_run():
    examples = [b for b in blocks(GUIDE.read_text(), "python") if not b.startswith("# from ")]
    assert examples
    for block in examples:
        exec(compile(block, "guide.md", "exec"), {})


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 2 minutes on an idle 2-core machine; much more when it is shared
def test_guide_commands_run(tmp_path, spawn):
    make_tiny_archive(tmp_path / "tiny-cifar10.tar.gz")
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    port = free_port()
    for command in commands(GUIDE.read_text()):
        line = tiny(command, port)
        if line.startswith("resnetlab serve"):
            # Through a shell, so the server is the shell's child: spawn's teardown kills the whole
            # process group (terminating the shell alone left the server listening after pytest).
            log = open(tmp_path / "serve.log", "w")
            server = spawn(line, shell=True, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            wait_for_health(port, server, tmp_path / "serve.log")
            continue
        done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        if line.startswith("curl"):
            assert '"detail"' not in done.stdout and done.stdout.strip(), done.stdout
    assert (tmp_path / "runs/degradation-cpu/degradation.png").is_file()
    assert (tmp_path / "runs/guide-resnet20/model.onnx").is_file()
