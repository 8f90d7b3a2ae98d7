"""The session-end check in conftest.py: a test run that leaves a process alive fails (issue 21, item 9).

Each case runs an inner pytest on a small test file under ``tmp_path`` with this suite's conftest
loaded as a plugin, and looks at its exit code, its report and whether the leaked processes are gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

LEAKY = '''
import os, subprocess, sys, time

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]

def test_forgets_its_child(tmp_path_factory):
    child = subprocess.Popen(SLEEP)
    with open(os.environ["PIDS_FILE"], "a") as f:
        f.write(f"{child.pid}\\n")

def test_terminates_only_the_shell():
    # What tests/test_guide.py did: dash forks the command, so terminating the shell orphans it.
    shell = subprocess.Popen(f"{SLEEP[0]} -c 'import time; time.sleep(120)'; true", shell=True,
                             start_new_session=True)
    time.sleep(1.0)
    shell.terminate()
    shell.wait()
'''

CLEAN = '''
import subprocess, sys

def test_uses_spawn(spawn):
    spawn(f"{sys.executable} -c 'import time; time.sleep(120)'; true", shell=True)
'''


def _inner_pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source))
    # A 1 s grace (not 5): the leaks here sleep for 120 s, so waiting longer only slows the suite.
    env = dict(os.environ, PYTHONPATH=str(TESTS), PIDS_FILE=str(tmp_path / "pids.txt"), RESNETLAB_TEST_LEFTOVER_GRACE_S="1")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "test_inner.py", "-q", "-p", "conftest", "-p", "no:cacheprovider",
         "-p", "no:hypothesispytest", "--rootdir", str(tmp_path)],  # hypothesis' plugin: a second of start-up, unused here
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the check reads /proc")
def test_a_run_that_leaves_processes_behind_fails_and_they_are_killed(tmp_path):
    done = _inner_pytest(tmp_path, LEAKY)
    output = done.stdout + done.stderr
    assert "2 passed" in output, output  # the tests themselves pass...
    assert done.returncode == 1, output  # ...yet the run fails
    assert "processes left behind" in output and output.count("time.sleep(120)") >= 2, output
    pid = int((tmp_path / "pids.txt").read_text().split()[0])
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the check reads /proc")
def test_a_run_whose_processes_are_killed_by_group_passes(tmp_path):
    done = _inner_pytest(tmp_path, CLEAN)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "processes left behind" not in output, output
