"""Shared test fixtures.

Real-data tests use ``../shared/data/cifar10-jpeg-train.tar.gz`` (beside the repository) and skip
cleanly when it is absent.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import REPO_ROOT, kill_process_group, make_image_folder, one_thread

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CIFAR_JPEG_ARCHIVE = SHARED_DATA / "cifar10-jpeg-train.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never let a test read or write the user's real cache (~/.cache/resnetlab)."""
    cache = tmp_path_factory.getbasetemp() / "resnetlab-cache"
    monkeypatch.setenv("RESNETLAB_CACHE", str(cache))
    yield


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests are small; one thread each avoids oversubscribing CI's 2 cores (subprocess tests run beside pytest).
    with one_thread():
        yield


@pytest.fixture(scope="session")
def cifar_jpeg_archive() -> Path:
    if not CIFAR_JPEG_ARCHIVE.exists():
        pytest.skip(f"real-data test: {CIFAR_JPEG_ARCHIVE} is absent")
    return CIFAR_JPEG_ARCHIVE


@pytest.fixture(scope="session")
def small_image_folder(tmp_path_factory) -> Path:
    """A learnable synthetic image folder, made once per session: 4 classes x 24 train + 6 test 32x32 PNGs."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", classes=4, per_class=24)


# ---- a real `resnetlab serve` process --------------------------------------------------------------


@pytest.fixture
def spawn():
    """``spawn(args, **popen_kwargs) -> Popen``, started in its own session (process group).

    At teardown the whole group is killed: a process started through a shell (``shell=True``: dash
    forks, so the shell is only the parent) or one that started helpers of its own goes with it.
    """
    started: list[subprocess.Popen] = []

    def start(args, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(args, start_new_session=True, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        kill_process_group(process)


@pytest.fixture
def serve_process(tmp_path, spawn):
    """``start(model, *options, env=None) -> (Popen, url)``: ``python -m resnetlab serve MODEL --port 0``.

    Started with :func:`spawn` (killed by process group at teardown), its log in a file under
    ``tmp_path`` (a pipe nobody reads would block the server once full).
    """
    count = [0]

    def start(model, *options: str, env: dict | None = None, timeout: float = 120) -> tuple[subprocess.Popen, str]:
        log_path = tmp_path / f"serve-{count[0]}.log"
        count[0] += 1
        with open(log_path, "wb") as log:
            process = spawn([sys.executable, "-m", "resnetlab", "serve", str(model), "--port", "0", *options],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            match = re.search(r"serving .* on (http://\S+?:\d+)/", text)
            if match:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{match.group(1)}/health", timeout=5).status_code == 200:
                        return process, match.group(1)
            if process.poll() is not None:
                raise AssertionError(f"resnetlab serve exited with {process.returncode}:\n{text[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"resnetlab serve did not start within {timeout:g} s:\n{log_path.read_text()[-3000:]}")

    return start


# ---- nothing outlives the test run (issue 21, item 9) -----------------------------------------------
# Every process a test starts inherits this marker (tests pass ``dict(os.environ, ...)`` as env), so an
# orphan that was re-parented to init, like a server behind a killed shell, is still recognised as ours.
_RUN_MARKER = "RESNETLAB_TEST_RUN"
_RUN_TOKEN = f"{os.getpid()}-{time.time_ns()}"
os.environ[_RUN_MARKER] = _RUN_TOKEN
# Seconds a process stopped by the last test gets to finish exiting before it counts as left behind;
# test_leftover_processes.py shortens it for its inner runs, whose leaks never exit by themselves.
_GRACE_S = float(os.environ.get("RESNETLAB_TEST_LEFTOVER_GRACE_S", "5"))
# Helpers that legitimately live until the interpreter exits and then stop by themselves.
_EXPECTED_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _processes_of_this_run() -> dict[int, str]:
    """pid -> command line of every live process started (directly or not) by this test run (Linux /proc)."""
    me = os.getpid()
    marker = f"{_RUN_MARKER}={_RUN_TOKEN}".encode()
    parents: dict[int, int] = {}
    ours: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            state, ppid = (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2])
            if state in ("Z", "X"):  # exited, only waiting to be reaped
                continue
            parents[pid] = int(ppid)
            if int(ppid) == me or marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                ours.add(pid)
        except (OSError, ValueError, IndexError):  # gone meanwhile, or another user's process
            continue
    grew = True
    while grew:  # descendants of ours are ours, even when started with an environment of their own
        grown = {pid for pid, ppid in parents.items() if ppid in ours} - ours
        ours |= grown
        grew = bool(grown)
    found = {}
    for pid in ours:
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return {pid: cmd for pid, cmd in found.items() if not any(helper in cmd for helper in _EXPECTED_HELPERS)}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    if not Path("/proc/self/stat").exists() or hasattr(session.config, "workerinput"):
        return
    deadline = time.monotonic() + _GRACE_S  # a server sent SIGTERM by the last test may still be shutting down
    leftovers = _processes_of_this_run()
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.2)
        leftovers = _processes_of_this_run()
    if not leftovers:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(leftovers)} process(es) started by the tests are still alive (tests must kill what they start, "
             "by process group); killed now:"] + [f"  pid {pid}: {cmd[:200]}" for pid, cmd in sorted(leftovers.items())]
    for pid in leftovers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if reporter is not None:
        reporter.write_sep("=", "processes left behind", red=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print("\n".join(lines), file=sys.stderr)
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):  # keep "interrupted" etc.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
